"""The benchmark engine that all three halves share: the metrics, and how each is timed.

Most metrics run on one shared single-node cluster of 2 worker CPUs; a few start a cluster of
their own (two nodes on this machine, a node with a small object store, a head serving the
job API, or four nodes for a placement group of 100 bundles) and stop it again, and one runs
no cluster at all (``policy_decisions_per_s``: cluster's scheduling policy in a simulation). The fault metrics (opt-in: ``--only faults``) start clusters of
their own too, and freeze or kill some of their processes (``FaultCluster``).

The engine (``METRICS``, ``run_backend``, ``main_for``) knows how to time each metric against
any object implementing the small ``Backend`` protocol. Each half is a script next to this
module that plugs in its framework's backend: ``peer_cluster.py`` (ours, public API only),
``peer_ray.py`` and ``peer_dask.py``, so all three frameworks are measured by the same loops,
counts and clocks. ``RayStyleBackend`` drives any framework with Ray's API: ours and Ray.

Keep this module importable with the standard library alone (the peers run in environments
without ``cluster``): ``numpy`` and ``psutil`` are imported lazily, inside the functions that
need them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import os
import platform
import queue
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent

MIB = 1 << 20
BIG_BYTES = 100 * MIB  # the "100 MiB" array: 13,107,200 float64 values
GB = 1e9  # throughput is reported in decimal GB/s (100 MiB = 0.105 GB)
MB = 1e6
SPILL_STORE_BYTES = 200 * 10**6  # the object store of spill_peak_mem_gb's node
SPILL_OBJECT_BYTES = 100 * 10**6  # one object put by spill_peak_mem_gb
MEMORY_SAMPLE_S = 0.05  # how often spill_peak_mem_gb samples the cluster's memory
# Untimed pause after killing an actor in actor_create_ms, so that its teardown (a process
# exiting, a worker pool refilling) does not run on the 2 cores during the next creation.
ACTOR_SETTLE_S = 0.2
# job_submit_to_succeeded_s: how often the client asks for a job's status (both frameworks).
JOB_POLL_S = 0.02
JOB_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# The fault metrics: every framework is told to declare a silent node dead after this long.
FAULT_DEADLINE_S = 2.0
FAULT_POLL_S = 0.02  # how often they ask the cluster for its node list (or a task's state)
FAULT_SETTLE_S = 1.0  # untimed: a fresh node runs this long before it is frozen
RECONSTRUCT_OBJECT_BYTES = 10**6  # one result rebuilt by reconstruct_200x1mb_s
POLICY_NODES = 1_000  # simulated nodes of policy_decisions_per_s
# Placement groups: every bundle asks for a hundredth of a CPU.
PG_BUNDLE: dict[str, float] = {"CPU": 0.01}
PG_BUNDLES = 100  # bundles of the group of pg_100_bundles_ready_s ...
PG_NODES = 4  # ... on a cluster of its own of this many nodes of 1 CPU
PG_STORE_BYTES = 150 * MIB  # each of those nodes' object store (ray.cluster_utils' default)
PG_SETTLE_S = 0.5  # untimed, after a 100-bundle group is removed: its bundles go back
PG_RETURN_S = 30.0  # removed groups' CPUs must be back within this (pg_create_remove_per_s)

# Guards so that a framework that hangs turns into an error entry instead of a stuck run.
GET_TIMEOUT_S = 120.0  # one get of one ref
BULK_TIMEOUT_S = 900.0  # one get of a whole batch (10,000 tasks)
WAIT_TIMEOUT_S = 120.0  # one wait() call on refs that are already finished
COLD_START_TIMEOUT_S = 300.0  # spawn -> result line
COLD_SHUTDOWN_TIMEOUT_S = 120.0  # result line -> child exited (not timed)
JOB_TIMEOUT_S = 120.0  # one trivial job: submit -> terminal status
FAULT_TIMEOUT_S = 60.0  # a node to be listed dead, a process to go, a task after a head restart
# head_restart_first_task_s gives up early (with what the head lists) when the driver's node is
# not listed alive this long after the head is back and the task has not returned.
HEAD_REJOIN_S = 5 * FAULT_DEADLINE_S

RESULT_PREFIX = "RESULT "  # what the cold-start child prints in front of the task result


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool
    description: str
    # False: measured outside the shared single-node cluster, in a child process or in a
    # cluster the metric starts and stops itself (before the shared one exists).
    in_cluster: bool = True
    # True: not part of a default run, only run when named (or their group, "faults") in
    # --only; the fault metrics, slow and with processes of their own to kill.
    opt_in: bool = False


METRICS: tuple[Metric, ...] = (
    Metric(
        "cold_start_s",
        "s",
        False,
        "cold start: spawn python, import, start a local 2-CPU cluster, first task result",
        in_cluster=False,
    ),
    Metric("noop_sync_per_s", "tasks/s", True, "no-op tasks one at a time: get(f.remote())"),
    Metric("noop_async_10k_per_s", "tasks/s", True, "10,000 no-op tasks submitted, then fetched"),
    Metric("put_small_per_s", "ops/s", True, "put of a small int"),
    Metric("get_small_per_s", "ops/s", True, "get of a small int (distinct refs, one at a time)"),
    Metric("put_100mb_gbps", "GB/s", True, "put of a 100 MiB numpy array"),
    Metric("get_100mb_gbps", "GB/s", True, "get of a 100 MiB numpy array, same node"),
    Metric(
        "task_100mb_arg_gbps", "GB/s", True, "task taking a 100 MiB array ref, returning its sum"
    ),
    Metric("wait_1000_ready_ms", "ms", False, "wait(num_returns=1000) on 1,000 finished refs"),
    Metric("sleep_1ms_10k_per_s", "tasks/s", True, "10,000 tasks sleeping 1 ms (ideal: 2,000/s)"),
    # The actor metrics come after the task metrics so that the processes actors start and
    # leave behind cannot change the conditions the task metrics have always run under.
    Metric("actor_calls_sync_per_s", "calls/s", True, "actor calls one at a time: get(a.noop())"),
    Metric(
        "actor_calls_async_10k_per_s",
        "calls/s",
        True,
        "10,000 calls to one actor submitted, then fetched",
    ),
    Metric(
        "stream_10k_small_items_per_s",
        "items/s",
        True,
        "a generator task yielding 10,000 small ints, each ref taken with next() and got by the "
        "driver as it streams",
    ),
    Metric(
        "stream_100x10mb_items_per_s",
        "items/s",
        True,
        "a generator task yielding 100 arrays of 10 MB, each got (and checked) by the driver as it streams",
    ),
    Metric(
        "actor_create_ms",
        "ms",
        False,
        "create an actor and get its first call's result (one at a time, each killed after)",
    ),
    Metric(
        "runtime_env_pip_first_s",
        "s",
        False,
        "first task in a pip runtime env of one local wheel (a tiny pure-Python package, "
        "offline): the env made on the node, a worker started in it, the task run",
    ),
    Metric(
        "runtime_env_pip_cached_ms",
        "ms",
        False,
        "a task in that pip runtime env once it exists (median of 20, one at a time)",
    ),
    Metric(
        "transfer_1gb_gbps",
        "GB/s",
        True,
        "two nodes, one machine: a task on node b reading a 1 GB array made on node a",
        in_cluster=False,
    ),
    Metric(
        "spill_peak_mem_gb",
        "GB",
        False,
        "peak memory of driver + cluster (PSS + shared memory) while 1 GB goes through a "
        "200 MB store: put 10 x 100 MB, refs held, then get and check each",
        in_cluster=False,
    ),
    Metric(
        "job_submit_to_succeeded_s",
        "s",
        False,
        "submit a trivial job (python -c \"print('ok')\") to a head's job API and poll its "
        "status until SUCCEEDED (one job at a time)",
        in_cluster=False,
    ),
    Metric(
        "policy_decisions_per_s",
        "decisions/s",
        True,
        "the framework's own scheduling policy deciding 100,000 lease requests over 1,000 "
        "simulated nodes (no processes; each decision applied and checked)",
        in_cluster=False,
    ),
    Metric(
        "pg_100_bundles_ready_s",
        "s",
        False,
        "a placement group of 100 bundles of {CPU: 0.01} (SPREAD) on 4 nodes: create until "
        "ready() is got",
        in_cluster=False,
    ),
    # Last of the shared cluster's metrics: it leaves nothing behind but the groups' records.
    Metric(
        "pg_create_remove_per_s",
        "groups/s",
        True,
        "placement groups of one bundle {CPU: 0.01}, one at a time: create, get(ready()), "
        "remove (Ray publishes ~666/s; the goal is >= 1,000/s)",
    ),
    # Fault metrics (opt-in: --only faults). Each starts a cluster of its own whose nodes
    # declare a silent node dead after FAULT_DEADLINE_S, and kills some of its processes.
    Metric(
        "node_death_detect_s",
        "s",
        False,
        "a node frozen with SIGSTOP (no socket closes), until the cluster lists it dead; "
        "2 s deadline",
        in_cluster=False,
        opt_in=True,
    ),
    Metric(
        "reconstruct_200x1mb_s",
        "s",
        False,
        "SIGKILL the node holding 200 task results of 1 MB; once it is listed dead a "
        "replacement joins; from the kill until all 200 are got (rebuilt) and checked",
        in_cluster=False,
        opt_in=True,
    ),
    Metric(
        "head_restart_first_task_s",
        "s",
        False,
        "SIGKILL the head, start it again (same port, durable metadata): from the restart until "
        "a new task submitted by the connected driver returns",
        in_cluster=False,
        opt_in=True,
    ),
)
METRIC_BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}
DEFAULT_METRICS: tuple[str, ...] = tuple(m.name for m in METRICS if not m.opt_in)
# Names --only takes for a group of metrics.
METRIC_GROUPS: dict[str, tuple[str, ...]] = {
    "faults": tuple(m.name for m in METRICS if m.opt_in),
    "default": DEFAULT_METRICS,
}


@dataclass(frozen=True)
class Counts:
    """How much work each metric does. ``--quick`` divides the task counts by 10."""

    cold_start_runs: int
    noop_sync: int
    noop_async: int
    put_small: int
    get_small: int
    big_reps: int
    wait_refs: int
    wait_calls: int
    sleep_tasks: int
    actor_sync: int  # calls, one at a time
    actor_async: int  # calls submitted at once
    actor_creates: int  # fresh actors, one at a time
    time_cap_s: float  # one-at-a-time loops stop early past this (and say so in the note)
    transfer_bytes: int  # the object moved between nodes by transfer_1gb_gbps
    transfer_reps: int
    spill_objects: int  # how many SPILL_OBJECT_BYTES objects spill_peak_mem_gb puts
    jobs: int  # trivial jobs submitted one at a time by job_submit_to_succeeded_s
    detect_reps: int  # nodes frozen, one after the other, by node_death_detect_s
    reconstruct_objects: int  # results of RECONSTRUCT_OBJECT_BYTES rebuilt (at most 256)
    policy_requests: int  # lease requests decided by policy_decisions_per_s
    pg_ready_reps: int  # 100-bundle groups made, one after the other, by pg_100_bundles_ready_s
    pg_create_remove: int  # groups created and removed by pg_create_remove_per_s


def counts_for(quick: bool) -> Counts:
    """``--quick`` also shrinks the big objects: a 200 MB transfer, 400 MB through the store."""
    if quick:
        return Counts(
            cold_start_runs=1,
            noop_sync=100,
            noop_async=1_000,
            put_small=200,
            get_small=200,
            big_reps=3,
            wait_refs=1_000,
            wait_calls=10,
            sleep_tasks=1_000,
            actor_sync=100,
            actor_async=1_000,
            actor_creates=5,  # not 2: a median of 2 says little
            time_cap_s=20.0,
            transfer_bytes=200 * 10**6,
            transfer_reps=3,
            spill_objects=4,
            jobs=3,
            detect_reps=1,
            reconstruct_objects=20,
            policy_requests=10_000,
            pg_ready_reps=3,
            pg_create_remove=50,
        )
    return Counts(
        cold_start_runs=3,
        noop_sync=1_000,
        noop_async=10_000,
        put_small=2_000,
        get_small=2_000,
        big_reps=10,
        wait_refs=1_000,
        wait_calls=100,
        sleep_tasks=10_000,
        actor_sync=1_000,
        actor_async=10_000,
        actor_creates=20,
        time_cap_s=60.0,
        transfer_bytes=10**9,
        transfer_reps=5,
        spill_objects=10,
        jobs=5,
        detect_reps=3,
        reconstruct_objects=200,
        policy_requests=100_000,
        pg_ready_reps=5,
        pg_create_remove=500,
    )


class NotMeasured(Exception):
    """Raised by a backend for a metric its framework has no natural equivalent of.

    The metric is reported as n/a with the message as its note, not as an error.
    """


class Backend(Protocol):
    """What the engine needs from a framework. Refs are opaque to the engine."""

    framework: str
    # False where a same-node get can never share memory (e.g. Dask's TCP transfer); the
    # result is then never labelled zero-copy whatever its flags say.
    zero_copy_possible: bool

    def version(self) -> str: ...
    def describe(self) -> str: ...
    def cold_start_argv(self) -> list[str]: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def noop(self) -> Any: ...
    def sleep_task(self, seconds: float) -> Any: ...
    def sum_task(self, ref: Any) -> Any: ...
    def put(self, value: Any) -> Any: ...
    def get(self, ref: Any) -> Any: ...
    def get_many(self, refs: list[Any]) -> list[Any]: ...
    def wait_all(self, refs: list[Any]) -> int: ...

    # Actors of one class with a method ``noop()`` that returns None.
    def new_actor(self) -> Any:
        """Create a fresh actor and return its handle (at once where the framework can)."""
        ...

    def actor_noop(self, actor: Any) -> Any:
        """Call ``actor.noop()``; return a ref that ``get`` and ``get_many`` accept."""
        ...

    def pip_env_task(self, wheel: str, module: str) -> Any:
        """A task in runtime env ``{"pip": [wheel]}`` importing ``module``; its ref."""
        raise NotMeasured("no pip runtime envs for tasks")

    def kill_actor(self, actor: Any) -> None:
        """Stop the actor (its process too, where it has one of its own); don't wait."""
        ...

    def stream_task(self, n: int, nbytes: int) -> Any:
        """Start a generator task of ``n`` values (see ``TaskFunctions.stream``); return what
        iterates over their refs as they are yielded. NotMeasured where the framework has no
        generator tasks."""
        ...

    # Metrics with a cluster of their own. Each context manager starts that cluster and
    # connects the driver to it on entry; on exit (also after an error) it disconnects and
    # stops every process it started. In between, the methods above act on that cluster.
    # ``scratch`` is an empty directory for the cluster's session files and spilled objects;
    # the engine removes it afterwards.
    def two_node_cluster(self, store_bytes: int, scratch: str) -> AbstractContextManager[None]:
        """Two nodes on this machine, each with its own object store of ``store_bytes`` and
        one CPU; one offers the custom resource ``"a"``, the other ``"b"``."""
        ...

    def small_store_cluster(self, store_bytes: int, scratch: str) -> AbstractContextManager[None]:
        """One node with 2 CPUs whose object store holds ``store_bytes`` and spills to disk."""
        ...

    def fill_task(self, nbytes: int, fill: int, node: str) -> Any:
        """A task on ``node`` ("a" or "b") returning ``np.full(nbytes, fill, np.uint8)``."""
        ...

    def probe_task(self, ref: Any, node: str) -> Any:
        """A task on ``node`` taking the array ``ref``, returning ``(nbytes, first, last)``."""
        ...

    def wait_done(self, refs: list[Any]) -> None:
        """Block until ``refs`` are finished, without fetching their values to the driver."""
        ...

    def store_paths(self) -> list[str]:
        """Directories holding the object store's shared-memory files that no process may
        map (our store keeps one file per object); empty where the store is one mapping."""
        ...

    def job_cluster(self, scratch: str) -> AbstractContextManager[Any]:
        """A head with 2 CPUs whose job server answers, the driver not connected to it.

        Yields a job client with the methods of Ray's ``JobSubmissionClient`` used here:
        ``submit_job(entrypoint=...) -> id``, ``get_job_status(id)`` (a ``str`` enum, or
        anything whose ``value`` is "PENDING", "RUNNING", "SUCCEEDED", "FAILED" or "STOPPED")
        and ``get_job_logs(id) -> str``."""
        ...

    # The fault metrics.
    def fault_cluster(
        self, scratch: str, *, head_cpus: float, durable_head: bool
    ) -> AbstractContextManager[FaultCluster]:
        """A head on this machine (127.0.0.1 only) offering ``head_cpus`` CPUs, which declares
        a node dead once it has shown no sign of life for ``FAULT_DEADLINE_S``.

        ``durable_head``: the head keeps its state outside its process, on a port fixed for
        the cluster's life, so that ``FaultCluster.restart_head`` can start it again as the
        same cluster. Yields the cluster; the driver connects only through its ``connect``.
        On exit, everything is stopped by pid, frozen processes too."""
        ...

    def fill_logged_task(self, nbytes: int, fill: int, node: str, folder: str) -> Any:
        """``fill_task``, that also creates a file in ``folder`` (shared by every process of
        the machine) named after ``fill``, one per execution."""
        ...

    def is_ready(self, ref: Any) -> bool:
        """Whether the task of ``ref`` has finished; does not block."""
        ...

    # The scheduling policy, without a cluster.
    def policy_simulation(self, requests: int, nodes: int) -> tuple[int, float, str]:
        """Drive the framework's own scheduling policy, in this process, with ``requests``
        lease requests over ``nodes`` simulated nodes, applying and checking each decision;
        returns (decisions, seconds spent deciding, note). Raises if a decision was wrong.
        NotMeasured where the policy is no code a driver can call on a view of its own."""
        raise NotMeasured("no scheduling policy to drive outside the cluster")

    # Placement groups (Ray's ray.util API). A group is opaque to the engine.
    def group_cluster(self, nodes: int, scratch: str) -> AbstractContextManager[None]:
        """A cluster of ``nodes`` nodes of 1 CPU each on this machine (an object store of
        ``PG_STORE_BYTES`` each), the driver connected to the first, all of them listed alive."""
        ...

    def create_group(self, bundles: list[dict[str, float]], strategy: str) -> Any:
        """``placement_group(bundles, strategy=strategy)``: returns at once."""
        raise NotMeasured("no placement groups")

    def group_ready(self, group: Any) -> Any:
        """``get(group.ready())``: blocks until every bundle is reserved; what it resolved to."""
        ...

    def group_nodes(self, group: Any, bundles: int) -> list[str]:
        """The node of each bundle, as the group table lists it ("": not placed)."""
        ...

    def remove_group(self, group: Any) -> None:
        """``remove_placement_group(group)``."""
        ...

    def available_cpu(self) -> float:
        """The cluster's free CPUs, as ``available_resources()`` lists them."""
        ...


