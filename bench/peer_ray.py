"""Ray's half of the benchmark: the same metrics as ``bench/peer_cluster.py``.

    python bench/peer_ray.py [--json] [--quick] [--only NAME,...]

Ray is kept on loopback: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 must be set before ray is
imported (else it moves to the machine's own address even with _node_ip_address), and it is
set here at import time so that the cold-start child inherits it too.

The metrics with a cluster of their own keep all of Ray's files (sessions, sockets, the
address file, spilled objects) in the engine's scratch directory through RAY_TMPDIR, and
start their nodes as children of this process (``ray.cluster_utils.Cluster`` for two
raylets, or for the head with its dashboard that serves the job API), so they are stopped by
pid, never with ``ray stop``. The fault metrics' clusters are ``Cluster``s too, with the GCS
health check set to the metrics' deadline, and, for the head restart, GCS fault tolerance
through a redis-server of their own (``_redis_server``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from _engine import (
    FAULT_DEADLINE_S,
    PG_STORE_BYTES,
    NotMeasured,
    RayStyleBackend,
    TaskFunctions,
    free_ports,
    main_for,
    process_family,
    scoped_env,
    signal_processes,
    wait_gone,
)

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report leaves the machine

NODE_IP = "127.0.0.1"
DASHBOARD_WAIT_S = 60.0  # until the job API of a fresh head answers
REDIS_WAIT_S = 10.0  # until a fresh redis-server answers PING

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


def _stream(n: int, nbytes: int) -> Any:
    import numpy as np

    for i in range(n):
        yield i % 251 if nbytes == 0 else np.full(nbytes, i % 251, dtype=np.uint8)


class _NoopActor:
    def noop(self) -> None:
        return None


def _fill_logged(nbytes: int, fill: int, folder: str) -> Any:
    import os

    import numpy as np

    open(os.path.join(folder, f"{fill}-{os.getpid()}-{os.urandom(4).hex()}"), "w").close()
    return np.full(nbytes, fill, dtype=np.uint8)


def _health_check_config(deadline_s: float) -> dict[str, int]:
    """The GCS's health check of its raylets, set so that a node silent for ``deadline_s``
    is dead: a raylet that has not been heard from for a period is checked, every period
    until it answers; a check fails after a period without an answer, and the second
    failure in a row declares the node dead. So: a period of silence, a failed check, a
    period, another failed check = 4 periods."""
    period_ms = int(deadline_s * 1000 / 4)
    return {
        "health_check_initial_delay_ms": period_ms,
        "health_check_period_ms": period_ms,
        "health_check_timeout_ms": period_ms,
        "health_check_failure_threshold": 2,
    }


def _wait_for_redis(port: int, proc: subprocess.Popen, timeout: float = REDIS_WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode} at start")
        try:
            with socket.create_connection((NODE_IP, port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server on port {port} did not answer within {timeout:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def _redis_server(scratch: str) -> Iterator[str]:
    """A redis-server of our own on a free port of 127.0.0.1, kept in memory (nothing saved
    to disk: it outlives the Ray head, not itself); yields its address, stops it by pid."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError(
            "Ray keeps a head's state across restarts only in an external Redis (GCS fault "
            "tolerance), and redis-server is not installed (Debian: apt-get install -y "
            "redis-server)"
        )
    (port,) = free_ports(1, NODE_IP)
    folder = os.path.join(scratch, "redis")
    os.mkdir(folder)
    with open(os.path.join(folder, "redis.log"), "wb") as log:
        proc = subprocess.Popen(
            [exe, "--bind", NODE_IP, "--port", str(port), "--save", "", "--appendonly", "no",
             "--dir", folder],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait_for_redis(port, proc)
            yield f"{NODE_IP}:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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


TASKS = TaskFunctions(_noop, _sleep, _sum, _fill, _probe, _NoopActor, _fill_logged, _stream)


class _RayFaults:
    """The fault metrics' cluster: ``ray.cluster_utils.Cluster`` nodes (children of this
    process) under a GCS whose health check declares a node dead after ``FAULT_DEADLINE_S``.
    A node is cluster_utils' node object; its processes are those it started (raylet, GCS,
    agents...) and all their descendants (the workers)."""

    def __init__(self, backend: RayBackend, nodes: Any, head: dict[str, Any], scratch: str) -> None:
        self._backend = backend
        self._nodes = nodes  # ray.cluster_utils.Cluster
        self._head = head  # add_node arguments of the head, to start it again
        self._scratch = scratch
        self._added = 0
        self._frozen: list[Any] = []
        config = ", ".join(f"{k}={v}" for k, v in head["_system_config"].items())
        self.setup = f"head without dashboard, _system_config: {config}"
        if "gcs_server_port" in head:
            self.setup += (
                "; GCS fault tolerance: RAY_REDIS_ADDRESS of a redis-server on 127.0.0.1 "
                "started for the metric (in memory), a fixed gcs_server_port"
            )

    def add_node(self, num_cpus: float, resources: dict[str, float]) -> Any:
        # A temp dir of its own, by which connect() finds the node (ray.init takes no node
        # id or name when it joins a cluster). add_node waits until the GCS lists it.
        self._added += 1
        return self._nodes.add_node(
            num_cpus=num_cpus,
            resources=resources,
            node_ip_address=NODE_IP,
            temp_dir=os.path.join(self._scratch, f"n{self._added}"),
        )

    def connect(self, node: Any | None = None) -> None:
        import ray

        # A driver attaches to a raylet of this host that matches: the head's unless the
        # temp dir names another.
        temp_dir = None if node is None else node.get_temp_dir_path()
        ray.init(address=self._nodes.address, _node_ip_address=NODE_IP, _temp_dir=temp_dir)
        self._backend._bind(ray)
        self._backend._check_loopback()

    def node_state(self, node: Any) -> str:
        import ray

        for listed in ray.nodes():
            if listed["NodeID"] == node.node_id:
                return "alive" if listed["Alive"] else "dead"
        return "missing"

    def _processes(self, node: Any) -> list[Any]:
        return process_family(
            [info.process.pid for infos in node.all_processes.values() for info in infos]
        )

    def freeze_node(self, node: Any) -> None:
        procs = self._processes(node)
        signal_processes(procs, signal.SIGSTOP)
        self._frozen += procs

    def _kill(self, node: Any) -> None:
        procs = self._processes(node)
        signal_processes(procs, signal.SIGKILL)
        wait_gone(procs)
        # Only the bookkeeping is left: its processes are gone (and reaped by it).
        self._nodes.remove_node(node, allow_graceful=False)

    def kill_node(self, node: Any) -> None:
        self._kill(node)

    def kill_head(self) -> None:
        self._kill(self._nodes.head_node)

    def restart_head(self) -> None:
        self._nodes.add_node(**self._head)  # the same GCS port, the same Redis

    def release_frozen(self) -> None:
        """SIGKILL whatever is still frozen (then SIGCONT, for a process that ignored it)."""
        signal_processes(self._frozen, signal.SIGKILL)
        signal_processes(self._frozen, signal.SIGCONT)
        self._frozen = []


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
            "ray.job_submission.JobSubmissionClient; placement groups: ray.util; 4 nodes: "
            "ray.cluster_utils.Cluster, head + 3 add_node(num_cpus=1)"
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
    def group_cluster(self, nodes: int, scratch: str) -> Iterator[None]:
        import ray
        from ray.cluster_utils import Cluster

        node = {"num_cpus": 1, "object_store_memory": PG_STORE_BYTES, "node_ip_address": NODE_IP}
        (agent_port,) = free_ports(1, NODE_IP)  # (the head's agent: by default a fixed port)
        with scoped_env(RAY_TMPDIR=scratch):
            cluster = Cluster()
            try:
                cluster.add_node(
                    **node, include_dashboard=False, dashboard_agent_listen_port=agent_port
                )
                for _ in range(nodes - 1):
                    cluster.add_node(**node)
                cluster.wait_for_nodes()
                ray.init(address=cluster.address, _node_ip_address=NODE_IP)
                self._bind(ray)
                self._check_loopback()
                self._wait_alive(nodes)
                yield
            finally:
                self._api = None
                ray.shutdown()  # also after a half-done init
                cluster.shutdown()  # kills each node's processes by pid and waits for them

    def policy_simulation(self, requests: int, nodes: int) -> tuple[int, float, str]:
        raise NotMeasured(
            "Ray's scheduling policy is C++ inside the raylet and the GCS (the cluster resource "
            "scheduler), not code a driver can call on a view of simulated nodes"
        )

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
        dashboard_port, agent_port = free_ports(2, NODE_IP)
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

    @contextlib.contextmanager
    def fault_cluster(
        self, scratch: str, *, head_cpus: float, durable_head: bool
    ) -> Iterator[_RayFaults]:
        import ray
        from ray.cluster_utils import Cluster

        (agent_port,) = free_ports(1, NODE_IP)
        head: dict[str, Any] = {
            "num_cpus": head_cpus,
            "node_ip_address": NODE_IP,
            "include_dashboard": False,
            # The head's dashboard agent runs all the same, by default on a fixed port (52365).
            "dashboard_agent_listen_port": agent_port,
            "_system_config": _health_check_config(FAULT_DEADLINE_S),
        }
        with contextlib.ExitStack() as stack:
            stack.enter_context(scoped_env(RAY_TMPDIR=scratch))
            if durable_head:
                # GCS fault tolerance: the GCS keeps its tables in an external Redis (found
                # through RAY_REDIS_ADDRESS when a head starts), and listens on a fixed port.
                redis = stack.enter_context(_redis_server(scratch))
                stack.enter_context(scoped_env(RAY_REDIS_ADDRESS=redis))
                (head["gcs_server_port"],) = free_ports(1, NODE_IP)
            nodes = Cluster()
            faults = None
            try:
                nodes.add_node(**head)
                faults = _RayFaults(self, nodes, head, scratch)
                yield faults
            finally:
                self._api = None
                if faults is not None:
                    faults.release_frozen()
                ray.shutdown()  # also after a half-done init
                nodes.shutdown()  # kills each node's processes by pid and waits for them


def main(argv: list[str] | None = None) -> int:
    return main_for(RayBackend(), argv, prog="peer_ray.py")


if __name__ == "__main__":
    raise SystemExit(main())
