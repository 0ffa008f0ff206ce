"""The autoscaler with the local provider: cluster up, scale up for waiting work (the right node
type), scale down after the idle timeout, min_workers kept, explanations, cluster down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import psutil
import pytest

CONFIG = """\
cluster_name: {name}
provider: {{type: local}}
head_node_type: head
max_workers: 4
idle_timeout_s: 2
node_types:
  head: {{resources: {{CPU: 1}}}}
  cpu_worker: {{resources: {{CPU: 1}}, max_workers: 2}}
  accel_worker: {{resources: {{CPU: 1, accel: 1}}, labels: {{kind: accel}}, max_workers: 1}}
  keeper: {{resources: {{CPU: 1, keep: 1}}, min_workers: 1, max_workers: 1}}
  broken: {{resources: {{CPU: 1, broken: 1}}, max_workers: 1, node_config: {{extra_args: [--no-such-option]}}}}
"""

WORK = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    import cluster

    folder = Path(sys.argv[2])

    @cluster.remote
    def all_at_once(i, n):
        (folder / str(i)).touch()  # here; then wait until all n run at the same time
        while len([p for p in folder.iterdir() if p.name.isdigit()]) < n:
            time.sleep(0.05)
        return os.environ["CLUSTER_NODE_ID"]

    @cluster.remote(resources={"accel": 1})
    def on_accel():
        return os.environ["CLUSTER_NODE_ID"]

    cluster.init(sys.argv[1])
    nodes_used = cluster.get([all_at_once.remote(i, 4) for i in range(4)], timeout=240)
    accel_node = cluster.get(on_accel.remote(), timeout=240)
    labels = {n["node_id"]: n["labels"] for n in cluster.nodes()}
    print("RESULT " + json.dumps({"distinct": len(set(nodes_used)), "accel_labels": labels[accel_node]}))
    """
)


@pytest.fixture
def env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env["CLUSTER_TMPDIR"] = str(tmp_path / "root")
    return env


