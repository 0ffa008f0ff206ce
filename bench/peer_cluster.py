"""cluster's half of the benchmark: the metrics of ``_engine.py``, timed on cluster.

    python bench/peer_cluster.py [--json] [--quick] [--only NAME,...]

``ClusterBackend`` is the adapter for our own public API (``cluster.init``, ``cluster.remote``,
``cluster.get``, ``cluster.put``, ``cluster.wait``, ``cluster.nodes``, ``cluster.shutdown``); the
clusters of their own (two nodes, the job API's head) are started with the ``cluster start``
CLI through ``cluster.testing.LocalCluster``, and jobs go through
``cluster_client.JobSubmissionClient``. The fault metrics' clusters are ``LocalCluster``s
too, their processes frozen and killed by pid (``_ClusterFaults``), and so is the placement
group metric's cluster of 4 nodes. ``policy_decisions_per_s`` drives cluster's scheduling
policy (``cluster.node.policy.SchedulingPolicy``) in this process, through ``policy_sim.py``.
``cluster`` and ``numpy`` are imported lazily, as in the peers' halves.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from _engine import (
    FAULT_DEADLINE_S,
    PG_STORE_BYTES,
    RESULT_PREFIX,
    RayStyleBackend,
    TaskFunctions,
    free_ports,
    main_for,
    parse_only,
    process_family,
    run_backend,
    scoped_env,
    signal_processes,
    wait_gone,
)


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


_CLUSTER_COLD_START = f"""
import cluster
cluster.init(num_cpus=2)
try:
    @cluster.remote
    def f():
        return 1 + 1
    print({RESULT_PREFIX!r} + str(cluster.get(f.remote(), timeout=120)), flush=True)
finally:
    cluster.shutdown()