class FaultCluster(Protocol):
    """A cluster whose nodes the fault metrics freeze and kill. Nodes are opaque handles."""

    # How this framework was told of the deadline (and, for a durable head, where it keeps
    # its state), in words: it ends the metric's note.
    setup: str

    def add_node(self, num_cpus: float, resources: dict[str, float]) -> Any:
        """Start a node that joins the cluster; return it once the cluster lists it alive."""
        ...

    def connect(self, node: Any | None = None) -> None:
        """Connect the driver, attached to ``node`` (by default, the head's node): the
        Backend's task methods then run on this cluster."""
        ...

    def node_state(self, node: Any) -> str:
        """How the cluster lists ``node`` to the driver: "alive", "dead" or "missing"."""
        ...

    def freeze_node(self, node: Any) -> None:
        """SIGSTOP every process of ``node`` (its daemon and workers), so that none of its
        sockets closes."""
        ...

    def kill_node(self, node: Any) -> None:
        """SIGKILL every process of ``node``, frozen or not, and return once all are gone."""
        ...

    def kill_head(self) -> None:
        """SIGKILL every process of the head; return once all are gone."""
        ...

    def restart_head(self) -> None:
        """Start the head again, on the same port and with the same durable state and
        credentials (``durable_head``); return once it is up."""
        ...


