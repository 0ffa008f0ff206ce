"""Single-node microbenchmarks for cluster (``cluster microbenchmark``).

The module has two layers:

* a framework-neutral engine (``METRICS``, ``run_backend``, ``main_for``) that knows how to
  time each metric against any object implementing the small ``Backend`` protocol, and
* ``ClusterBackend``, the adapter for our own public API (``cluster.init``, ``cluster.remote``,
  ``cluster.get``, ``cluster.put``, ``cluster.wait``, ``cluster.shutdown``).

``bench/peer_ray.py`` and ``bench/peer_dask.py`` load this very file by path and plug in their
own backends, so all three frameworks are measured by the same loops, counts and clocks.  Keep
this module importable with the standard library alone: ``cluster`` and ``numpy`` are imported
lazily, inside the functions that need them.

Run it as ``python -m cluster.microbenchmark [--json] [--quick] [--only NAME,...]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MIB = 1 << 20
BIG_BYTES = 100 * MIB  # the "100 MiB" array: 13,107,200 float64 values
GB = 1e9  # throughput is reported in decimal GB/s (100 MiB = 0.105 GB)

# Guards so that a framework that hangs turns into an error entry instead of a stuck run.
GET_TIMEOUT_S = 120.0  # one get of one ref
BULK_TIMEOUT_S = 900.0  # one get of a whole batch (10,000 tasks)
WAIT_TIMEOUT_S = 120.0  # one wait() call on refs that are already finished
COLD_START_TIMEOUT_S = 300.0  # spawn -> result line
COLD_SHUTDOWN_TIMEOUT_S = 120.0  # result line -> child exited (not timed)

RESULT_PREFIX = "RESULT "  # what the cold-start child prints in front of the task result


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool
    description: str
    in_cluster: bool = True  # False: measured in a child process, not the driver's cluster


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
)
METRIC_BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


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
    time_cap_s: float  # one-at-a-time loops stop early past this (and say so in the note)


def counts_for(quick: bool) -> Counts:
    if quick:
        return Counts(1, 100, 1_000, 200, 200, 3, 1_000, 10, 1_000, 20.0)
    return Counts(3, 1_000, 10_000, 2_000, 2_000, 10, 1_000, 100, 10_000, 60.0)


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


# --------------------------------------------------------------------------------------------
# Measurements. Each returns (value, note) and raises on any failure or wrong result.
# --------------------------------------------------------------------------------------------


def _big_array():
    import numpy as np

    return np.ones(BIG_BYTES // 8, dtype=np.float64)


def _cap_note(done: int, wanted: int) -> str:
    return f"{done:,} ops" if done == wanted else f"{done:,} of {wanted:,} ops (time cap hit)"


def _m_cold_start(b: Backend, c: Counts) -> tuple[float, str]:
    argv = b.cold_start_argv()
    times = [spawn_until_result(argv) for _ in range(c.cold_start_runs)]
    value = statistics.median(times)
    if len(times) == 1:
        return value, "1 run"
    return value, f"median of {len(times)} runs: " + ", ".join(f"{t:.2f}" for t in times)


def _m_noop_sync(b: Backend, c: Counts) -> tuple[float, str]:
    for _ in range(20):
        b.get(b.noop())
    n = c.noop_sync
    start = time.perf_counter()
    deadline = start + c.time_cap_s
    done = 0
    while done < n:
        b.get(b.noop())
        done += 1
        if time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
    return done / elapsed, _cap_note(done, n)


def _m_noop_async(b: Backend, c: Counts) -> tuple[float, str]:
    b.get_many([b.noop() for _ in range(min(200, c.noop_async))])
    n = c.noop_async
    start = time.perf_counter()
    refs = [b.noop() for _ in range(n)]
    submitted = time.perf_counter()
    values = b.get_many(refs)
    elapsed = time.perf_counter() - start
    if len(values) != n:
        raise RuntimeError(f"got {len(values)} results for {n} tasks")
    return n / elapsed, f"{n:,} tasks; submit {submitted - start:.2f} s of {elapsed:.2f} s"


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
# The engine.
# --------------------------------------------------------------------------------------------


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def parse_only(text: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> validated names; None -> all metrics."""
    if text is None:
        return None
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [p.strip() for p in parts if p.strip()]
    unknown = [n for n in names if n not in METRIC_BY_NAME]
    if unknown:
        raise ValueError(
            f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRIC_BY_NAME)}"
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
    """Measure the selected metrics (all by default) and return one dict per metric.

    A metric that raises becomes an entry with ``value: None`` and an ``error`` string.
    Cold start runs first, before the driver's own cluster exists, so nothing competes with
    it for the CPUs. On SIGINT (Ctrl-C, or bench/run.py's time limit) the cluster is shut
    down and the metrics measured so far are still returned.
    """
    names = set(METRIC_BY_NAME if only is None else only)
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
        description=f"Single-node microbenchmarks of {framework} (2 worker CPUs).",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--quick", action="store_true", help="divide task counts by 10 (smoke test)"
    )
    parser.add_argument(
        "--only",
        metavar="NAME,...",
        help="comma-separated metric names; known: " + ", ".join(METRIC_BY_NAME),
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
# Our half: the cluster backend.
# --------------------------------------------------------------------------------------------


def _noop() -> None:
    return None


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _sum(array: Any) -> float:
    return float(array.sum())


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


class RayStyleBackend:
    """Drives any framework with Ray's API (``remote``, ``get``, ``put``, ``wait``): ours, Ray.

    ``tasks`` are the plain functions to run remotely (noop, sleep, sum); each caller passes
    its own, defined in a module its workers can import or in ``__main__``.
    """

    framework = ""
    zero_copy_possible = True

    def __init__(self) -> None:
        self._api: Any = None

    def _bind(self, api: Any, noop: Any, sleep: Any, total: Any) -> None:
        self._api = api
        self._noop = api.remote(noop)
        self._sleep = api.remote(sleep)
        self._sum = api.remote(total)

    def stop(self) -> None:
        if self._api is not None:
            self._api.shutdown()
            self._api = None

    def noop(self) -> Any:
        return self._noop.remote()

    def sleep_task(self, seconds: float) -> Any:
        return self._sleep.remote(seconds)

    def sum_task(self, ref: Any) -> Any:
        return self._sum.remote(ref)

    def put(self, value: Any) -> Any:
        return self._api.put(value)

    def get(self, ref: Any) -> Any:
        return self._api.get(ref, timeout=GET_TIMEOUT_S)

    def get_many(self, refs: list[Any]) -> list[Any]:
        return self._api.get(refs, timeout=BULK_TIMEOUT_S)

    def wait_all(self, refs: list[Any]) -> int:
        ready, _ = self._api.wait(refs, num_returns=len(refs), timeout=WAIT_TIMEOUT_S)
        return len(ready)


class ClusterBackend(RayStyleBackend):
    framework = "cluster"

    def version(self) -> str:
        from importlib import metadata

        try:
            return metadata.version("cluster-core")
        except metadata.PackageNotFoundError:
            import cluster

            return str(getattr(cluster, "__version__", "unknown"))

    def describe(self) -> str:
        return "cluster.init(num_cpus=2)"

    def cold_start_argv(self) -> list[str]:
        return [sys.executable, "-c", _CLUSTER_COLD_START]

    def start(self) -> None:
        import cluster

        try:
            cluster.init(num_cpus=2)
        except BaseException:
            cluster.shutdown()  # init may have half-started before it raised
            raise
        self._bind(cluster, _noop, _sleep, _sum)


def run(*, quick: bool = False, only: list[str] | None = None) -> list[dict]:
    """Measure cluster itself; one dict per metric (see ``METRICS`` for the names)."""
    return run_backend(ClusterBackend(), quick=quick, only=parse_only(only))


def main(argv: list[str] | None = None) -> int:
    return main_for(ClusterBackend(), argv, prog="cluster microbenchmark")


if __name__ == "__main__":
    # Run the copy importable as ``cluster.microbenchmark`` so that the task functions pickle
    # by reference (workers import them) rather than as ``__main__`` functions.
    try:
        from cluster import microbenchmark as _importable
    except ImportError:
        _importable = None  # type: ignore[assignment]
    raise SystemExit((_importable.main if _importable is not None else main)())
