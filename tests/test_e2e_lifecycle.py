"""Clusters come and go: `cluster start`/`status`/`stop`, and the local cluster of `cluster.init()`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

import cluster


@cluster.remote
def hold_until_released(started: str, release: str, patience: float) -> str:
    Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + patience
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            return "gave up waiting"
        time.sleep(0.01)
    return os.environ["CLUSTER_NODE_ID"]


@cluster.remote
def sleep_in_task(started: str) -> None:
    Path(started).write_text(str(os.getpid()))
    time.sleep(300)


@cluster.remote
def whoami() -> int:
    return os.getpid()


def status_table(text: str) -> tuple[str, dict[str, dict[str, str]]]:
    """`cluster status` output -> (summary line, {node cell: {column: cell}})."""
    lines = text.strip().splitlines()
    header = re.split(r"\s{2,}", lines[1].strip())
    table = [line for line in lines[2:] if not line.startswith(("Pending demand", "  "))]
    rows = [re.split(r"\s{2,}", line.strip()) for line in table]
    return lines[0], {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def tree_of(pid: int) -> list[int]:
    return [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]


# -------------------------------------------------------------------------- status


def test_cluster_status_lists_the_head_and_two_nodes_with_their_resources(make_cluster, tmp_path, e2e):
    lc = make_cluster(num_cpus=1, resources={"alpha": 2})
    one = lc.add_node(num_cpus=1, resources={"beta": 1})
    two = lc.add_node(num_cpus=2, resources={"beta": 3, "gamma": 0.5})

    nodes = {n["node_id"]: n for n in e2e.status_json(lc)}
    head_id = next(node_id for node_id, n in nodes.items() if n["is_head"])
    assert set(nodes) == {head_id, one["node_id"], two["node_id"]}
    assert {n["state"] for n in nodes.values()} == {"alive"}
    assert nodes[head_id]["resources"] == {"CPU": 1, "GPU": 0, "alpha": 2}
    assert nodes[one["node_id"]]["resources"] == {"CPU": 1, "GPU": 0, "beta": 1}
    assert nodes[two["node_id"]]["resources"] == {"CPU": 2, "GPU": 0, "beta": 3, "gamma": 0.5}
    assert sum(n["resources"]["CPU"] for n in nodes.values()) == 4
    assert (nodes[head_id]["address"], nodes[head_id]["pid"]) == (lc.address, lc.pids[0])
    for record in (one, two):
        assert (nodes[record["node_id"]]["address"], nodes[record["node_id"]]["pid"]) == (record["address"], record["pid"])
        assert not nodes[record["node_id"]]["is_head"]

    text = lc.cli("status").stdout
    assert text.rstrip().endswith("Pending demand: none")
    summary, rows = status_table(text)
    assert summary == f"Cluster at {lc.address}: 3 node(s) alive, 0 dead"
    assert set(rows) == {f"{head_id} (head)", one["node_id"], two["node_id"]}
    expected = {
        f"{head_id} (head)": {"CPU used/total": "0/1", "alpha": "0/2", "beta": "0/0", "gamma": "0/0"},
        one["node_id"]: {"CPU used/total": "0/1", "alpha": "0/0", "beta": "0/1", "gamma": "0/0"},
        two["node_id"]: {"CPU used/total": "0/2", "alpha": "0/0", "beta": "0/3", "gamma": "0/0.5"},
    }
    for name, cells in expected.items():
        assert {k: rows[name][k] for k in cells} == cells, name
        assert rows[name]["STATE"] == "alive"
        assert rows[name]["ADDRESS"] == nodes[name.split()[0]]["address"]

    # A running task shows up as used resources on the node that runs it.
    lc.connect()
    started, release = tmp_path / "started", tmp_path / "release"
    ref = hold_until_released.options(resources={"beta": 3}).remote(str(started), str(release), 120)
    try:
        e2e.wait_until(started.exists, what="the task to start")
        e2e.wait_until(
            lambda: {n["node_id"]: n for n in e2e.status_json(lc)}[two["node_id"]]["available"].get("beta") == 0,
            what="cluster status to show the task's resources in use",
        )
        _, rows = status_table(lc.cli("status").stdout)
        assert rows[two["node_id"]]["CPU used/total"] == "1/2"
        assert rows[two["node_id"]]["beta"] == "3/3"
    finally:
        release.touch()
    assert cluster.get(ref, timeout=60) == two["node_id"]
    assert {n["node_id"] for n in cluster.nodes()} == set(nodes)


# ---------------------------------------------------------------------------- stop


def test_cluster_stop_leaves_no_process_behind(make_cluster, tmp_path, e2e):
    lc = make_cluster(num_cpus=1)
    lc.add_node(num_cpus=1)
    lc.connect()
    started = tmp_path / "started"
    sleep_in_task.options(num_cpus=1).remote(str(started))  # a worker busy in a task during the stop
    busy_worker = int(e2e.wait_until(lambda: started.exists() and started.read_text(), what="the task to start"))
    stores = e2e.store_paths(lc)

    tree = lc.process_tree()
    assert len(lc.pids) == 2 and set(lc.pids) < set(tree)
    for daemon in lc.pids:  # each daemon has its workers below it
        assert psutil.Process(daemon).children(recursive=True), f"daemon {daemon} has no workers"
    assert busy_worker in tree
    assert all(os.path.isdir(store) for store in stores) and len(stores) == 2

    proc = lc.cli("stop")

    assert "Stopped 2 daemon(s)" in proc.stdout
    survivors = e2e.still_running(tree)
    assert survivors == [], f"still running after `cluster stop`: {survivors}"
    assert [store for store in stores if os.path.exists(store)] == []
    assert lc.daemon_records() == []
    assert not (lc.root / "current.json").exists()
    after = lc.cli("status", check=False)
    assert after.returncode != 0
    assert "no cluster is running" in after.stderr


# ------------------------------------------------------- the local cluster of init()


def test_init_with_no_cluster_around_starts_one_that_shutdown_stops(monkeypatch, tmp_path, e2e):
    monkeypatch.setenv("CLUSTER_TMPDIR", str(tmp_path))

    info = cluster.init(num_cpus=1)

    assert Path(info["session_dir"]).parent == tmp_path
    (head,) = cluster.nodes()
    assert head["is_head"] and head["resources"]["CPU"] == 1
    assert psutil.Process(head["pid"]).ppid() == os.getpid()  # started by this process
    worker = cluster.get(whoami.remote(), timeout=60)
    tree = tree_of(head["pid"])
    assert worker in tree

    cluster.shutdown()

    assert not cluster.is_initialized()
    assert e2e.still_running(tree) == []
    assert not os.path.exists(head["store_path"])


KILLED_DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    import cluster

    cluster.init(num_cpus=1)

    @cluster.remote
    def whoami():
        return os.getpid()

    worker = cluster.get(whoami.remote(), timeout=60)
    (head,) = cluster.nodes()
    info = {"head_pid": head["pid"], "store_path": head["store_path"], "worker_pid": worker}
    with open(sys.argv[1] + ".tmp", "w") as f:
        json.dump(info, f)
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)  # until the test kills us
    """
)


