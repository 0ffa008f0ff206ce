"""`cluster up` / `cluster down` with provider type kubernetes, end to end.

On the fake, the head's pod runs a real head with the autoscaler and the kubernetes provider,
which creates worker pods through the same API; their node daemons join with the token from
the Secret, and a driver here runs tasks on them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml
from kubernetes import client
from kubetarget import KubeTarget, free_port, kubeconfig_of_nowhere, wait_until


def write_config(kube: KubeTarget, tmp_path, name: str, head_cpus: int = 1) -> tuple[str, int]:
    port = free_port()
    config = {
        "cluster_name": name, "head_node_type": "head", "idle_timeout_s": 600,
        "provider": kube.provider_options(port=port, dashboard_port=free_port(), unschedulable_timeout_s=0),
        "node_types": {"head": {"resources": {"CPU": head_cpus}},
                       "worker": {"resources": {"CPU": 1, "w": 1}, "min_workers": 1, "max_workers": 2}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path), port


def cli(tmp_path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLUSTER_TMPDIR": str(tmp_path / "here")}
    return subprocess.run([sys.executable, "-m", "cluster", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_up_runs_the_head_in_a_pod_which_scales_worker_pods_and_down_removes_everything(kube, tmp_path):
    config, port = write_config(kube, tmp_path, "e2e")
    core = client.CoreV1Api(kube.api_client())
    up = cli(tmp_path, "up", config, "--timeout", "180")
    assert up.returncode == 0, up.stdout + up.stderr
    for line in ("created Secret e2e-token", "created Deployment e2e-head", "Head pod e2e-head-",
                 "Waiting for min_workers: worker 1/1"):
        assert line in up.stderr, up.stderr
    assert "port-forward svc/e2e-head" in up.stdout and "Traceback" not in up.stderr
    again = cli(tmp_path, "up", config)
    assert again.returncode == 1 and "already up" in again.stderr

    (head_pod,) = core.list_namespaced_pod(kube.namespace, label_selector="cluster.dev/name=e2e,"
                                           "cluster.dev/role=head").items
    (worker,) = core.list_namespaced_pod(kube.namespace, label_selector="cluster.dev/role=worker").items
    (owner,) = worker.metadata.owner_references
    assert owner.uid == head_pod.metadata.uid  # the workers go when the head's pod goes
    if kube.fake is not None:  # the fake's pods are on this machine's loopback: reach the head directly
        secret = core.read_namespaced_secret("e2e-token", kube.namespace)
        token = base64.b64decode(secret.data["token"]).decode()
        driver = textwrap.dedent(f"""
            import json, os, time
            import cluster
            cluster.init("127.0.0.1:{port}", token={token!r})

            @cluster.remote(resources={{"w": 1}})
            def where():
                time.sleep(3)
                return os.environ["CLUSTER_TMPDIR"]  # each pod has a directory of its own

            print(json.dumps(sorted(set(cluster.get([where.remote() for _ in range(2)], timeout=150)))))
            """)
        ran = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=200,
                             env={**os.environ, "CLUSTER_TMPDIR": str(tmp_path / "driver")})
        assert ran.returncode == 0, ran.stderr
        assert len(json.loads(ran.stdout)) == 2  # the autoscaler added a second worker pod for the backlog
        status = cli(tmp_path, "status", "--address", f"127.0.0.1:{port}", "--token", token)
        assert "Autoscaler (kubernetes provider, cluster 'e2e')" in status.stdout, status.stdout + status.stderr

    down = cli(tmp_path, "down", config)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "Cluster 'e2e' is down" in down.stdout and "deleted Deployment e2e-head" in down.stderr
    assert core.list_namespaced_pod(kube.namespace, label_selector="cluster.dev/name=e2e").items == []
    for kind in ("secret", "config_map", "service", "service_account"):
        names = [o.metadata.name for o in getattr(core, f"list_namespaced_{kind}")(kube.namespace).items]
        assert not [n for n in names if n.startswith("e2e-")], (kind, names)
    rbac = client.RbacAuthorizationV1Api(kube.api_client())
    assert not [r for r in rbac.list_namespaced_role(kube.namespace).items if r.metadata.name.startswith("e2e-")]
    if kube.fake is not None:
        wait_until(lambda: not kube.fake.pids(), "every pod's process stopped")


def test_a_head_that_cannot_be_scheduled_fails_up_with_the_reason_and_down_cleans_up(kube, tmp_path):
    config, _ = write_config(kube, tmp_path, "big", head_cpus=64)
    up = cli(tmp_path, "up", config, "--timeout", "120")
    assert up.returncode == 1, up.stdout + up.stderr
    assert "the head pod big-head-" in up.stderr and "Insufficient cpu" in up.stderr
    assert "cluster down" in up.stderr and "Traceback" not in up.stderr
    down = cli(tmp_path, "down", config)
    assert down.returncode == 0 and "Cluster 'big' is down" in down.stdout, down.stdout + down.stderr
    nothing = cli(tmp_path, "down", config)
    assert nothing.returncode == 0 and "Nothing of cluster 'big' was found" in nothing.stdout


def test_up_and_down_say_when_the_api_is_not_there_or_the_config_is_wrong(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    port = kubeconfig_of_nowhere(kubeconfig)
    target = KubeTarget(str(kubeconfig), "default", "cluster:test", "127.0.0.1", fake=object())
    config, _ = write_config(target, tmp_path, "gone")
    for command in ("up", "down"):
        out = cli(tmp_path, command, config)
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"cannot reach the Kubernetes API at http://127.0.0.1:{port} (connection refused)" in out.stderr
        assert "Traceback" not in out.stderr
    path = Path(config)
    path.write_text(path.read_text().replace("namespace: default", "namespace: Not_A_Name"))
    out = cli(tmp_path, "up", config)
    assert out.returncode == 1 and "not a Kubernetes namespace name" in out.stderr and "Traceback" not in out.stderr