"""


class ClusterBackend(RayStyleBackend):
    framework = "cluster"

    def __init__(self) -> None:
        super().__init__(
            TaskFunctions(_noop, _sleep, _sum, _fill, _probe, _NoopActor, _fill_logged, _stream)
        )

    def version(self) -> str:
        from importlib import metadata

        try:
            return metadata.version("cluster-core")
        except metadata.PackageNotFoundError:
            import cluster

            return str(getattr(cluster, "__version__", "unknown"))

    def describe(self) -> str:
        return (
            "cluster.init(num_cpus=2); two nodes: `cluster start --head` + `cluster start "
            "--address`, 1 CPU each; small store: cluster.init(num_cpus=2, "
            "object_store_memory=...); jobs: `cluster start --head --num-cpus 2` + "
            "cluster_client.JobSubmissionClient; placement groups: cluster.util; 4 nodes: "
            "`cluster start --head` + 3 `cluster start --address`, 1 CPU each; policy: "
            "cluster.node.policy.SchedulingPolicy in a simulation (bench/policy_sim.py)"
        )

    def cold_start_argv(self) -> list[str]:
        return [sys.executable, "-c", _CLUSTER_COLD_START]

    def start(self, **init_options: Any) -> None:
        import cluster

        try:
            cluster.init(**{"num_cpus": 2, **init_options})
        except BaseException:
            cluster.shutdown()  # init may have half-started before it raised
            raise
        self._bind(cluster)

    @contextlib.contextmanager
    def two_node_cluster(self, store_bytes: int, scratch: str) -> Iterator[None]:
        import cluster
        from cluster.testing import LocalCluster

        # CLUSTER_TMPDIR: the daemons' records, sessions and spill dirs stay in scratch, and
        # `cluster stop` (in LocalCluster.stop) sees only these daemons.
        with scoped_env(CLUSTER_TMPDIR=scratch, CLUSTER_ADDRESS=None, CLUSTER_TOKEN=None):
            nodes = LocalCluster(
                scratch, num_cpus=1, resources={"a": 1}, object_store_memory=store_bytes
            )
            try:
                nodes.start()
                nodes.add_node(num_cpus=1, resources={"b": 1}, object_store_memory=store_bytes)
                nodes.connect()
                self._bind(cluster)
                yield
            finally:
                self._api = None
                nodes.stop()  # disconnects, `cluster stop`, then kills what is left by pid

    @contextlib.contextmanager
    def group_cluster(self, nodes: int, scratch: str) -> Iterator[None]:
        import cluster
        from cluster.testing import LocalCluster

        with scoped_env(CLUSTER_TMPDIR=scratch, CLUSTER_ADDRESS=None, CLUSTER_TOKEN=None):
            local = LocalCluster(scratch, num_cpus=1, object_store_memory=PG_STORE_BYTES)
            try:
                local.start()  # `cluster start --head --port 0 --num-cpus 1 ...`
                for _ in range(nodes - 1):  # `cluster start --address ... --num-cpus 1`
                    local.add_node(num_cpus=1, object_store_memory=PG_STORE_BYTES)
                local.connect()
                self._bind(cluster)
                self._wait_alive(nodes)
                yield
            finally:
                self._api = None
                local.stop()  # disconnects, `cluster stop`, then kills what is left by pid

    def policy_simulation(self, requests: int, nodes: int) -> tuple[int, float, str]:
        from policy_sim import simulate  # (next to this file; imports cluster's policy)

        result = simulate(requests=requests, nodes=nodes)
        if result.violation_count:
            raise RuntimeError(
                f"{result.violation_count} decision(s) broke a promise of the policy: "
                + "; ".join(result.violations[:3])
            )
        return result.requests, result.policy_s, result.note()

    @contextlib.contextmanager
    def small_store_cluster(self, store_bytes: int, scratch: str) -> Iterator[None]:
        # The local cluster's session (and so its spill directory) lives under CLUSTER_TMPDIR.
        with scoped_env(CLUSTER_TMPDIR=scratch, CLUSTER_ADDRESS=None, CLUSTER_TOKEN=None):
            try:
                self.start(object_store_memory=store_bytes)
                yield
            finally:
                self.stop()

    def store_paths(self) -> list[str]:
        return [node["store_path"] for node in self._api.nodes()]

    @contextlib.contextmanager
    def job_cluster(self, scratch: str) -> Iterator[Any]:
        from cluster.testing import LocalCluster

        try:
            from cluster_client import JobSubmissionClient
        except ImportError as exc:
            raise RuntimeError(
                "the job API needs the cluster-client package, which is not installed here "
                f"({exc}): pip install -e packages/client"
            ) from None
        # CLUSTER_TMPDIR: the head's records and session stay in scratch, and `cluster stop`
        # (in LocalCluster.stop) sees only this head. The driver does not connect to it.
        with scoped_env(CLUSTER_TMPDIR=scratch, CLUSTER_ADDRESS=None, CLUSTER_TOKEN=None):
            head = LocalCluster(scratch, num_cpus=2)  # `cluster start --head --port 0 ...`
            client = None
            try:
                head.start()
                if not head.dashboard_url:
                    raise RuntimeError(
                        "the head started no HTTP API (no dashboard_url in its current.json): "
                        "is cluster-client installed where the head runs? "
                        "pip install -e packages/client"
                    )
                client = JobSubmissionClient(head.dashboard_url, head.token)
                yield client
            finally:
                if client is not None:
                    client.close()
                head.stop()  # `cluster stop`, then kills what is left by pid

    @contextlib.contextmanager
    def fault_cluster(
        self, scratch: str, *, head_cpus: float, durable_head: bool
    ) -> Iterator[_ClusterFaults]:
        from cluster.testing import LocalCluster

        head_args = []
        if durable_head:
            # What a head started again needs to be the same cluster: its port, its metadata
            # store (a file that outlives the process) and its token.
            (port,) = free_ports(1)
            head_args = [
                "--port", str(port),
                "--metadata-store", f"sqlite:///{os.path.join(scratch, 'stable.db')}",
                "--token", secrets.token_hex(16),
            ]  # fmt: skip
        with scoped_env(CLUSTER_TMPDIR=scratch, CLUSTER_ADDRESS=None, CLUSTER_TOKEN=None):
            nodes = LocalCluster(
                scratch,
                num_cpus=head_cpus,
                heartbeat_timeout=FAULT_DEADLINE_S,
                head_args=head_args,  # after LocalCluster's own `--port 0`: the last one wins
            )
            faults = None
            try:
                nodes.start()
                faults = _ClusterFaults(self, nodes, durable_head)
                yield faults
            finally:
                self._api = None
                if faults is not None:
                    faults.release_frozen()  # or `cluster stop` would wait for them in vain
                nodes.stop()  # disconnects, `cluster stop`, then kills what is left by pid


class _ClusterFaults:
    """The fault metrics' cluster: a ``LocalCluster`` (``cluster start``) whose head declares a
    node dead after ``FAULT_DEADLINE_S`` without a heartbeat. A node is its daemon's record.

    A daemon leads its own process group, which its zygote and workers share: freezing and
    killing signal the group and, to be sure, every descendant of the daemon.
    """

    def __init__(self, backend: ClusterBackend, nodes: Any, durable: bool) -> None:
        self._backend = backend
        self._nodes = nodes  # cluster.testing.LocalCluster
        self._head_pid = nodes.pids[-1]
        self._frozen: list[Any] = []
        self.setup = f"head: cluster start --head --heartbeat-timeout {FAULT_DEADLINE_S:g}"
        if durable:
            self.setup += " --port P --metadata-store sqlite:///<scratch>/stable.db --token T"

    def add_node(self, num_cpus: float, resources: dict[str, float]) -> dict[str, Any]:
        # `cluster start --address` returns once the head has registered the node.
        return self._nodes.add_node(num_cpus=num_cpus, resources=resources)

    def connect(self, node: dict[str, Any] | None = None) -> None:
        import cluster

        # CLUSTER_NODE_ID: the node a driver on this machine attaches to (default: the head's).
        with scoped_env(CLUSTER_NODE_ID=node["node_id"] if node else None):
            self._nodes.connect()
        self._backend._bind(cluster)

    def node_state(self, node: dict[str, Any]) -> str:
        for listed in self._backend._api.nodes():
            if listed["node_id"] == node["node_id"]:
                return str(listed["state"])
        return "missing"

    def _signal(self, pid: int, sig: int) -> list[Any]:
        procs = process_family([pid])
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        signal_processes(procs, sig)
        return procs

    def freeze_node(self, node: dict[str, Any]) -> None:
        self._frozen += self._signal(node["pid"], signal.SIGSTOP)

    def kill_node(self, node: dict[str, Any]) -> None:
        wait_gone(self._signal(node["pid"], signal.SIGKILL))

    def kill_head(self) -> None:
        wait_gone(self._signal(self._head_pid, signal.SIGKILL))

    def restart_head(self) -> None:
        self._nodes.start()  # the same `cluster start --head` arguments: port, store, token
        self._head_pid = self._nodes.pids[-1]

    def release_frozen(self) -> None:
        """SIGKILL whatever is still frozen (then SIGCONT, for a process that ignored it)."""
        signal_processes(self._frozen, signal.SIGKILL)
        signal_processes(self._frozen, signal.SIGCONT)
        self._frozen = []


def run(*, quick: bool = False, only: list[str] | None = None) -> list[dict]:
    """Measure cluster itself; one dict per metric (see ``METRICS`` for the names)."""
    return run_backend(ClusterBackend(), quick=quick, only=parse_only(only))


def main(argv: list[str] | None = None) -> int:
    return main_for(ClusterBackend(), argv, prog="peer_cluster.py")


if __name__ == "__main__":
    raise SystemExit(main())
