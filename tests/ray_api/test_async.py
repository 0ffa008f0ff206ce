"""Async Ray: ``await ref`` and ``ref.future()`` in drivers and async actors, concurrency groups
(``concurrency_groups=`` and ``@cluster.method(concurrency_group=)``) in async and threaded
actors, cancelling an async actor's call, and the warning for a blocking get on an event loop.

(max_concurrency alone: tests/test_e2e_actors.py.)

A held call waits until the test creates its gate file. Its argument is an :class:`Arrival`:
unpickled on the actor's worker (before the call's group lets it run) it leaves a directory, so
the test knows every call has reached the worker before it checks how many run at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import textwrap
import time
from pathlib import Path

import pytest

import cluster
from cluster.exceptions import TaskCancelledError


@cluster.remote
def plus_one(x: int) -> int:
    return x + 1


@cluster.remote
def _fails() -> float:
    return 1 / 0


@cluster.remote
def held(i: int, gate: str) -> int:
    while not os.path.exists(gate):
        time.sleep(0.01)
    return i


class Arrival:
    """A call's argument that becomes ``None`` on the worker, leaving the directory ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple:
        return os.makedirs, (self.path,)


class _Counts:
    """How many calls of each group run now, and the most there ever were (any thread)."""

    def __init__(self) -> None:
        import collections
        import threading

        self.lock = threading.Lock()
        self.inside: collections.Counter = collections.Counter()
        self.peak: collections.Counter = collections.Counter()

    def enter(self, group: str) -> None:
        with self.lock:
            self.inside[group] += 1
            self.peak[group] = max(self.peak[group], self.inside[group])

    def leave(self, group: str) -> None:
        with self.lock:
            self.inside[group] -= 1

    def seen(self) -> tuple[dict, dict]:
        with self.lock:
            return {k: n for k, n in self.inside.items() if n}, dict(self.peak)


@cluster.remote(concurrency_groups={"io": 2, "compute": 1})
class AsyncGroups:
    """Each call counts itself in as ``label`` (the group it should run in) until the gate opens."""

    def __init__(self, gate: str) -> None:
        self.gate = gate
        self.counts = _Counts()

    async def _hold(self, label: str) -> str:
        self.counts.enter(label)
        try:
            while not os.path.exists(self.gate):
                await asyncio.sleep(0.01)
        finally:
            self.counts.leave(label)
        return label

    @cluster.method(concurrency_group="io")
    async def io(self, label: str, arrival: None) -> str:
        return await self._hold(label)

    @cluster.method(concurrency_group="compute")
    async def compute(self, label: str, arrival: None) -> str:
        return await self._hold(label)

    async def plain(self, label: str, arrival: None) -> str:
        return await self._hold(label)

    async def seen(self) -> tuple[dict, dict]:
        return self.counts.seen()


@cluster.remote(concurrency_groups={"io": 2, "probe": 1})
class ThreadGroups:
    def __init__(self, gate: str) -> None:
        self.gate = gate
        self.counts = _Counts()

    def _hold(self, label: str) -> str:
        self.counts.enter(label)
        try:
            while not os.path.exists(self.gate):
                time.sleep(0.01)
        finally:
            self.counts.leave(label)
        return label

    @cluster.method(concurrency_group="io")
    def io(self, label: str, arrival: None) -> str:
        return self._hold(label)

    def plain(self, label: str, arrival: None) -> str:
        return self._hold(label)

    @cluster.method(concurrency_group="probe")  # (answers while the other groups are full)
    def seen(self) -> tuple[dict, dict]:
        return self.counts.seen()


def _run_groups(actor, calls: list[tuple], limits: dict, tmp_path: Path, e2e) -> None:
    """Submit ``calls`` ((method, group option or None, label)), wait until all reached the worker
    and each group is full, check that no group ever ran more than its limit, then let them go."""
    arrived = tmp_path / "arrived"
    arrived.mkdir()
    refs = []
    for i, (method, group, label) in enumerate(calls):
        bound = getattr(actor, method)
        if group is not None:
            bound = bound.options(concurrency_group=group)
        refs.append(bound.remote(label, Arrival(arrived / str(i))))

    def full() -> bool:
        inside, _ = cluster.get(actor.seen.remote(), timeout=60)
        return len(os.listdir(arrived)) == len(calls) and inside == limits

    e2e.wait_until(full, timeout=60, what=f"every call at the worker and its groups full ({limits})")
    _, peak = cluster.get(actor.seen.remote(), timeout=60)
    assert peak == limits, f"at most {peak} ran at once per group; the limits are {limits}"
    (tmp_path / "gate").touch()
    assert cluster.get(refs, timeout=60) == [label for _, _, label in calls]
    _, peak = cluster.get(actor.seen.remote(), timeout=60)
    assert peak == limits, f"at most {peak} ran at once per group; the limits are {limits}"


