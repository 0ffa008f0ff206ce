"""Ray's half of the benchmark: the same metrics as ``bench/peer_cluster.py``.

    python bench/peer_ray.py [--json] [--quick] [--only NAME,...]

Ray is kept on loopback: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 must be set before ray is
imported (else it moves to the machine's own address even with _node_ip_address), and it is
set here at import time so that the cold-start child inherits it too.

The metrics with a cluster of their own keep all of Ray's files (sessions, sockets, the
address file, spilled objects) in the engine's scratch directory through RAY_TMPDIR, and
start their nodes as children of this process (``ray.cluster_utils.Cluster`` for two
raylets, or for the head with its dashboard that serves the job API), so they are stopped by
pid, never with ``ray stop``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

from _engine import RayStyleBackend, TaskFunctions, main_for, scoped_env

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report leaves the machine

NODE_IP = "127.0.0.1"
DASHBOARD_WAIT_S = 60.0  # until the job API of a fresh head answers

# address="local" always starts a fresh instance instead of joining one found on the machine.
_COLD_START = f"""
import ray
ray.init(address="local", num_cpus=2, _node_ip_address={NODE_IP!r})
try:
    @ray.remote
    def f():
        return 1 + 1
    print("RESULT " + str(ray.get(f.remote())), flush=True)
finally:
    ray.shutdown()
"""


def _noop() -> None:
    return None


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _sum(array: Any) -> float:
    return float(array.sum())


def _fill(nbytes: int, fill: int) -> Any:
    import numpy as np

    return np.full(nbytes, fill, dtype=np.uint8)


def _probe(array: Any) -> tuple[int, int, int]:
    return array.nbytes, int(array[0]), int(array[-1])


class _NoopActor:
    def noop(self) -> None:
        return None


def _free_ports(n: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (all held until all are chosen, so distinct)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind((NODE_IP, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _job_client(address: str, timeout: float = DASHBOARD_WAIT_S) -> Any:
    """A JobSubmissionClient, once the dashboard's job API answers (list_jobs)."""
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            client = JobSubmissionClient(address)
            client.list_jobs()
            return client
        except Exception as exc:  # connection refused, 5xx while the dashboard starts
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Ray's job API at {address} did not answer within {timeout:.0f} s: {exc!r}"
                ) from exc
            time.sleep(0.5)


TASKS = TaskFunctions(_noop, _sleep, _sum, _fill, _probe, _NoopActor)


class RayBackend(RayStyleBackend):
    framework = "ray"
    # ray.wait pulls finished objects to the driver's node unless told not to.
    wait_done_options = {"fetch_local": False}

    def __init__(self) -> None:
        super().__init__(TASKS)

    def version(self) -> str:
        import ray

        return ray.__version__

    def describe(self) -> str:
        own = (
            "two nodes: ray.cluster_utils.Cluster, 1 CPU each; small store: "
            "ray.init(num_cpus=2, object_store_memory=..., object_spilling_directory=...); "
            "jobs: ray.cluster_utils.Cluster head with the dashboard, 2 CPUs, "
            "ray.job_submission.JobSubmissionClient"
        )
        if self._node_ip is None:
            return f"ray.init(num_cpus=2) on 127.0.0.1; {own}"
        return f"ray.init(num_cpus=2); node bound to {self._node_ip}, gcs {self._gcs}; {own}"

    def cold_start_argv(self) -> list[str]:
        return [sys.executable, "-c", _COLD_START]

    _node_ip: str | None = None
    _gcs: str | None = None

    def start(self, **init_options: Any) -> None:
        import ray

        ray.init(address="local", num_cpus=2, _node_ip_address=NODE_IP, **init_options)
        self._bind(ray)
        self._check_loopback()

    def _check_loopback(self) -> None:
        import ray

        ctx = ray.get_runtime_context()
        self._gcs = ctx.gcs_address
        self._node_ip = ray.util.get_node_ip_address()
        addresses = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
        if not self._gcs.startswith(NODE_IP) or self._node_ip != NODE_IP or addresses != {NODE_IP}:
            raise RuntimeError(
                f"ray left loopback: driver {self._node_ip}, gcs {self._gcs}, nodes {addresses}"
            )

    @contextlib.contextmanager
    def two_node_cluster(self, store_bytes: int, scratch: str) -> Iterator[None]:
        import ray
        from ray.cluster_utils import Cluster

        node = {"num_cpus": 1, "object_store_memory": store_bytes, "node_ip_address": NODE_IP}
        with scoped_env(RAY_TMPDIR=scratch):
            nodes = Cluster()
            try:
                # The first node is the head; the driver attaches to it (node "a").
                nodes.add_node(**node, resources={"a": 1}, include_dashboard=False)
                nodes.add_node(**node, resources={"b": 1})
                nodes.wait_for_nodes()
                ray.init(address=nodes.address, _node_ip_address=NODE_IP)
                self._bind(ray)
                self._check_loopback()
                yield
            finally:
                self._api = None
                ray.shutdown()  # also after a half-done init
                nodes.shutdown()  # kills each node's processes by pid and waits for them

    @contextlib.contextmanager
    def small_store_cluster(self, store_bytes: int, scratch: str) -> Iterator[None]:
        import ray

        with scoped_env(RAY_TMPDIR=scratch):
            try:
                self.start(
                    object_store_memory=store_bytes,
                    object_spilling_directory=os.path.join(scratch, "spill"),
                )
                yield
            finally:
                self._api = None
                ray.shutdown()  # also after a half-done init

    def store_paths(self) -> list[str]:
        return []  # plasma is one file that the raylet maps for its whole life

    @contextlib.contextmanager
    def job_cluster(self, scratch: str) -> Iterator[Any]:
        from ray.cluster_utils import Cluster

        # A head like `ray start --head --num-cpus 2 --include-dashboard true`, but started
        # as children of this process (stopped by pid), on free ports of 127.0.0.1 only (the
        # agent's default port, 52365, is fixed). The driver does not connect to it.
        dashboard_port, agent_port = _free_ports(2)
        with scoped_env(RAY_TMPDIR=scratch):
            nodes = Cluster()
            try:
                nodes.add_node(
                    num_cpus=2,
                    node_ip_address=NODE_IP,
                    include_dashboard=True,
                    dashboard_host=NODE_IP,
                    dashboard_port=dashboard_port,
                    dashboard_agent_listen_port=agent_port,
                )
                yield _job_client(f"http://{NODE_IP}:{dashboard_port}")
            finally:
                nodes.shutdown()  # kills the node's processes by pid and waits for them


def main(argv: list[str] | None = None) -> int:
    return main_for(RayBackend(), argv, prog="peer_ray.py")


if __name__ == "__main__":
    raise SystemExit(main())