# --------------------------------------------------------------------------------------------
# Measurements. Each returns (value, note) and raises on any failure or wrong result.
# --------------------------------------------------------------------------------------------


def _big_array():
    import numpy as np

    return np.ones(BIG_BYTES // 8, dtype=np.float64)


def _cap_note(done: int, wanted: int, what: str = "ops") -> str:
    if done == wanted:
        return f"{done:,} {what}"
    return f"{done:,} of {wanted:,} {what} (time cap hit)"


def _check_none(value: Any) -> None:
    if value is not None:
        raise RuntimeError(f"a no-op returned {value!r}, expected None")


def _one_at_a_time(
    b: Backend, call: Callable[[], Any], n: int, c: Counts, what: str = "ops"
) -> tuple[float, str]:
    """Rate of ``get(call())`` in a loop: ``n`` times, or fewer if the time cap passes."""
    for _ in range(20):
        _check_none(b.get(call()))
    start = time.perf_counter()
    deadline = start + c.time_cap_s
    done = 0
    while done < n:
        _check_none(b.get(call()))
        done += 1
        if time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
    return done / elapsed, _cap_note(done, n, what)


def _submit_then_get(b: Backend, call: Callable[[], Any], n: int, what: str) -> tuple[float, str]:
    """Rate of ``n`` calls submitted at once and then fetched with one ``get_many``."""
    b.get_many([call() for _ in range(min(200, n))])
    start = time.perf_counter()
    refs = [call() for _ in range(n)]
    submitted = time.perf_counter()
    values = b.get_many(refs)
    elapsed = time.perf_counter() - start
    if len(values) != n:
        raise RuntimeError(f"got {len(values)} results for {n} {what}")
    for value in values:
        _check_none(value)
    return n / elapsed, f"{n:,} {what}; submit {submitted - start:.2f} s of {elapsed:.2f} s"


def _m_cold_start(b: Backend, c: Counts) -> tuple[float, str]:
    argv = b.cold_start_argv()
    times = [spawn_until_result(argv) for _ in range(c.cold_start_runs)]
    value = statistics.median(times)
    if len(times) == 1:
        return value, "1 run"
    return value, f"median of {len(times)} runs: " + ", ".join(f"{t:.2f}" for t in times)


def _m_noop_sync(b: Backend, c: Counts) -> tuple[float, str]:
    return _one_at_a_time(b, b.noop, c.noop_sync, c)


def _m_noop_async(b: Backend, c: Counts) -> tuple[float, str]:
    return _submit_then_get(b, b.noop, c.noop_async, "tasks")


def _m_put_small(b: Backend, c: Counts) -> tuple[float, str]:
    warm = [b.put(i) for i in range(20)]
    del warm
    n = c.put_small
    refs = []
    start = time.perf_counter()
    deadline = start + c.time_cap_s
    for i in range(n):
        refs.append(b.put(i))
        if time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
    done = len(refs)
    del refs
    return done / elapsed, _cap_note(done, n)


def _m_get_small(b: Backend, c: Counts) -> tuple[float, str]:
    n = c.get_small
    offset = 1_000_000  # distinct values, not the ints put by other metrics
    warm = [b.put(offset - 1 - i) for i in range(20)]
    for ref in warm:
        b.get(ref)
    refs = [b.put(offset + i) for i in range(n)]
    values = []
    start = time.perf_counter()
    deadline = start + c.time_cap_s
    for ref in refs:
        values.append(b.get(ref))
        if time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
    done = len(values)
    if values != list(range(offset, offset + done)):
        raise RuntimeError("get returned wrong values")
    return done / elapsed, _cap_note(done, n)


def _m_put_big(b: Backend, c: Counts) -> tuple[float, str]:
    arr = _big_array()
    ref = b.put(arr)  # warm-up (first touch of the store's memory)
    del ref
    times = []
    for _ in range(c.big_reps):
        gc.collect()
        start = time.perf_counter()
        ref = b.put(arr)
        times.append(time.perf_counter() - start)
        del ref
    med = statistics.median(times)
    return BIG_BYTES / GB / med, f"median of {len(times)}: {med * 1e3:.1f} ms per put"


def _m_get_big(b: Backend, c: Counts) -> tuple[float, str]:
    arr = _big_array()
    expected = float(arr.size)
    ref = b.put(arr)
    del arr
    first = b.get(ref)
    if first.nbytes != BIG_BYTES or float(first.sum()) != expected:
        raise RuntimeError("get returned a wrong array")
    owndata = bool(first.flags.owndata)
    writeable = bool(first.flags.writeable)
    zero_copy = b.zero_copy_possible and not owndata and not writeable
    del first
    times = []
    for _ in range(c.big_reps):
        gc.collect()
        start = time.perf_counter()
        got = b.get(ref)
        times.append(time.perf_counter() - start)
        del got
    del ref
    med = statistics.median(times)
    kind = "zero-copy" if zero_copy else "copy"
    note = (
        f"{kind} (owndata={owndata}, writeable={writeable}); "
        f"median of {len(times)}: {med * 1e3:.3f} ms per get"
    )
    return BIG_BYTES / GB / med, note


def _m_task_big_arg(b: Backend, c: Counts) -> tuple[float, str]:
    arr = _big_array()
    expected = float(arr.size)
    ref = b.put(arr)
    del arr
    if b.get(b.sum_task(ref)) != expected:  # warm-up; also checks the answer
        raise RuntimeError("sum task returned a wrong value")
    times = []
    for _ in range(c.big_reps):
        gc.collect()
        start = time.perf_counter()
        total = b.get(b.sum_task(ref))
        times.append(time.perf_counter() - start)
        if total != expected:
            raise RuntimeError("sum task returned a wrong value")
    del ref
    med = statistics.median(times)
    return BIG_BYTES / GB / med, f"median of {len(times)}: {med * 1e3:.1f} ms per call"


def _m_wait_ready(b: Backend, c: Counts) -> tuple[float, str]:
    refs = [b.noop() for _ in range(c.wait_refs)]
    b.get_many(refs)
    for _ in range(3):
        b.wait_all(refs)
    times = []
    for _ in range(c.wait_calls):
        start = time.perf_counter()
        ready = b.wait_all(refs)
        times.append(time.perf_counter() - start)
        if ready != len(refs):
            raise RuntimeError(f"wait returned {ready} of {len(refs)} finished refs as ready")
    med = statistics.median(times)
    return med * 1e3, f"{len(refs):,} refs; median of {len(times)} calls"


def _m_sleep(b: Backend, c: Counts) -> tuple[float, str]:
    b.get_many([b.sleep_task(0.001) for _ in range(20)])
    n = c.sleep_tasks
    start = time.perf_counter()
    refs = [b.sleep_task(0.001) for _ in range(n)]
    values = b.get_many(refs)
    elapsed = time.perf_counter() - start
    if len(values) != n:
        raise RuntimeError(f"got {len(values)} results for {n} tasks")
    rate = n / elapsed
    return rate, f"{n:,} tasks; {rate / 2000:.0%} of the 2-CPU ideal"


@contextlib.contextmanager
def _actor(b: Backend) -> Iterator[Any]:
    """A fresh actor, killed on exit."""
    actor = b.new_actor()
    try:
        yield actor
    finally:
        b.kill_actor(actor)


def _m_actor_sync(b: Backend, c: Counts) -> tuple[float, str]:
    with _actor(b) as actor:
        return _one_at_a_time(b, lambda: b.actor_noop(actor), c.actor_sync, c, "calls")


def _m_actor_async(b: Backend, c: Counts) -> tuple[float, str]:
    with _actor(b) as actor:
        return _submit_then_get(b, lambda: b.actor_noop(actor), c.actor_async, "calls")


def _actor_round_trip(b: Backend) -> float:
    """Seconds from asking for a fresh actor until its first call's result is back."""
    start = time.perf_counter()
    with _actor(b) as actor:
        _check_none(b.get(b.actor_noop(actor)))
        elapsed = time.perf_counter() - start
    time.sleep(ACTOR_SETTLE_S)
    return elapsed


STREAM_BIG_BYTES = 10 * 10**6  # each value of stream_100x10mb_items_per_s


def _stream(b: Backend, n: int, nbytes: int) -> tuple[float, str]:
    """Time a generator task of ``n`` values from submission until the driver got the last."""
    b.get_many(list(b.stream_task(3, nbytes)))  # warm-up (untimed): the worker and its code
    start = time.perf_counter()
    got = 0
    for i, ref in enumerate(b.stream_task(n, nbytes)):
        value = b.get(ref)
        first, size = (value, 0) if nbytes == 0 else (int(value[0]), value.nbytes)
        if first != i % 251 or size != nbytes:
            raise RuntimeError(f"stream value {i} is wrong: first {first}, {size} bytes")
        del value
        got += 1
    elapsed = time.perf_counter() - start
    if got != n:
        raise RuntimeError(f"the generator yielded {got} values, not {n}")
    return n / elapsed, f"{n} items in {elapsed:.2f} s"


def _m_stream_small(b: Backend, c: Counts) -> tuple[float, str]:
    return _stream(b, c.noop_async, 0)


def _m_stream_big(b: Backend, c: Counts) -> tuple[float, str]:
    return _stream(b, 10 if c.noop_async < 10_000 else 100, STREAM_BIG_BYTES)


def _import_module(name: str) -> str:
    return __import__(name).__name__


def _tiny_wheel(folder: str, name: str) -> str:
    """A one-module pure-Python wheel, written as a zip (no build backend, no index)."""
    import base64
    import hashlib
    import zipfile

    info = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": b"VALUE = 1\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
              f"{len(data)}" for path, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    path = os.path.join(folder, f"{name}-1.0-py3-none-any.whl")
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


_PIP_ENV: dict[str, str] = {}  # the wheel runtime_env_pip_first_s made, for the cached figure


def _m_pip_env_first(b: Backend, c: Counts) -> tuple[float, str]:
    folder = tempfile.mkdtemp(prefix="bench-wheel-")
    name = f"bench_tiny_{os.getpid()}_{int(time.time())}"
    wheel = _tiny_wheel(folder, name)
    start = time.perf_counter()
    if b.get(b.pip_env_task(wheel, name)) != name:
        raise RuntimeError("the task in the pip env did not import the wheel's module")
    elapsed = time.perf_counter() - start
    _PIP_ENV.update(wheel=wheel, name=name)
    return elapsed, "one local wheel, a fresh env (its name is new each run)"


def _m_pip_env_cached(b: Backend, c: Counts) -> tuple[float, str]:
    if not _PIP_ENV:
        _m_pip_env_first(b, c)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        b.get(b.pip_env_task(_PIP_ENV["wheel"], _PIP_ENV["name"]))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, f"median of 20; min {min(times) * 1e3:.1f} ms"


def _m_actor_create(b: Backend, c: Counts) -> tuple[float, str]:
    # One at a time, so the figure is a latency: creating many at once would measure how
    # many processes the framework starts in parallel on 2 cores instead.
    for _ in range(2):
        _actor_round_trip(b)
    times: list[float] = []
    deadline = time.perf_counter() + c.time_cap_s
    while len(times) < c.actor_creates:
        times.append(_actor_round_trip(b))
        if time.perf_counter() > deadline:
            break
    med = statistics.median(times)
    note = (
        f"{_cap_note(len(times), c.actor_creates, 'actors')}, one at a time, each killed "
        f"after its first call and {ACTOR_SETTLE_S:g} s let pass (untimed); median "
        f"{med * 1e3:.1f} ms, min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}"
    )
    return med * 1e3, note


@contextlib.contextmanager
def _own_cluster_scope(prefix: str) -> Iterator[tuple[str, ProcessTree]]:
    """A scratch directory and this process's tree, for a metric with a cluster of its own.

    On exit, whatever that cluster left running below this process is stopped by pid.
    """
    tree = ProcessTree()
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as scratch:
        try:
            yield scratch, tree
        finally:
            leftovers = tree.stop_leftovers()
            if leftovers:
                _log(f"killed processes that outlived the cluster: {', '.join(leftovers)}")


def _check_probe(probed: Any, nbytes: int, fill: int) -> None:
    if tuple(probed) != (nbytes, fill, fill):
        raise RuntimeError(f"probe returned {probed!r}, expected {(nbytes, fill, fill)!r}")


def _transfer_once(b: Backend, nbytes: int, fill: int) -> float:
    """Seconds for a task on node b to read a fresh array made on node a (not timed: making it)."""
    ref = b.fill_task(nbytes, fill, "a")
    b.wait_done([ref])
    start = time.perf_counter()
    probed = b.get(b.probe_task(ref, "b"))
    elapsed = time.perf_counter() - start
    _check_probe(probed, nbytes, fill)
    return elapsed


def _m_transfer(b: Backend, c: Counts) -> tuple[float, str]:
    n = c.transfer_bytes
    # Room for three objects per store: a freed object may still be there when the next lands.
    with _own_cluster_scope("bench-xfer-") as (scratch, tree), b.two_node_cluster(3 * n, scratch):
        # Untimed: start the workers of both nodes, then move one full-size object, so the
        # first timed read pays neither worker start-up nor the store's first touch of memory.
        _transfer_once(b, 1 << 20, 255)
        _transfer_once(b, n, 254)
        tree.pids()  # remember the cluster's processes, for the teardown
        times = []
        for rep in range(c.transfer_reps):
            gc.collect()
            times.append(_transfer_once(b, n, rep))  # a fresh object: nothing cached on b
    med = statistics.median(times)
    note = (
        f"{n / GB:g} GB uint8 array made by a task on node a, read by a task on node b "
        f"(submit -> result); median of {len(times)}: "
        + ", ".join(f"{t:.2f}" for t in times)
        + " s"
    )
    return n / GB / med, note


def _m_spill_peak_mem(b: Backend, c: Counts) -> tuple[float, str]:
    import numpy as np

    k, size = c.spill_objects, SPILL_OBJECT_BYTES
    with (
        _own_cluster_scope("bench-spill-") as (scratch, tree),
        b.small_store_cluster(SPILL_STORE_BYTES, scratch),
    ):
        _warm_up(b)  # the cluster's workers are up, as in any cluster that has run a task
        sampler = MemorySampler(tree, b.store_paths())
        idle = sampler.read(full=True)
        with sampler:
            start = time.perf_counter()
            refs = []
            for i in range(k):
                array = np.full(size, i, dtype=np.uint8)
                refs.append(b.put(array))
                del array
            put_done = time.perf_counter()
            for i, ref in enumerate(refs):
                got = b.get(ref)
                if got.nbytes != size or int(got.min()) != i or int(got.max()) != i:
                    raise RuntimeError(f"object {i} came back wrong")
                del got
            end = time.perf_counter()
        del refs
    peak = sampler.peak
    assert peak is not None
    interval_ms = sampler.elapsed / max(sampler.samples - 1, 1) * 1e3
    note = (
        f"peak {peak.total / GB:.2f} GB = {peak.process / GB:.2f} GB PSS without shared memory "
        f"of {peak.processes} processes (driver and its descendants; exact at every "
        f"{FULL_READING_EVERY}th sample, RssAnon changes between) + {peak.shared / GB:.2f} GB "
        "of distinct shared-memory "
        "files they map or the store holds (allocated size); "
        f"idle {idle.total / GB:.2f} GB; spill time {end - start:.1f} s (put {k} x "
        f"{size / MB:.0f} MB {put_done - start:.1f} s, get + check {end - put_done:.1f} s); "
        f"{sampler.samples} samples, one per {interval_ms:.0f} ms"
    )
    if sampler.unsized:
        note += f"; {sampler.unsized} shared mappings could not be sized (not root?)"
    return peak.total / GB, note


def job_entrypoint() -> str:
    """The trivial job, the same command line for every framework: this very Python."""
    return f"{shlex.quote(sys.executable)} -c \"print('ok')\""


def _job_status(client: Any, job_id: str) -> str:
    status = client.get_job_status(job_id)
    return str(getattr(status, "value", status))


def _run_job(client: Any, entrypoint: str, timeout: float = JOB_TIMEOUT_S) -> float:
    """Seconds from just before ``submit_job`` until the client sees the job SUCCEEDED.

    The status is asked for right after the submit, then every ``JOB_POLL_S``. The log is
    checked afterwards (untimed): the job must have printed "ok".
    """
    start = time.perf_counter()
    job_id = client.submit_job(entrypoint=entrypoint)
    deadline = start + timeout
    while True:
        status = _job_status(client, job_id)
        if status in JOB_TERMINAL:
            break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout:.0f} s")
        time.sleep(JOB_POLL_S)
    elapsed = time.perf_counter() - start
    logs = client.get_job_logs(job_id)
    if status != "SUCCEEDED":
        tail = "\n".join(str(logs).strip().splitlines()[-10:])
        raise RuntimeError(f"job {job_id} ended {status}; the end of its log:\n{tail}")
    if "ok" not in str(logs).split():
        raise RuntimeError(f"job {job_id} SUCCEEDED but its log lacks 'ok': {str(logs)[-300:]!r}")
    return elapsed