def cli(env: dict, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cluster", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f"cluster {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def our_processes(env: dict) -> list[psutil.Process]:
    """Processes started for this test's cluster (they carry its CLUSTER_TMPDIR or its paths)."""
    root = env["CLUSTER_TMPDIR"]
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        try:
            if root in " ".join(proc.info["cmdline"] or ()) or (proc.info["environ"] or {}).get("CLUSTER_TMPDIR") == root:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


SEEN_STORES: set[str] = set()


def alive_nodes(env: dict) -> list[dict]:
    nodes = json.loads(cli(env, "status", "--json").stdout)
    SEEN_STORES.update(n["store_path"] for n in nodes)
    return [n for n in nodes if n["state"] == "alive"]


def test_the_local_provider_scales_up_by_type_down_after_idle_and_explains(env, tmp_path, e2e):
    config = tmp_path / "cluster.yaml"
    config.write_text(CONFIG.format(name=f"t{uuid.uuid4().hex[:8]}"))
    try:
        up = cli(env, "up", str(config))
        assert "Waiting for min_workers: keeper 0/1" in up.stderr and "keeper 1/1" in up.stderr
        nodes = alive_nodes(env)
        assert sorted(n["resources"].get("keep", 0) for n in nodes) == [0, 1]  # the head and the keeper
        address = next(n["address"] for n in nodes if n["is_head"])

        # Work beyond capacity: 4 tasks that must run at once on 2 CPUs, then one needing accel.
        script = tmp_path / "work.py"
        script.write_text(WORK)
        folder = tmp_path / "meet"
        folder.mkdir()
        work = subprocess.run([sys.executable, str(script), address, str(folder)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert work.returncode == 0, work.stdout + work.stderr
        result = json.loads(work.stdout.split("RESULT ")[1])
        assert result["distinct"] == 4  # two cpu_workers were launched to run them side by side
        assert result["accel_labels"] == {"kind": "accel"}  # the accel task went to that type only

        alive_nodes(env)
        status = cli(env, "status", "--explain").stdout
        assert "Autoscaler (local provider" in status
        # Idle now: the launched nodes go after idle_timeout_s (and 3 rounds); the keeper stays.
        remaining = e2e.wait_until(lambda: (ns := alive_nodes(env)) and len(ns) == 2 and ns, timeout=90,
                                   what="the idle nodes to be removed")
        assert sorted(n["resources"].get("keep", 0) for n in remaining) == [0, 1]
        explained = cli(env, "status", "--explain").stdout
        assert "idle, but keeper is at min_workers (1)" in explained

        # Capacity asked for ahead of any work comes, and goes once the request is withdrawn.
        def request(bundles: list) -> None:
            code = f"import cluster, cluster.autoscaler; cluster.init({address!r}); " \
                   f"cluster.autoscaler.request_resources(bundles={bundles!r})"
            subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)

        request([{"CPU": 1, "accel": 1}])
        grown = e2e.wait_until(lambda: (ns := alive_nodes(env)) and len(ns) == 3 and ns, timeout=90,
                               what="a node for the request")
        assert sorted(n["labels"].get("kind", "") for n in grown) == ["", "", "accel"]
        request([])
        e2e.wait_until(lambda: len(alive_nodes(env)) == 2, timeout=90, what="the requested node to go once withdrawn")

        # A shape no node type fits, and one whose launches fail: both explained.
        stranded = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import cluster, time
            cluster.init({address!r})
            refs = [cluster.remote(num_gpus=4)(lambda: 1).remote(),
                    cluster.remote(resources={{"broken": 1}})(lambda: 1).remote()]
            time.sleep(600)
            """)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            def explained_both() -> str | None:
                text = cli(env, "status", "--explain").stdout
                return text if "no node type can fit {CPU: 1, GPU: 4}" in text and "launch failed (broken)" in text \
                    else None

            try:
                text = e2e.wait_until(explained_both, timeout=90, what="status --explain to explain both")
            except AssertionError:
                stranded.kill()
                raise AssertionError(cli(env, "status", "--explain").stdout + stranded.communicate()[1]) from None

            assert "launches of broken are failing" in text and "backing off" in text
        finally:
            stranded.kill()
            stranded.wait()
    finally:
        down = cli(env, "down", str(config), check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "is down" in down.stdout
    e2e.wait_until(lambda: not our_processes(env), timeout=30, what="every process of the cluster to exit")
    assert len(SEEN_STORES) >= 5  # head, keeper, 2 cpu_workers, accel_worker
    assert not [path for path in SEEN_STORES if os.path.exists(path)]


SPREAD_CONFIG = """\
cluster_name: {name}
provider: {{type: local}}
head_node_type: head
max_workers: 5
idle_timeout_s: 2
node_types:
  head: {{resources: {{CPU: 1}}}}
  worker: {{resources: {{CPU: 1}}, max_workers: 3}}
  special: {{resources: {{CPU: 1, special: 1}}, max_workers: 1}}
  zoned: {{resources: {{CPU: 1}}, labels: {{zone: b}}, max_workers: 1}}
"""

GROUP = textwrap.dedent(
    """
    import json, sys
    import cluster
    from cluster.util import placement_group, placement_group_table

    cluster.init(sys.argv[1])
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD")
    cluster.get(pg.ready(), timeout=240)
    nodes = placement_group_table(pg)["bundles_to_node_id"]
    special = cluster.remote(resources={"special": 1})(lambda: "ran").remote()
    assert cluster.get(special, timeout=240) == "ran"
    zoned = cluster.remote(label_selector={"zone": "b"})(lambda: cluster.get_runtime_context().get_node_id())
    zone_b = cluster.get(zoned.remote(), timeout=240)
    assert {n["node_id"]: n["labels"] for n in cluster.nodes()}[zone_b].get("zone") == "b"
    print("RESULT " + json.dumps(len(set(nodes.values()))))
    """
)


def test_the_autoscaler_launches_nodes_for_a_strict_spread_group_a_resource_and_a_label(env, tmp_path, e2e):
    config = tmp_path / "cluster.yaml"
    config.write_text(SPREAD_CONFIG.format(name=f"t{uuid.uuid4().hex[:8]}"))
    try:
        up = cli(env, "up", str(config))
        address = next(n["address"] for n in alive_nodes(env) if n["is_head"])
        script = tmp_path / "group.py"
        script.write_text(GROUP)
        run = subprocess.run([sys.executable, str(script), address], env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, up.stderr + run.stdout + run.stderr
        assert run.stdout.split("RESULT ")[1].strip() == "3"  # two workers were launched for it
        assert "waits for the autoscaler to launch a node of type special ({CPU: 1, special: 1})" in run.stderr
        assert len(alive_nodes(env)) == 5  # and one of the zoned type, for the task that asked for zone b
    finally:
        down = cli(env, "down", str(config), check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    e2e.wait_until(lambda: not our_processes(env), timeout=30, what="every process of the cluster to exit")


def test_up_and_down_for_a_provider_no_plugin_brings_up_say_what_to_install(env, tmp_path):
    config = tmp_path / "cloud.yaml"
    config.write_text("cluster_name: c\nprovider: {type: cloud9}\nhead_node_type: head\n"
                      "node_types: {head: {resources: {CPU: 1}}}\n")
    for command in ("up", "down"):
        out = cli(env, command, str(config), check=False)
        assert out.returncode == 1 and "no installed plugin" in out.stderr and "'cloud9'" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
