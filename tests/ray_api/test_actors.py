"""Ray's actor semantics at the edges: an unnamed actor lives while any handle to it exists
anywhere (the owner's, or copies passed into tasks and other actors) and exits when the last
one is gone.

(Calls, ordering, restarts, names, detached actors: tests/test_e2e_actors.py;
exit_actor and class attributes: tests/ray_api/test_basics.py.)
"""

from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import pytest

import cluster
from cluster.exceptions import PendingCallsLimitExceeded
from cluster.session import pid_alive


@cluster.remote
class Counter:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def pid(self) -> int:
        return os.getpid()


@cluster.remote
class Holder:
    """Keeps a handle it was given, until told to forget it."""

    def __init__(self, handle: object) -> None:
        self.handle = handle

    def call(self) -> int:
        return cluster.get(self.handle.incr.remote())

    def forget(self) -> None:
        self.handle = None
        gc.collect()


@cluster.remote
def use_later(handle: object, go: str, done: str) -> int:
    """Holds the handle until ``go`` exists, then calls the actor through it."""
    while not os.path.exists(go):
        time.sleep(0.01)
    value = cluster.get(handle.incr.remote())
    Path(done).touch()
    return value


@pytest.fixture
def connected(make_cluster):
    lc = make_cluster(num_cpus=4)
    lc.connect()
    return lc


def _gone(e2e, pid: int, what: str) -> None:
    e2e.wait_until(lambda: not pid_alive(pid), timeout=60, what=what)


def test_an_actor_lives_while_another_actor_holds_its_handle_and_exits_when_that_goes(connected, e2e):
    counter = Counter.remote()
    pid = cluster.get(counter.pid.remote(), timeout=60)
    holder = Holder.remote(counter)
    assert cluster.get(holder.call.remote(), timeout=60) == 1
    del counter
    gc.collect()
    # The driver's handle is gone; the holder's copy keeps the actor, state and all.
    assert cluster.get([holder.call.remote() for _ in range(3)], timeout=60) == [2, 3, 4]
    assert pid_alive(pid)
    cluster.get(holder.forget.remote(), timeout=60)
    _gone(e2e, pid, "the actor to exit once its last handle (the holder's) was dropped")


def test_an_actor_lives_while_a_task_holds_its_handle(connected, tmp_path, e2e):
    counter = Counter.remote()
    pid = cluster.get(counter.pid.remote(), timeout=60)
    go, done = tmp_path / "go", tmp_path / "done"
    later = use_later.remote(counter, str(go), str(done))
    del counter
    gc.collect()
    go.touch()  # only now does the task call the actor whose driver handle is gone
    assert cluster.get(later, timeout=60) == 1
    _gone(e2e, pid, "the actor to exit once the task holding its last handle finished")


def test_an_actor_exits_when_the_owner_drops_its_only_handle(connected, e2e):
    counter = Counter.remote()
    pid = cluster.get(counter.pid.remote(), timeout=60)
    del counter
    gc.collect()
    _gone(e2e, pid, "the actor to exit once its only handle was dropped")


def test_a_named_actor_outlives_its_handles(connected):
    named = Counter.options(name="kept").remote()
    pid = cluster.get(named.pid.remote(), timeout=60)
    del named
    gc.collect()
    again = cluster.get_actor("kept")
    assert cluster.get(again.pid.remote(), timeout=60) == pid


@cluster.remote
class Gate:
    def wait_for(self, path: str) -> str:
        while not os.path.exists(path):
            time.sleep(0.01)
        return "through"


@cluster.remote
def call_past_the_limit(gate: object, release: str) -> str:
    refs = [gate.wait_for.remote(release) for _ in range(2)]
    try:
        gate.wait_for.remote(release)
    except PendingCallsLimitExceeded as exc:
        Path(release).touch()
        cluster.get(refs)
        return f"refused: {exc}"
    return "not refused"


def test_max_pending_calls_refuses_calls_past_the_limit_per_handle(connected, tmp_path):
    gate = Gate.options(max_pending_calls=2).remote()
    release = tmp_path / "release"
    first = [gate.wait_for.remote(str(release)) for _ in range(2)]
    with pytest.raises(PendingCallsLimitExceeded, match="max_pending_calls is 2"):
        gate.wait_for.remote(str(release))
    release.touch()
    assert cluster.get(first, timeout=60) == ["through", "through"]
    assert cluster.get(gate.wait_for.remote(str(release)), timeout=60) == "through"  # room again
    # The limit travels with the handle: a task holding a copy is refused the same way.
    elsewhere = tmp_path / "elsewhere"
    assert cluster.get(call_past_the_limit.remote(gate, str(elsewhere)), timeout=60).startswith("refused")