def _m_job_submit(b: Backend, c: Counts) -> tuple[float, str]:
    entrypoint = job_entrypoint()
    times: list[float] = []
    with _own_cluster_scope("bench-job-") as (scratch, tree), b.job_cluster(scratch) as client:
        try:
            # Untimed: the first job pays for whatever the job server starts lazily.
            _run_job(client, entrypoint, timeout=max(JOB_TIMEOUT_S, 300.0))
            tree.pids()
            deadline = time.perf_counter() + c.time_cap_s
            while len(times) < c.jobs:
                times.append(_run_job(client, entrypoint))
                if time.perf_counter() > deadline:
                    break
        finally:
            # Remember the cluster's processes (also after a failed job) before it is stopped:
            # some (Ray's dashboard modules) leave this tree once their parent is gone.
            tree.pids()
    med = statistics.median(times)
    note = (
        f"{_cap_note(len(times), c.jobs, 'jobs')} of `python -c \"print('ok')\"`, one at a "
        f"time, after 1 untimed; status polled every {JOB_POLL_S * 1e3:.0f} ms; "
        f"median of {len(times)}: " + ", ".join(f"{t:.3f}" for t in times) + " s"
    )
    return med, note


def _wait_listed(
    fc: FaultCluster, node: Any, state: str, timeout: float = FAULT_TIMEOUT_S
) -> float:
    """Ask for the node list every ``FAULT_POLL_S`` until it shows ``node`` as ``state``;
    returns the ``perf_counter`` at which it first did."""
    deadline = time.perf_counter() + timeout
    while True:
        seen = fc.node_state(node)
        now = time.perf_counter()
        if seen == state:
            return now
        if now > deadline:
            raise TimeoutError(
                f"the node is still listed {seen!r}, not {state!r}, after {timeout:.0f} s"
            )
        time.sleep(FAULT_POLL_S)


