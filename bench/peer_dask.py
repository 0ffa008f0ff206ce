"""Dask's half of the benchmark: the same metrics as ``bench/peer_cluster.py``.

    python bench/peer_dask.py [--json] [--quick] [--only NAME,...]

Equivalents of the Ray-style calls: ``f.remote()`` -> ``client.submit(f, pure=False)``,
``put`` -> ``client.scatter(x, hash=False)``, ``get`` -> ``client.gather``, ``wait`` ->
``distributed.wait``. ``pure=False`` / ``hash=False`` everywhere, so Dask never dedupes.
Actors: ``client.submit(cls, actor=True)`` then ``.result()`` for the proxy, whose method
calls return ``ActorFuture``s; Dask has no kill, so an actor is stopped by cancelling the
future that created it (the scheduler forgets the key, the worker drops the instance).
An actor lives in a worker process, as a Python object; Dask starts no process for it.

Two nodes, for the transfer metric, are the two worker processes of a LocalCluster, each
holding its objects in its own memory; a task is pinned to one with ``workers=[address]``.
The spill metric has no Dask equivalent (see ``small_store_cluster``) and reports n/a, and
so have the job metric (see ``job_cluster``) and the two stream metrics (see ``stream_task``).

Dask has neither placement groups nor a scheduling policy a driver can call on simulated
nodes: the three metrics of those report n/a (see ``group_cluster``, ``policy_simulation``).

The fault metrics' nodes are ``dask worker --no-nanny`` processes started here (a nanny would
restart what the metric kills), with the scheduler's ``worker-ttl`` set to the metrics'
deadline; the head restart has no Dask equivalent (see ``fault_cluster``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from _engine import (
    BULK_TIMEOUT_S,
    FAULT_DEADLINE_S,
    FAULT_TIMEOUT_S,
    GET_TIMEOUT_S,
    NotMeasured,
    main_for,
    process_family,
    signal_processes,
    wait_gone,
)

HOST = "127.0.0.1"
_NO_GROUPS = (
    "Dask has no placement groups: nothing reserves resources on workers ahead of the tasks "
    "(a task's resources= are only checked against each worker's when it is scheduled)"
)
CLUSTER_KWARGS: dict[str, Any] = {
    "n_workers": 2,
    "threads_per_worker": 1,
    "processes": True,
    "host": HOST,
    "dashboard_address": None,
}

_COLD_START = f"""
from dask.distributed import Client, LocalCluster
lc = LocalCluster(**{CLUSTER_KWARGS!r})
client = Client(lc)
try:
    def f():
        return 1 + 1
    print("RESULT " + str(client.submit(f, pure=False).result()), flush=True)
finally:
    client.close()
    lc.close()
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


def _fill_logged(nbytes: int, fill: int, folder: str) -> Any:
    import os

    import numpy as np

    open(os.path.join(folder, f"{fill}-{os.getpid()}-{os.urandom(4).hex()}"), "w").close()
    return np.full(nbytes, fill, dtype=np.uint8)


@dataclass(frozen=True)
class DaskActor:
    """A Dask actor: the future that created it (cancelled to stop it) and its proxy."""

    future: Any  # distributed.Future
    proxy: Any  # distributed.Actor


@dataclass
class DaskNode:
    """A worker process started by ``_DaskFaults.add_node``, known to the scheduler by name."""

    name: str
    proc: subprocess.Popen