def test_await_ref_and_ref_future_in_a_driver(shared_cluster):
    async def main() -> list:
        return [await plus_one.remote(i) for i in range(3)] + [await asyncio.wait_for(plus_one.remote(10), 60)]

    assert asyncio.run(main()) == [1, 2, 3, 11]
    future = plus_one.remote(41).future()
    assert isinstance(future, concurrent.futures.Future) and future.result(timeout=60) == 42
    big = cluster.put(b"y" * 1_000_000)  # a stored value: loaded off the runtime's thread
    assert asyncio.run(asyncio.wait_for(_awaited(big), 60)) == 1_000_000
    with pytest.raises(ZeroDivisionError):
        _fails.remote().future().result(timeout=60)


async def _awaited(ref) -> int:
    return len(await ref)


def test_an_async_actor_awaits_100_refs_at_once_and_still_answers(shared_cluster, tmp_path):
    gate = str(tmp_path / "gate")

    @cluster.remote
    class Awaiter:
        def __init__(self) -> None:
            self.waiting = 0

        async def gather(self, refs: list) -> list:
            async def one(ref):
                self.waiting += 1
                try:
                    return await ref
                finally:
                    self.waiting -= 1

            return await asyncio.gather(*(one(ref) for ref in refs))

        async def waiting_now(self) -> int:
            return self.waiting

        async def wait_for(self, refs: list, timeout: float) -> str:
            try:
                await asyncio.wait_for(refs[0], timeout)
            except TimeoutError:
                return "timed out"
            return "ready"

    awaiter = Awaiter.remote()
    refs = [held.remote(i, gate) for i in range(100)]
    gathered = awaiter.gather.remote(refs)
    deadline = time.monotonic() + 60
    while cluster.get(awaiter.waiting_now.remote(), timeout=60) < 100:  # all 100 at once, and the
        assert time.monotonic() < deadline  # actor still answers other calls meanwhile
    assert cluster.get(awaiter.wait_for.remote(refs[:1], 0.2), timeout=60) == "timed out"
    open(gate, "w").close()
    assert cluster.get(gathered, timeout=120) == list(range(100))
    assert cluster.get(awaiter.wait_for.remote(refs[:1], 60), timeout=60) == "ready"


def test_each_concurrency_group_of_an_async_actor_runs_up_to_its_own_limit(shared_cluster, tmp_path, e2e):
    actor = AsyncGroups.remote(str(tmp_path / "gate"))
    calls = ([("io", None, "io")] * 4 + [("compute", None, "compute")] * 2
             + [("io", "compute", "compute")]  # a call put in another group by .options
             + [("plain", None, "default")] * 3)  # the default group: max_concurrency (1000 for async)
    _run_groups(actor, calls, {"io": 2, "compute": 1, "default": 3}, tmp_path, e2e)
    cluster.kill(actor)


def test_concurrency_groups_of_a_threaded_actor_and_its_default_group(shared_cluster, tmp_path, e2e):
    actor = ThreadGroups.remote(str(tmp_path / "gate"))
    calls = [("io", None, "io")] * 3 + [("plain", None, "default")] * 3  # default group: max_concurrency 1
    _run_groups(actor, calls, {"io": 2, "default": 1}, tmp_path, e2e)
    cluster.kill(actor)


def test_a_concurrency_group_the_actor_does_not_define_is_refused(shared_cluster):
    @cluster.remote(concurrency_groups={"io": 1})
    class Misplaced:
        @cluster.method(concurrency_group="gpu")
        async def run(self) -> int:
            return 1

    with pytest.raises(ValueError, match=r"Misplaced.run is in concurrency group 'gpu', which Misplaced does "
                                         r"not define \(its groups: 'io'\)"):
        Misplaced.remote()
    actor = Misplaced.options(concurrency_groups={"io": 1, "gpu": 1}).remote()
    assert cluster.get(actor.run.remote(), timeout=60) == 1
    with pytest.raises(ValueError, match=r"this actor has no concurrency group 'nope' \(its groups: 'io', 'gpu'\)"):
        cluster.get(actor.run.options(concurrency_group="nope").remote(), timeout=60)
    with pytest.raises(cluster.exceptions.ConfigError, match="concurrency group 'io' must have a positive integer"):
        Misplaced.options(concurrency_groups={"io": 0})