def _m_node_death_detect(b: Backend, c: Counts) -> tuple[float, str]:
    times: list[float] = []
    with (
        _own_cluster_scope("bench-detect-") as (scratch, tree),
        b.fault_cluster(scratch, head_cpus=1, durable_head=False) as fc,
    ):
        fc.connect()
        for _ in range(c.detect_reps):
            node = fc.add_node(1, {})
            try:
                time.sleep(FAULT_SETTLE_S)  # several heartbeats: a node like any other
                tree.pids()
                start = time.perf_counter()
                fc.freeze_node(node)
                times.append(_wait_listed(fc, node, "dead") - start)
            finally:
                fc.kill_node(node)
    med = statistics.median(times)
    note = (
        f"{len(times)} node(s) of 1 CPU, one at a time, each frozen (SIGSTOP of every process "
        f"of the node) {FAULT_SETTLE_S:g} s after it joined; timed from the SIGSTOP until the "
        f"driver's node list (asked every {FAULT_POLL_S * 1e3:.0f} ms) shows it dead: "
        + ", ".join(f"{t:.2f}" for t in times)
        + f" s; {fc.setup}"
    )
    return med, note


def _m_reconstruct(b: Backend, c: Counts) -> tuple[float, str]:
    n, size = c.reconstruct_objects, RECONSTRUCT_OBJECT_BYTES
    if not 0 < n <= 256:
        raise ValueError(f"reconstruct_objects={n}: each result is filled with its own byte")
    with _own_cluster_scope("bench-rebuild-") as (scratch, tree):
        runs = os.path.join(scratch, "runs")  # one file per execution of a task
        os.mkdir(runs)
        with b.fault_cluster(scratch, head_cpus=1, durable_head=False) as fc:
            fc.connect()
            doomed = fc.add_node(2, {"x": 2})
            refs = [b.fill_logged_task(size, i, "x", runs) for i in range(n)]
            b.wait_done(refs)  # made and stored on node x, not fetched to the driver
            tree.pids()
            start = time.perf_counter()
            fc.kill_node(doomed)
            killed = time.perf_counter()
            dead = _wait_listed(fc, doomed, "dead")
            fc.add_node(2, {"x": 2})
            up = time.perf_counter()
            tree.pids()
            values = b.get_many(refs)
            end = time.perf_counter()
            if len(values) != n:
                raise RuntimeError(f"got {len(values)} results for {n} tasks")
            for i, value in enumerate(values):
                if value.nbytes != size or int(value.min()) != i or int(value.max()) != i:
                    raise RuntimeError(f"result {i} came back wrong after the rebuild")
            del values
        runs_per_task = collections.Counter(name.split("-")[0] for name in os.listdir(runs))
    once = [fill for fill in range(n) if runs_per_task[str(fill)] < 2]
    if once:
        raise RuntimeError(
            f"{len(once)} of {n} results were not rebuilt (their tasks ran once): a copy "
            "outlived the killed node, so this did not measure a reconstruction"
        )
    extra = sum(runs_per_task.values()) - 2 * n
    again = (
        f"every task ran again ({extra} more run(s) than that)" if extra else "every task ran again"
    )
    note = (
        f"{n} results of {size / MB:g} MB made by tasks pinned to node x (2 CPUs, custom "
        "resource x), waited for without fetching; timed from the SIGKILL of every process of "
        f"x until all {n} are back in the driver and checked: processes gone "
        f"{killed - start:.2f} s, listed dead {dead - start:.2f} s, a replacement with the "
        f"same resources up {up - start:.2f} s (started once x was listed dead), get "
        f"{end - up:.2f} s; {again}; {fc.setup}"
    )
    return end - start, note


def _listing_of(fc: FaultCluster, node: Any) -> str:
    """How the cluster lists ``node``, in words, for an error message."""
    try:
        state = fc.node_state(node)
    except Exception as exc:
        return f"unknown (listing the nodes raised {exc!r})"
    return "missing from the node list" if state == "missing" else f"listed {state}"


def _await_after_restart(b: Backend, fc: FaultCluster, node: Any, ref: Any, up: float) -> None:
    """Block until the task of ``ref``, submitted after the head came back, has finished.

    Gives up early, saying what the head lists, if the driver's node is not listed alive
    ``HEAD_REJOIN_S`` after the head came back and the task has not returned by then."""
    rejoin_checked = False
    while True:
        try:
            if b.is_ready(ref):
                return
        except Exception as exc:
            raise RuntimeError(
                f"the task submitted after the head restart failed: {exc!r}"
            ) from exc
        now = time.perf_counter()
        if not rejoin_checked and now - up > HEAD_REJOIN_S:
            rejoin_checked = True
            listing = _listing_of(fc, node)
            if listing != "listed alive":
                raise RuntimeError(
                    "the cluster did not survive the restart of its head: "
                    f"{HEAD_REJOIN_S:g} s after the head came back, the driver's node is "
                    f"{listing} and the task submitted since has not returned"
                )
        if now - up > FAULT_TIMEOUT_S:
            raise TimeoutError(
                f"the task submitted after the head restart has not returned after "
                f"{FAULT_TIMEOUT_S:.0f} s (the driver's node is {_listing_of(fc, node)})"
            )
        time.sleep(FAULT_POLL_S)


def _m_head_restart(b: Backend, c: Counts) -> tuple[float, str]:
    with (
        _own_cluster_scope("bench-headft-") as (scratch, tree),
        b.fault_cluster(scratch, head_cpus=0, durable_head=True) as fc,
    ):
        node = fc.add_node(1, {})
        fc.connect(node)
        _check_none(b.get(b.noop()))  # untimed: a worker is up on the node
        tree.pids()
        fc.kill_head()
        start = time.perf_counter()
        fc.restart_head()
        up = time.perf_counter()
        tree.pids()
        ref = b.noop()
        _await_after_restart(b, fc, node, ref, up)
        _check_none(b.get(ref))
        end = time.perf_counter()
    note = (
        "a head with no CPUs and a node of 1 CPU, the driver attached to the node; every "
        "process of the head SIGKILLed, then the head started again at once on the same port "
        "with the same durable state; timed from that start until a no-op task submitted by "
        f"the same driver returns: head up {up - start:.2f} s, then the task "
        f"{end - up:.2f} s; {fc.setup}"
    )
    return end - start, note


def _m_policy(b: Backend, c: Counts) -> tuple[float, str]:
    decisions, seconds, note = b.policy_simulation(c.policy_requests, POLICY_NODES)
    if decisions != c.policy_requests:
        raise RuntimeError(f"{decisions} decisions for {c.policy_requests} requests")
    return decisions / seconds, note


def _group_round_trip(b: Backend, bundles: list[dict[str, float]], strategy: str) -> Any:
    """Create a group, get its ready(), and check that it resolved to the group."""
    group = b.create_group(bundles, strategy)
    got = b.group_ready(group)
    if getattr(got, "id", None) != group.id:
        raise RuntimeError(f"ready() of {group!r} resolved to {got!r}, not to the group")
    return group


def _m_pg_bundles_ready(b: Backend, c: Counts) -> tuple[float, str]:
    bundles = [dict(PG_BUNDLE) for _ in range(PG_BUNDLES)]
    times: list[float] = []
    spread: list[int] = []
    with _own_cluster_scope("bench-pg-") as (scratch, tree), b.group_cluster(PG_NODES, scratch):
        b.remove_group(_group_round_trip(b, [dict(PG_BUNDLE)], "SPREAD"))  # untimed warm-up
        tree.pids()
        for _ in range(c.pg_ready_reps):
            time.sleep(PG_SETTLE_S)  # untimed: what the last removal set going is done
            start = time.perf_counter()
            group = _group_round_trip(b, bundles, "SPREAD")
            times.append(time.perf_counter() - start)
            placed = b.group_nodes(group, PG_BUNDLES)
            b.remove_group(group)
            if not all(placed):
                missing = sum(1 for node in placed if not node)
                raise RuntimeError(f"the group was ready with {missing} bundle(s) not placed")
            spread.append(len(set(placed)))
        tree.pids()
    med = statistics.median(times)
    note = (
        f"{PG_BUNDLES} bundles of {{CPU: {PG_BUNDLE['CPU']:g}}}, SPREAD, on {PG_NODES} nodes "
        f"of 1 CPU; create until get(pg.ready()) returns, each group removed after (untimed); "
        f"median of {len(times)}: " + ", ".join(f"{t:.3f}" for t in times) + " s; bundles on "
        + ", ".join(str(n) for n in spread) + f" of the {PG_NODES} nodes"
    )
    return med, note