class _DaskFaults:
    """The fault metrics' cluster: an in-process scheduler (a LocalCluster, maybe with one
    worker for the "head"), plus ``dask worker --no-nanny`` processes as its other nodes.

    Dask lists no dead workers: a worker is dead once the scheduler has removed it.
    """

    def __init__(self, backend: DaskBackend, scratch: str) -> None:
        self._backend = backend
        self._scratch = scratch
        self._nodes: list[DaskNode] = []
        self._frozen: list[Any] = []
        from distributed.scheduler import heartbeat_interval

        ttl = backend._cluster.scheduler.worker_ttl
        floor = 10 * heartbeat_interval(2)  # what the scheduler applies with 2 workers
        self.setup = (
            f"scheduler worker_ttl={FAULT_DEADLINE_S:g}s, which Dask raises to 10 heartbeat "
            f"intervals ({max(ttl, floor):g} s here) and checks every {ttl:g} s; nodes: dask "
            "worker --no-nanny"
        )

    def _names(self) -> set[str]:
        workers = self._backend._client.scheduler_info(n_workers=-1)["workers"]
        return {str(w.get("name")) for w in workers.values()}

    def add_node(self, num_cpus: float, resources: dict[str, float]) -> DaskNode:
        name = f"fault-node-{len(self._nodes) + 1}"
        folder = os.path.join(self._scratch, name)
        os.mkdir(folder)
        argv = [
            sys.executable, "-m", "distributed.cli.dask_worker",
            self._backend._client.scheduler.address,
            "--name", name, "--nthreads", str(max(1, int(num_cpus))), "--no-nanny",
            "--host", HOST, "--no-dashboard", "--local-directory", folder,
        ]  # fmt: skip
        if resources:
            argv += ["--resources", ",".join(f"{k}={v:g}" for k, v in resources.items())]
        with open(os.path.join(folder, "worker.log"), "wb") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        node = DaskNode(name, proc)
        self._nodes.append(node)
        deadline = time.monotonic() + FAULT_TIMEOUT_S
        while name not in self._names():
            if proc.poll() is not None:
                raise RuntimeError(f"dask worker {name} exited with {proc.returncode} at start")
            if time.monotonic() > deadline:
                raise TimeoutError(f"dask worker {name} did not join in {FAULT_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        return node

    def connect(self, node: DaskNode | None = None) -> None:
        pass  # the client is connected already, and a Dask client sits on no node

    def node_state(self, node: DaskNode) -> str:
        return "alive" if node.name in self._names() else "dead"

    def freeze_node(self, node: DaskNode) -> None:
        procs = process_family([node.proc.pid])
        signal_processes(procs, signal.SIGSTOP)
        self._frozen += procs

    def kill_node(self, node: DaskNode) -> None:
        procs = process_family([node.proc.pid])
        signal_processes(procs, signal.SIGKILL)
        node.proc.wait()
        wait_gone(procs)

    def kill_head(self) -> None:
        raise NotMeasured("Dask's scheduler cannot be started again as the same cluster")

    def restart_head(self) -> None:
        raise NotMeasured("Dask's scheduler cannot be started again as the same cluster")

    def stop(self) -> None:
        """SIGKILL what is frozen, stop the workers by pid (SIGTERM, then SIGKILL)."""
        signal_processes(self._frozen, signal.SIGKILL)
        signal_processes(self._frozen, signal.SIGCONT)
        for node in self._nodes:
            if node.proc.poll() is None:
                node.proc.terminate()
        for node in self._nodes:
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()


async def _call_results(calls: list[Any]) -> list[Any]:
    return [await call for call in calls]


class DaskBackend:
    framework = "dask"
    # client.gather copies the array over TCP from a worker process: never shared memory.
    zero_copy_possible = False

    def __init__(self) -> None:
        self._cluster: Any = None
        self._client: Any = None
        self._workers: dict[str, str] = {}  # "a" / "b" -> worker address

    def version(self) -> str:
        import dask
        import distributed

        return f"{dask.__version__} (distributed {distributed.__version__})"

    def describe(self) -> str:
        own = (
            "two nodes: its 2 workers, tasks pinned with workers=[address]; actors: "
            "submit(cls, actor=True), objects in a worker process, stopped by cancel"
        )
        if self._address is None:
            return f"LocalCluster({CLUSTER_KWARGS}); {own}"
        return f"LocalCluster({CLUSTER_KWARGS}); scheduler {self._address}; {own}"

    _address: str | None = None

    def cold_start_argv(self) -> list[str]:
        return [sys.executable, "-c", _COLD_START]

    def start(self, **cluster_options: Any) -> None:
        from dask.distributed import Client, LocalCluster, wait
        from distributed.actor import BaseActorFuture

        self._wait = wait
        self._actor_future = BaseActorFuture
        self._cluster = LocalCluster(**{**CLUSTER_KWARGS, **cluster_options})
        self._client = Client(self._cluster)
        self._address = self._client.scheduler.address
        workers = self._client.scheduler_info()["workers"]
        off_loopback = [a for a in [self._address, *workers] if f"//{HOST}:" not in a]
        if off_loopback:
            raise RuntimeError(f"dask left loopback: {off_loopback}")

    @contextlib.contextmanager
    def two_node_cluster(self, store_bytes: int, scratch: str) -> Iterator[None]:
        # Dask has no object store to size: a worker keeps results in its own memory (and
        # spills by its memory limit, by default a share of the machine's RAM).
        try:
            self.start(local_directory=scratch)
            a, b = sorted(self._client.scheduler_info()["workers"])
            self._workers = {"a": a, "b": b}
            yield
        finally:
            self._workers = {}
            self.stop()

    def small_store_cluster(self, store_bytes: int, scratch: str) -> Any:
        raise NotMeasured(
            "Dask has no fixed-size object store: a worker keeps objects in its own memory "
            "and spills by thresholds on its whole process memory (memory_limit), so 200 MB "
            "would pause or restart the worker rather than spill"
        )

    def store_paths(self) -> list[str]:
        return []

    def pip_env_task(self, wheel: str, module: str) -> Any:
        raise NotMeasured("Dask has no per-task runtime environments (a pip env is the workers' own, "
                          "set up before they start; the PipInstall plugin installs into every worker at once)")

    def policy_simulation(self, requests: int, nodes: int) -> tuple[int, float, str]:
        raise NotMeasured(
            "Dask's scheduler picks a worker for each task inside the scheduler process, on its "
            "own state of real workers (no lease requests, no policy to drive with simulated nodes)"
        )

    def group_cluster(self, nodes: int, scratch: str) -> Any:
        raise NotMeasured(_NO_GROUPS)

    def create_group(self, bundles: list[dict[str, float]], strategy: str) -> Any:
        raise NotMeasured(_NO_GROUPS)

    def job_cluster(self, scratch: str) -> Any:
        raise NotMeasured(
            "Dask has no job API: nothing takes a command line to run on the cluster and "
            "reports its status (a client program connects to the scheduler itself)"
        )

    @contextlib.contextmanager
    def fault_cluster(
        self, scratch: str, *, head_cpus: float, durable_head: bool
    ) -> Iterator[_DaskFaults]:
        if durable_head:
            raise NotMeasured(
                "Dask's scheduler keeps its state (tasks, futures, workers) in its own memory "
                "only: a scheduler started again is a new, empty cluster"
            )
        faults = None
        try:
            self.start(
                n_workers=1 if head_cpus else 0,
                threads_per_worker=max(1, int(head_cpus)),
                local_directory=scratch,
                # How long a worker may go without a heartbeat (worker-ttl). Dask holds it to
                # at least 10 heartbeat intervals (0.5 s each on a small cluster), and checks
                # every worker_ttl.
                scheduler_kwargs={"worker_ttl": f"{FAULT_DEADLINE_S:g}s"},
            )
            faults = _DaskFaults(self, scratch)
            yield faults
        finally:
            try:
                self.stop()
            finally:
                if faults is not None:
                    faults.stop()

    def stop(self) -> None:
        try:
            if self._client is not None:
                self._client.close()
        finally:
            if self._cluster is not None:
                self._cluster.close()
            self._client = self._cluster = None

    def noop(self) -> Any:
        return self._client.submit(_noop, pure=False)

    def sleep_task(self, seconds: float) -> Any:
        return self._client.submit(_sleep, seconds, pure=False)

    def sum_task(self, ref: Any) -> Any:
        return self._client.submit(_sum, ref, pure=False)

    def fill_task(self, nbytes: int, fill: int, node: str) -> Any:
        return self._client.submit(
            _fill,
            nbytes,
            fill,
            workers=[self._workers[node]],
            allow_other_workers=False,
            pure=False,
        )

    def fill_logged_task(self, nbytes: int, fill: int, node: str, folder: str) -> Any:
        # Pinned by a resource, as in Ray, so that a replacement worker can run it again.
        return self._client.submit(
            _fill_logged, nbytes, fill, folder, resources={node: 1}, pure=False
        )

    def is_ready(self, ref: Any) -> bool:
        return bool(ref.done())

    def probe_task(self, ref: Any, node: str) -> Any:
        return self._client.submit(
            _probe, ref, workers=[self._workers[node]], allow_other_workers=False, pure=False
        )

    def new_actor(self) -> DaskActor:
        # The proxy only exists once the worker has built the instance: this waits for it.
        future = self._client.submit(_NoopActor, actor=True, pure=False)
        return DaskActor(future, future.result(timeout=GET_TIMEOUT_S))

    def actor_noop(self, actor: DaskActor) -> Any:
        return actor.proxy.noop()

    def kill_actor(self, actor: DaskActor) -> None:
        self._client.cancel([actor.future])

    def stream_task(self, n: int, nbytes: int) -> Any:
        raise NotMeasured(
            "Dask has no generator tasks: a task's result reaches the client only once the task "
            "has returned (secede/rejoin or a Queue would be a different program, not the same metric)"
        )

    def put(self, value: Any) -> Any:
        return self._client.scatter(value, hash=False)

    # Refs are Futures, except the ActorFutures of actor calls: those have no gather.
    def get(self, ref: Any) -> Any:
        if isinstance(ref, self._actor_future):
            return ref.result(timeout=GET_TIMEOUT_S)
        return self._client.gather(ref)

    def get_many(self, refs: list[Any]) -> list[Any]:
        if refs and isinstance(refs[0], self._actor_future):
            return self._client.sync(_call_results, refs, callback_timeout=BULK_TIMEOUT_S)
        return self._client.gather(refs)

    def wait_all(self, refs: list[Any]) -> int:
        done, _ = self._wait(refs)
        return len(done)

    def wait_done(self, refs: list[Any]) -> None:
        self._wait(refs)


def main(argv: list[str] | None = None) -> int:
    return main_for(DaskBackend(), argv, prog="peer_dask.py")


if __name__ == "__main__":
    raise SystemExit(main())