def test_cancelling_an_async_actor_call_raises_cancelled_error_in_its_coroutine(shared_cluster, tmp_path, e2e):
    @cluster.remote
    class Sleeper:
        async def sleep(self, folder: str) -> str:
            Path(folder, "started").touch()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                Path(folder, "cancelled").touch()
                raise
            return "slept"

        async def ping(self) -> str:
            return "pong"

    actor = Sleeper.remote()
    ref = actor.sleep.remote(str(tmp_path))
    e2e.wait_until((tmp_path / "started").exists, timeout=60, what="the call to start")
    with pytest.raises(ValueError, match="force=True is not supported for actor tasks"):
        cluster.cancel(ref, force=True)
    cluster.cancel(ref)
    with pytest.raises(TaskCancelledError):
        cluster.get(ref, timeout=60)
    assert (tmp_path / "cancelled").exists()  # the coroutine saw asyncio.CancelledError
    assert cluster.get(actor.ping.remote(), timeout=60) == "pong"  # and the actor lives on


def test_a_blocking_get_in_an_async_actor_warns_once(shared_cluster):
    @cluster.remote
    class Blocking:
        async def get(self) -> list:
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = cluster.get(plus_one.remote(1))
            return [value] + [str(w.message) for w in caught]

    actor = Blocking.remote()
    first = cluster.get(actor.get.remote(), timeout=60)
    assert first[0] == 2 and len(first) == 2
    assert first[1].startswith("Using blocking cluster.get inside async actor. This blocks the event loop.")
    assert cluster.get(actor.get.remote(), timeout=60) == [2]  # once per worker


PRINTING_DRIVER = textwrap.dedent(
    """
    import asyncio, os
    import cluster

    cluster.init()

    @cluster.remote
    class Printer:
        async def say(self, n):
            await asyncio.sleep(0)
            print(f"async line {n}", end="")  # (its line ends with the call)
            return os.getpid()

    @cluster.remote(max_concurrency=2)
    class ThreadPrinter:
        def say(self, n):
            print(f"threaded line {n}")
            return os.getpid()

    pids = cluster.get([Printer.remote().say.remote(1), ThreadPrinter.remote().say.remote(2)], timeout=60)
    print("RESULT", *pids, flush=True)
    """
)


def test_what_async_and_threaded_actor_calls_print_reaches_the_driver(shared_cluster, tmp_path, e2e):
    proc = e2e.run_driver(shared_cluster, PRINTING_DRIVER, tmp_path)
    async_pid, thread_pid = proc.stdout.split("RESULT ")[1].split()
    assert f"(Printer.say pid={async_pid}) async line 1\n" in proc.stdout
    assert f"(ThreadPrinter.say pid={thread_pid}) threaded line 2\n" in proc.stdout


@cluster.remote
class Echo:
    async def echo(self, value: int) -> int:
        return value


@cluster.remote
class SyncEcho:
    def __init__(self) -> None:
        self.order: list[int] = []

    def echo(self, value: int) -> int:
        self.order.append(value)
        return value

    def seen(self) -> list:
        return self.order


@pytest.mark.parametrize("kind", ["async", "threaded", "allow_out_of_order_execution"])
def test_a_call_waiting_for_its_arguments_does_not_hold_up_later_calls(shared_cluster, tmp_path, kind):
    actor = {"async": lambda: Echo.remote(),
             "threaded": lambda: SyncEcho.options(max_concurrency=2).remote(),
             "allow_out_of_order_execution": lambda: SyncEcho.options(allow_out_of_order_execution=True).remote(),
             }[kind]()
    gate = tmp_path / "gate"
    blocked = actor.echo.remote(held.remote(1, str(gate)))  # its argument is not ready until the gate opens
    later = [actor.echo.remote(i) for i in range(2, 6)]
    assert cluster.get(later, timeout=60) == [2, 3, 4, 5]  # ran, in their order, while the first waits
    ready, _ = cluster.wait([blocked], timeout=0)
    assert not ready
    gate.touch()
    assert cluster.get(blocked, timeout=60) == 1
    if kind != "async":
        seen = cluster.get(actor.seen.remote(), timeout=60)
        assert sorted(seen) == [1, 2, 3, 4, 5] and seen.index(1) > seen.index(5)
    cluster.kill(actor)


def test_a_plain_actor_runs_one_callers_calls_in_submission_order_even_when_arguments_wait(shared_cluster, tmp_path):
    actor = SyncEcho.remote()
    gate = tmp_path / "gate"
    first = actor.echo.remote(held.remote(1, str(gate)))
    rest = [actor.echo.remote(i) for i in range(2, 6)]
    gate.touch()
    assert cluster.get([first, *rest], timeout=60) == [1, 2, 3, 4, 5]
    assert cluster.get(actor.seen.remote(), timeout=60) == [1, 2, 3, 4, 5]  # Ray's order for sync actors
    cluster.kill(actor)