def _wait_cpu_back(b: Backend, wanted: float) -> float:
    """Seconds until the cluster lists ``wanted`` CPUs free again; raises after PG_RETURN_S."""
    start = time.perf_counter()
    while True:
        free = b.available_cpu()
        if free >= wanted - 1e-6:
            return time.perf_counter() - start
        if time.perf_counter() - start > PG_RETURN_S:
            raise RuntimeError(
                f"{free:g} CPUs free {PG_RETURN_S:g} s after the last group was removed, "
                f"{wanted:g} before the first: the removed groups did not give their bundles back"
            )
        time.sleep(0.05)


def _m_pg_create_remove(b: Backend, c: Counts) -> tuple[float, str]:
    bundles = [dict(PG_BUNDLE)]
    for _ in range(5):  # untimed warm-up (NotMeasured here for a framework without groups)
        b.remove_group(_group_round_trip(b, bundles, "PACK"))
    before = b.available_cpu()
    n = c.pg_create_remove
    start = time.perf_counter()
    deadline = start + c.time_cap_s
    done = 0
    while done < n:
        b.remove_group(_group_round_trip(b, bundles, "PACK"))
        done += 1
        if time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
    back = _wait_cpu_back(b, before)
    rate = done / elapsed
    note = (
        f"{_cap_note(done, n, 'groups')} of one bundle {{CPU: {PG_BUNDLE['CPU']:g}}} (PACK), "
        "one at a time on the shared single-node cluster: placement_group, get(pg.ready()), "
        f"remove_placement_group; {rate / 1000:.0%} of the goal of 1,000/s (Ray publishes "
        f"about 666/s); all {before:g} free CPUs listed again {back:.2f} s after the last removal"
    )
    return rate, note


MEASURE: dict[str, Callable[[Backend, Counts], tuple[float, str]]] = {
    "cold_start_s": _m_cold_start,
    "noop_sync_per_s": _m_noop_sync,
    "noop_async_10k_per_s": _m_noop_async,
    "put_small_per_s": _m_put_small,
    "get_small_per_s": _m_get_small,
    "put_100mb_gbps": _m_put_big,
    "get_100mb_gbps": _m_get_big,
    "task_100mb_arg_gbps": _m_task_big_arg,
    "wait_1000_ready_ms": _m_wait_ready,
    "sleep_1ms_10k_per_s": _m_sleep,
    "actor_calls_sync_per_s": _m_actor_sync,
    "actor_calls_async_10k_per_s": _m_actor_async,
    "stream_10k_small_items_per_s": _m_stream_small,
    "stream_100x10mb_items_per_s": _m_stream_big,
    "actor_create_ms": _m_actor_create,
    "runtime_env_pip_first_s": _m_pip_env_first,
    "runtime_env_pip_cached_ms": _m_pip_env_cached,
    "transfer_1gb_gbps": _m_transfer,
    "spill_peak_mem_gb": _m_spill_peak_mem,
    "job_submit_to_succeeded_s": _m_job_submit,
    "node_death_detect_s": _m_node_death_detect,
    "reconstruct_200x1mb_s": _m_reconstruct,
    "head_restart_first_task_s": _m_head_restart,
    "policy_decisions_per_s": _m_policy,
    "pg_100_bundles_ready_s": _m_pg_bundles_ready,
    "pg_create_remove_per_s": _m_pg_create_remove,
}