def test_a_driver_killed_with_sigkill_takes_its_local_cluster_with_it(tmp_path, e2e):
    script, info_file = tmp_path / "driver.py", tmp_path / "info.json"
    script.write_text(KILLED_DRIVER)
    env = {**os.environ, "CLUSTER_TMPDIR": str(tmp_path / "root")}
    env.pop("CLUSTER_ADDRESS", None)
    tree: list[int] = []
    with open(tmp_path / "driver.out", "w") as out:
        driver = subprocess.Popen([sys.executable, str(script), str(info_file)], env=env, stdout=out, stderr=out)
    try:
        e2e.wait_until(lambda: info_file.exists() or driver.poll() is not None, what="the driver to start its cluster")
        assert info_file.exists(), (tmp_path / "driver.out").read_text()
        info = json.loads(info_file.read_text())
        tree = tree_of(info["head_pid"])
        assert info["worker_pid"] in tree

        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)

        survivors = e2e.still_running(tree)
        assert survivors == [], f"still running after the driver died: {survivors}"
        assert not os.path.exists(info["store_path"])
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        e2e.kill_all(pid for pid in tree if e2e.is_running(pid))


# ------------------------------------------------------ a graceful stop lets work finish


@cluster.remote
def work_for(started: str, seconds: float) -> str:
    Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "finished"


def test_a_task_running_when_its_node_is_stopped_finishes_within_the_grace(make_cluster, tmp_path, e2e):
    from cluster.daemon.main import SHUTDOWN_GRACE_S

    lc = make_cluster(num_cpus=1)
    node = lc.add_node(num_cpus=1, resources={"b": 1})
    lc.connect()
    started = tmp_path / "started"
    # Longer than the zygote gives workers once the daemon is gone (1 s), within the grace.
    ref = work_for.options(resources={"b": 1}, max_retries=0).remote(str(started), 2.0)
    e2e.wait_until(started.exists, what="the task to start on the node")
    worker_pid = int(e2e.wait_until(started.read_text, what="the worker's pid"))
    os.killpg(node["pid"], signal.SIGTERM)  # what `cluster stop` does to each daemon
    assert cluster.get(ref, timeout=SHUTDOWN_GRACE_S) == "finished"
    assert e2e.still_running([node["pid"], worker_pid], timeout=SHUTDOWN_GRACE_S + 5) == []
    assert not os.path.exists(node["store_path"])


def test_an_idle_node_stops_at_once_without_waiting_for_the_grace(make_cluster, e2e):
    from cluster.daemon.main import SHUTDOWN_GRACE_S

    lc = make_cluster(num_cpus=1)
    node = lc.add_node(num_cpus=2)
    began = time.monotonic()
    os.killpg(node["pid"], signal.SIGTERM)
    assert e2e.still_running([node["pid"]], timeout=SHUTDOWN_GRACE_S + 5) == []
    assert time.monotonic() - began < SHUTDOWN_GRACE_S


def test_cluster_stop_lets_a_task_on_a_node_finish_though_the_head_stops_first(make_cluster, tmp_path, e2e):
    from cluster.daemon.main import SHUTDOWN_GRACE_S

    lc = make_cluster(num_cpus=1)
    node = lc.add_node(num_cpus=1, resources={"b": 1})
    lc.connect()
    started = tmp_path / "started"
    ref = work_for.options(resources={"b": 1}, max_retries=0).remote(str(started), 2.0)
    e2e.wait_until(started.exists, what="the task to start on the node")
    # Every daemon of the machine at once; the head has nothing to wait for and goes first.
    stop = subprocess.Popen([sys.executable, "-m", "cluster", "stop"], env=lc.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert cluster.get(ref, timeout=SHUTDOWN_GRACE_S) == "finished"
    finally:
        out, _ = stop.communicate(timeout=60)
    assert stop.returncode == 0, out
    assert e2e.still_running([node["pid"]], timeout=SHUTDOWN_GRACE_S + 5) == []