# --------------------------------------------------------------------------------------------
# Cold start: a child process, timed from spawn until its result line is read.
# --------------------------------------------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(
    proc: subprocess.Popen,
    *,
    first_signal: int = signal.SIGTERM,
    grace_s: float = 15.0,
    drain_s: float = 10.0,
) -> bool:
    """Stop a child started with ``start_new_session=True`` and what it left in its group.

    The group id is the child's own pid, so only processes it started are reached. Returns
    True if processes outlived the child and had to be signalled.
    """
    for sig, grace in ((first_signal, grace_s), (signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    # What outlived the child (e.g. a helper still finishing its own shutdown): give it
    # drain_s to go by itself, then stop it.
    deadline = time.monotonic() + drain_s
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftovers = False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_alive(proc.pid):
            break
        leftovers = True
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(3.0)
    return leftovers


def spawn_until_result(
    argv: list[str],
    *,
    timeout: float = COLD_START_TIMEOUT_S,
    shutdown_timeout: float = COLD_SHUTDOWN_TIMEOUT_S,
) -> float:
    """Seconds from spawning ``argv`` until it prints a ``RESULT ...`` line.

    The child's shutdown afterwards is waited for (so it cannot steal CPU from what runs
    next) but is not part of the figure.
    """
    lines: queue.Queue[bytes | None] = queue.Queue()
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        try:

            def pump() -> None:
                assert proc.stdout is not None
                for raw in proc.stdout:
                    lines.put(raw)
                lines.put(None)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            elapsed = None
            deadline = start + timeout
            while elapsed is None:
                remaining = deadline - time.perf_counter()
                try:
                    line = lines.get(timeout=max(remaining, 0.0))
                except queue.Empty:
                    raise TimeoutError(f"no result line within {timeout:.0f} s") from None
                if line is None:
                    break
                if line.startswith(RESULT_PREFIX.encode()):
                    elapsed = time.perf_counter() - start
            if elapsed is None:
                rc = proc.wait(timeout=30)
                err.seek(0)
                tail = err.read().decode(errors="replace").strip().splitlines()[-15:]
                raise RuntimeError(
                    f"child exited with {rc} before printing a result; stderr tail:\n"
                    + "\n".join(tail)
                )
            try:
                proc.wait(timeout=shutdown_timeout)
            except subprocess.TimeoutExpired:
                _log(f"cold-start child {proc.pid} did not exit within {shutdown_timeout:.0f} s")
            reader.join(timeout=5)
            return elapsed
        finally:
            if stop_process_group(proc):
                _log(f"stopped processes that outlived cold-start child {proc.pid}")
            if proc.stdout is not None:
                proc.stdout.close()


# --------------------------------------------------------------------------------------------
# Processes and memory of a cluster started by this process (needs psutil).
# --------------------------------------------------------------------------------------------


def _helpers_of_this_process() -> set[int]:
    """Children that serve this process for its whole life, not a cluster: multiprocessing's
    resource tracker (started by Dask's LocalCluster, reused by the next one)."""
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    pid = getattr(getattr(tracker, "_resource_tracker", None), "_pid", None)
    return {pid} if isinstance(pid, int) else set()


class ProcessTree:
    """This process and its descendants; remembers every descendant it has seen."""

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._root = psutil.Process()
        self._before = {self._key(p) for p in self._children()}
        self._seen: dict[tuple[int, float], Any] = {}
        self._lock = threading.Lock()

    def _key(self, proc: Any) -> tuple[int, float]:
        try:
            return proc.pid, proc.create_time()
        except self._psutil.Error:
            return proc.pid, 0.0

    def _children(self) -> list[Any]:
        try:
            return self._root.children(recursive=True)
        except self._psutil.Error:
            return []

    def pids(self) -> list[int]:
        """The root and its live descendants (those started since are remembered)."""
        children = self._children()
        with self._lock:
            for proc in children:
                key = self._key(proc)
                if key not in self._before:
                    self._seen.setdefault(key, proc)
        return [self._root.pid, *(p.pid for p in children)]

    def stop_leftovers(self, grace_s: float = 15.0) -> list[str]:
        """Kill, by pid, the descendants seen since creation still alive after ``grace_s``.

        A cluster's processes may leave this tree when their parent exits first, so the ones
        seen earlier are checked too. Returns "pid (command line)" of those it killed.
        """
        self.pids()
        helpers = _helpers_of_this_process()
        deadline = time.monotonic() + grace_s
        while True:
            alive = [p for p in self._seen.values() if p.pid not in helpers and self._running(p)]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        killed = []
        for proc in alive:
            with contextlib.suppress(self._psutil.Error):
                killed.append(f"{proc.pid} ({' '.join(proc.cmdline())[:80]})")
                proc.kill()  # psutil checks the pid still names the same process
        return killed

    def _running(self, proc: Any) -> bool:
        try:
            return proc.is_running() and proc.status() != self._psutil.STATUS_ZOMBIE
        except self._psutil.Error:
            return False


def process_family(pids: Sequence[int]) -> list[Any]:
    """``psutil.Process`` objects of ``pids`` and of all their live descendants, now."""
    import psutil

    found: dict[int, Any] = {}
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            found.setdefault(proc.pid, proc)
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
        except psutil.Error:
            continue  # gone already
    return list(found.values())


def signal_processes(procs: Sequence[Any], sig: int) -> None:
    """Send ``sig`` to each process (psutil checks that its pid still names the same one)."""
    import psutil

    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def wait_gone(procs: Sequence[Any], timeout: float = FAULT_TIMEOUT_S) -> None:
    """Return once every process has exited; a zombie counts as exited (it holds no socket
    or memory any more, and the reaping of orphans is up to PID 1)."""
    import psutil

    deadline = time.monotonic() + timeout
    left = list(procs)
    while left:
        alive = []
        for proc in left:
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        left = alive
        if left and time.monotonic() > deadline:
            raise TimeoutError(
                f"pids {[p.pid for p in left]} still run {timeout:.0f} s after SIGKILL"
            )
        if left:
            time.sleep(0.005)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """Ports free on ``host`` right now (all held until all are chosen, so distinct)."""
    import socket

    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind((host, 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass(frozen=True)
class MemoryReading:
    """The memory of a process tree and its shared-memory object store, in bytes.

    ``process``: the sum over the processes of their PSS (proportional set size, from
    /proc/PID/smaps_rollup) minus its shared-memory part (``Pss_Shmem``). ``shared``: the
    allocated size (st_blocks) of each distinct tmpfs / memfd / SysV file that one of the
    processes maps or that lies in the store's directories, counted once whether mapped or not
    (a store's pages stay in RAM when nobody maps them). Page cache of spill files on disk
    is not counted.
    """

    process: int
    shared: int
    processes: int

    @property
    def total(self) -> int:
        return self.process + self.shared


_ROLLUP_RE = re.compile(rb"^(Pss|Pss_Shmem):\s+(\d+) kB", re.M)
_RSS_ANON_RE = re.compile(rb"^RssAnon:\s+(\d+) kB", re.M)
_SHM_NAMES = ("/memfd:", "/dev/zero", "/SYSV")  # shmem without a mounted tmpfs path
FULL_READING_EVERY = 10  # readings; at 50 ms intervals, an exact PSS every 0.5 s


def _tmpfs_mounts() -> tuple[set[tuple[int, int]], list[str]]:
    """(device numbers, mount points) of the tmpfs file systems, from /proc/self/mountinfo."""
    devices, points = set(), []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            parts = fields.split()
            if rest.split()[0] == "tmpfs":
                major, minor = parts[2].split(":")
                devices.add((int(major), int(minor)))
                points.append(parts[4].replace("\\040", " "))
    return devices, points


def _pss_without_shmem(pid: int) -> int | None:
    """PSS minus its shared-memory part, in bytes; None for a zombie (no memory left)."""
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        fields = dict(_ROLLUP_RE.findall(f.read()))
    if b"Pss" not in fields:
        return None
    if b"Pss_Shmem" not in fields:
        raise RuntimeError("needs a Linux kernel whose smaps_rollup reports Pss_Shmem")
    return (int(fields[b"Pss"]) - int(fields[b"Pss_Shmem"])) * 1024


def _rss_anon(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as f:
        found = _RSS_ANON_RE.search(f.read())
    return int(found.group(1)) * 1024 if found else 0


class MemoryMeter:
    """Reads the memory of a ``ProcessTree`` (see ``MemoryReading`` for what is counted).

    smaps_rollup costs the kernel a walk of the page tables (1-7 ms per process of a Ray
    cluster), too much for every 50 ms. So a *full* reading, every ``FULL_READING_EVERY``
    readings, looks at the tree again, reads each process's PSS and finds the shared-memory
    files it maps (/proc/PID/maps); a *light* reading in between takes each process's last
    PSS plus the change of its RssAnon since (the private memory it touched or freed; a
    cheap counter in /proc/PID/status), and stats the shared-memory files already found and
    the store directories again.
    """

    def __init__(self, tree: ProcessTree, store_paths: Sequence[str]) -> None:
        self.tree = tree
        self.store_paths = list(store_paths)
        self._devices, points = _tmpfs_mounts()
        self._markers = [(p.rstrip("/") + "/").encode() for p in points] + [
            n.encode() for n in _SHM_NAMES
        ]
        # pid -> (PSS without shmem, RssAnon) at the last full reading
        self._base: dict[int, tuple[int, int]] = {}
        # (major, minor, inode) of each mapped shared-memory file -> paths that stat it
        self._mapped: dict[tuple[int, int, int], list[str]] = {}
        self._readings = 0
        self.unsized = 0  # mapped files that could not be stat'ed (map_files needs root)

    def read(self, *, full: bool = False) -> MemoryReading:
        full = full or self._readings % FULL_READING_EVERY == 0
        self._readings += 1
        process = self._read_full() if full else self._read_light()
        files: dict[tuple[int, int, int], int] = {}
        for key, candidates in self._mapped.items():
            size = self._allocated(candidates, count_unsized=full)
            if size is not None:
                files[key] = size
        for folder in self.store_paths:
            for dirpath, _, names in os.walk(folder):
                for name in names:
                    with contextlib.suppress(OSError):
                        st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
                        key = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
                        files.setdefault(key, st.st_blocks * 512)
        return MemoryReading(process, sum(files.values()), len(self._base))

    def _read_full(self) -> int:
        self._base = {}
        self._mapped = {}
        for pid in self.tree.pids():
            try:
                pss = _pss_without_shmem(pid)
                anon = _rss_anon(pid)
                self._scan_maps(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited meanwhile
            if pss is not None:
                self._base[pid] = (pss, anon)
        return sum(pss for pss, _ in self._base.values())

    def _read_light(self) -> int:
        total = 0
        for pid, (pss, anon_then) in list(self._base.items()):
            try:
                anon = _rss_anon(pid)
            except (FileNotFoundError, ProcessLookupError):
                del self._base[pid]  # exited
                continue
            total += max(0, pss + anon - anon_then)
        return total

    def _scan_maps(self, pid: int) -> None:
        with open(f"/proc/{pid}/maps", "rb") as f:
            maps = f.read()
        if not any(marker in maps for marker in self._markers):
            return  # most processes map no shared-memory file at all
        for line in maps.splitlines():
            # address perms offset major:minor inode path
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or not any(parts[5].startswith(m) for m in self._markers):
                continue
            major, minor = (int(x, 16) for x in parts[3].split(b":"))
            key = (major, minor, int(parts[4]))
            name = parts[5].decode(errors="replace")
            if (major, minor) not in self._devices and not name.startswith(_SHM_NAMES):
                continue
            paths = self._mapped.setdefault(key, [])
            if not name.endswith(" (deleted)") and name not in paths:
                paths.insert(0, name)
            paths.append(f"/proc/{pid}/map_files/{parts[0].decode()}")

    def _allocated(self, candidates: Sequence[str], *, count_unsized: bool) -> int | None:
        """Bytes allocated to a file (st_blocks), by the first of its paths that stats."""
        denied = False
        for path in candidates:
            try:
                return os.stat(path).st_blocks * 512
            except PermissionError:
                denied = True
            except OSError:
                continue  # unmapped or removed meanwhile
        if denied and count_unsized:
            self.unsized += 1
        return None


class MemorySampler(MemoryMeter):
    """Reads the memory every ``MEMORY_SAMPLE_S`` in a background thread while in a ``with``
    block, keeping the reading with the largest total."""

    def __init__(self, tree: ProcessTree, store_paths: Sequence[str]) -> None:
        super().__init__(tree, store_paths)
        self.peak: MemoryReading | None = None
        self.samples = 0
        self.elapsed = 0.0  # from the first sample to the last
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._error: BaseException | None = None

    def _sample(self, full: bool = False) -> None:
        reading = self.read(full=full)
        self.samples += 1
        if self.peak is None or reading.total > self.peak.total:
            self.peak = reading

    def _run(self) -> None:
        try:
            while True:
                started = time.monotonic()
                self._sample()
                if self._stop.wait(max(0.0, MEMORY_SAMPLE_S - (time.monotonic() - started))):
                    return
        except BaseException as exc:
            self._error = exc

    def __enter__(self) -> MemorySampler:
        self._started = time.monotonic()
        self._sample(full=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._error is not None:
            raise RuntimeError(f"memory sampling failed: {self._error!r}") from self._error
        self._sample(full=True)
        self.elapsed = time.monotonic() - self._started


@contextlib.contextmanager
def scoped_env(**values: str | None) -> Iterator[None]:
    """Set (or, for None, unset) environment variables for the block; restore them after."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --------------------------------------------------------------------------------------------
# The engine.
# --------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_only(text: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> validated names, a group (``faults``, ``default``)
    standing for its metrics; None -> None (the default metrics)."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    names: list[str] = []
    for part in (p.strip() for p in parts):
        for name in METRIC_GROUPS.get(part, (part,) if part else ()):
            if name not in names:
                names.append(name)
    unknown = [n for n in names if n not in METRIC_BY_NAME]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRIC_BY_NAME)}, "
            f"or a group: {', '.join(METRIC_GROUPS)}"
        )
    return names


def _entry(metric: Metric, value: float | None, note: str, error: str | None = None) -> dict:
    out: dict[str, Any] = {
        "name": metric.name,
        "value": value,
        "unit": metric.unit,
        "higher_is_better": metric.higher_is_better,
        "note": note,
    }
    if error is not None:
        out["error"] = error
    return out


def _measure(backend: Backend, metric: Metric, counts: Counts) -> dict:
    tag = f"{backend.framework}: {metric.name}"
    _log(f"{tag} ...")
    start = time.perf_counter()
    try:
        value, note = MEASURE[metric.name](backend, counts)
    except NotMeasured as exc:
        _log(f"{tag} = n/a ({exc})")
        return _entry(metric, None, f"n/a: {exc}")
    except Exception as exc:
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        _log(f"{tag} FAILED after {time.perf_counter() - start:.1f} s: {detail}")
        traceback.print_exc(file=sys.stderr)
        return _entry(metric, None, "", error=detail)
    finally:
        gc.collect()
    _log(
        f"{tag} = {format_value(value)} {metric.unit} ({note}) "
        f"[{time.perf_counter() - start:.1f} s]"
    )
    return _entry(metric, float(value), note)


def _warm_up(backend: Backend) -> None:
    """Untimed: bring the workers up before anything is measured."""
    backend.get_many([backend.noop() for _ in range(100)])
    for _ in range(10):
        backend.get(backend.noop())


def _run_in_cluster(
    backend: Backend, metrics: list[Metric], counts: Counts, results: dict[str, dict]
) -> None:
    try:
        try:
            _log(f"{backend.framework}: starting a local cluster")
            t0 = time.perf_counter()
            backend.start()
            _warm_up(backend)
            _log(f"{backend.framework}: up and warm in {time.perf_counter() - t0:.1f} s")
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            traceback.print_exc(file=sys.stderr)
            for metric in metrics:
                results[metric.name] = _entry(
                    metric, None, "", error=f"cluster failed to start: {detail}"
                )
            return
        for metric in metrics:
            results[metric.name] = _measure(backend, metric, counts)
    finally:  # also after a failed start: init may have half-started
        try:
            backend.stop()
        except Exception:
            _log(f"{backend.framework}: shutdown raised")
            traceback.print_exc(file=sys.stderr)


def run_backend(
    backend: Backend, *, quick: bool = False, only: Sequence[str] | None = None
) -> list[dict]:
    """Measure the selected metrics (``DEFAULT_METRICS``: all but the opt-in ones, by
    default) and return one dict per metric.

    A metric that raises becomes an entry with ``value: None`` and an ``error`` string.
    Cold start runs first, before the driver's own cluster exists, so nothing competes with
    it for the CPUs. On SIGINT (Ctrl-C, or bench/run.py's time limit) the cluster is shut
    down and the metrics measured so far are still returned.
    """
    names = set(DEFAULT_METRICS if only is None else only)
    selected = [m for m in METRICS if m.name in names]
    counts = counts_for(quick)
    results: dict[str, dict] = {}
    try:
        for metric in selected:
            if not metric.in_cluster:
                results[metric.name] = _measure(backend, metric, counts)
        in_cluster = [m for m in selected if m.in_cluster]
        if in_cluster:
            _run_in_cluster(backend, in_cluster, counts, results)
    except KeyboardInterrupt:
        _log(f"{backend.framework}: interrupted; reporting what was measured so far")
    for metric in selected:
        if metric.name not in results:
            results[metric.name] = _entry(metric, None, "", error="interrupted")
    return [results[m.name] for m in selected]


def format_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value != value:  # NaN
        return "nan"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def format_table(payload: dict) -> str:
    rows = [("metric", "value", "unit", "note")]
    for r in payload["results"]:
        if r.get("error"):
            rows.append((r["name"], "ERROR", r["unit"], r["error"].splitlines()[-1][:120]))
        else:
            rows.append((r["name"], format_value(r["value"]), r["unit"], r["note"]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    head = f"{payload['framework']} {payload['version']} (python {payload['python']})"
    lines = [head, ""]
    for i, row in enumerate(rows):
        lines.append(
            f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}"
        )
        if i == 0:
            lines.append("-" * (sum(widths) + 6 + len("note")))
    return "\n".join(lines)


def _numpy_version() -> str | None:
    try:
        import numpy
    except ImportError:
        return None
    return numpy.__version__


def build_arg_parser(prog: str, framework: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            f"Microbenchmarks of {framework}: a single-node cluster of 2 worker CPUs, plus "
            "clusters of their own for the two-node transfer, the small-store spill, the "
            "job API, a placement group on 4 nodes and (opt-in: --only faults) node and head "
            "faults, and a simulation of the scheduling policy (cluster only)."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="divide task counts by 10; 200 MB transfer, 400 MB spilled (smoke test)",
    )
    parser.add_argument(
        "--only",
        metavar="NAME,...",
        help="comma-separated metric names, or groups: faults (opt-in, not run by default), "
        "default; known: " + ", ".join(METRIC_BY_NAME),
    )
    return parser


def main_for(backend: Backend, argv: list[str] | None, prog: str) -> int:
    """Command-line entry shared by our half and the peers' halves."""
    parser = build_arg_parser(prog, backend.framework)
    args = parser.parse_args(argv)
    try:
        only = parse_only(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    results = run_backend(backend, quick=args.quick, only=only)
    try:
        version = backend.version()
    except Exception as exc:
        version = f"unknown ({exc!r})"
    try:
        details = backend.describe()
    except Exception as exc:
        details = f"unknown ({exc!r})"
    payload = {
        "framework": backend.framework,
        "version": version,
        "python": platform.python_version(),
        "numpy": _numpy_version(),
        "quick": args.quick,
        "details": details,
        "results": results,
    }
    if args.json:
        # One line, so a reader can pick it out even if a worker printed to stdout too.
        print(json.dumps(payload), flush=True)
    else:
        print(format_table(payload), flush=True)
    return 1 if any(r.get("error") for r in results) else 0


# --------------------------------------------------------------------------------------------
# Backends for frameworks with Ray's API (ours and Ray).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFunctions:
    """The plain functions, and the actor class, that a Ray-style backend runs remotely.

    Each half passes its own, defined in its ``__main__``: the framework ships them by value
    (Ray's workers could not import them from this module, which is not installed).
    """

    noop: Callable[[], None]
    sleep: Callable[[float], None]
    total: Callable[[Any], float]  # the sum of an array
    fill: Callable[[int, int], Any]  # np.full(nbytes, fill, dtype=np.uint8)
    probe: Callable[[Any], tuple[int, int, int]]  # (nbytes, first, last) of a uint8 array
    actor: type  # a class with no constructor arguments whose method noop() returns None
    # fill, after creating an empty file named "<fill>-<pid>-<random>" in a folder
    fill_logged: Callable[[int, int, str], Any]
    # a generator: n values, value i being i % 251 (nbytes 0) or np.full(nbytes, i % 251, uint8)
    stream: Callable[[int, int], Any]


class RayStyleBackend:
    """Drives any framework with Ray's API (``remote``, ``get``, ``wait``, ``kill``...): ours, Ray."""

    framework = ""
    zero_copy_possible = True
    # Extra keyword arguments for ``wait`` in ``wait_done`` (Ray: don't pull to the driver).
    wait_done_options: dict[str, Any] = {}

    def __init__(self, tasks: TaskFunctions) -> None:
        self._tasks = tasks
        self._api: Any = None

    def _bind(self, api: Any) -> None:
        self._api = api
        self._noop = api.remote(self._tasks.noop)
        self._sleep = api.remote(self._tasks.sleep)
        self._sum = api.remote(self._tasks.total)
        self._fill = api.remote(self._tasks.fill)
        self._probe = api.remote(self._tasks.probe)
        self._actor_class = api.remote(self._tasks.actor)
        self._fill_logged = api.remote(self._tasks.fill_logged)
        self._stream = api.remote(self._tasks.stream)  # (a generator: streamed, Ray's default)

    def stop(self) -> None:
        if self._api is not None:
            self._api.shutdown()
            self._api = None

    def noop(self) -> Any:
        return self._noop.remote()

    def pip_env_task(self, wheel: str, module: str) -> Any:
        task = self._api.remote(runtime_env={"pip": [wheel]})(_import_module)
        return task.remote(module)

    def sleep_task(self, seconds: float) -> Any:
        return self._sleep.remote(seconds)

    def sum_task(self, ref: Any) -> Any:
        return self._sum.remote(ref)

    def fill_task(self, nbytes: int, fill: int, node: str) -> Any:
        return self._fill.options(resources={node: 1}).remote(nbytes, fill)

    def probe_task(self, ref: Any, node: str) -> Any:
        return self._probe.options(resources={node: 1}).remote(ref)

    def fill_logged_task(self, nbytes: int, fill: int, node: str, folder: str) -> Any:
        return self._fill_logged.options(resources={node: 1}).remote(nbytes, fill, folder)

    def new_actor(self) -> Any:
        return self._actor_class.remote()

    def stream_task(self, n: int, nbytes: int) -> Any:
        return self._stream.remote(n, nbytes)

    def actor_noop(self, actor: Any) -> Any:
        return actor.noop.remote()

    def kill_actor(self, actor: Any) -> None:
        self._api.kill(actor)

    def put(self, value: Any) -> Any:
        return self._api.put(value)

    def get(self, ref: Any) -> Any:
        return self._api.get(ref, timeout=GET_TIMEOUT_S)

    def get_many(self, refs: list[Any]) -> list[Any]:
        return self._api.get(refs, timeout=BULK_TIMEOUT_S)

    def wait_all(self, refs: list[Any]) -> int:
        ready, _ = self._api.wait(refs, num_returns=len(refs), timeout=WAIT_TIMEOUT_S)
        return len(ready)

    def is_ready(self, ref: Any) -> bool:
        ready, _ = self._api.wait([ref], num_returns=1, timeout=0, **self.wait_done_options)
        return bool(ready)

    def wait_done(self, refs: list[Any]) -> None:
        ready, _ = self._api.wait(
            refs, num_returns=len(refs), timeout=GET_TIMEOUT_S, **self.wait_done_options
        )
        if len(ready) != len(refs):
            raise TimeoutError(f"{len(refs) - len(ready)} tasks unfinished after {GET_TIMEOUT_S} s")

    # Placement groups: ray.util's API, the same in both.
    def create_group(self, bundles: list[dict[str, float]], strategy: str) -> Any:
        return self._api.util.placement_group(bundles, strategy=strategy)

    def group_ready(self, group: Any) -> Any:
        return self._api.get(group.ready(), timeout=GET_TIMEOUT_S)

    def group_nodes(self, group: Any, bundles: int) -> list[str]:
        placed = self._api.util.placement_group_table(group)["bundles_to_node_id"]
        return [str(placed.get(i) or placed.get(str(i)) or "") for i in range(bundles)]

    def remove_group(self, group: Any) -> None:
        self._api.util.remove_placement_group(group)

    def available_cpu(self) -> float:
        return float(self._api.available_resources().get("CPU", 0.0))

    def _wait_alive(self, nodes: int, timeout: float = 60.0) -> None:
        """Until the driver's node list shows ``nodes`` nodes alive."""
        deadline = time.monotonic() + timeout
        while True:
            alive = sum(1 for node in self._api.nodes() if node["Alive"])
            if alive >= nodes:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{alive} of {nodes} nodes alive after {timeout:.0f} s")
            time.sleep(0.05)
