"""Actors: stateful workers called through handles, on the module's shared cluster.

The cluster is a head ({"a": 1}) and a node ({"b": 1}); actors with no resources land on
whichever node has a worker for them.
"""

from __future__ import annotations

import os
import signal
import socketserver
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

import cluster
from cluster.exceptions import ActorDiedError
from cluster.session import pid_alive


@cluster.remote
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start
        self.seen: list = []

    def incr(self, by: int = 1) -> int:
        self.n += by
        return self.n

    def record(self, caller: str, i: int) -> None:
        self.seen.append((caller, i))

    def history(self) -> list:
        return self.seen

    def pid(self) -> int:
        return os.getpid()

    def slow_pid(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()


def test_a_counter_incremented_10000_times_ends_at_10000_in_order(shared_cluster):
    counter = Counter.remote()
    values = cluster.get([counter.incr.remote() for _ in range(10_000)], timeout=120)
    assert values == list(range(1, 10_001))  # each call saw the state the previous one left
    cluster.kill(counter)


@cluster.remote(resources={"b": 1})
def call_from_a_task(counter: cluster.ActorHandle, n: int) -> int:
    cluster.get([counter.record.remote("task", i) for i in range(n)])
    return os.getpid()


def test_two_callers_interleave_and_each_keeps_its_order(shared_cluster):
    counter = Counter.remote()
    from_task = call_from_a_task.remote(counter, 500)  # a second caller, on another node
    for i in range(500):
        counter.record.remote("driver", i)
    cluster.get(from_task, timeout=60)
    seen = cluster.get(counter.history.remote(), timeout=60)
    assert [i for who, i in seen if who == "driver"] == list(range(500))
    assert [i for who, i in seen if who == "task"] == list(range(500))
    cluster.kill(counter)


def test_a_handle_passed_into_a_task_reaches_the_same_actor(shared_cluster):
    counter = Counter.remote(10)

    @cluster.remote
    def bump(c: cluster.ActorHandle) -> int:
        return cluster.get(c.incr.remote(5))

    assert cluster.get(bump.remote(counter), timeout=60) == 15
    assert cluster.get(counter.incr.remote(), timeout=60) == 16
    cluster.kill(counter)


@cluster.remote
class Broken:
    def __init__(self) -> None:
        raise ValueError("the constructor refuses")

    def ping(self) -> str:
        return "pong"


def test_a_constructor_error_surfaces_on_the_first_call_with_its_traceback(shared_cluster):
    broken = Broken.remote()
    with pytest.raises(ValueError, match="the constructor refuses") as excinfo:
        cluster.get(broken.ping.remote(), timeout=60)
    assert "Broken.__init__" in str(excinfo.value) and "test_e2e_actors.py" in str(excinfo.value)


def test_kill_fails_later_calls_with_actor_died_error(shared_cluster):
    counter = Counter.remote()
    pid = cluster.get(counter.pid.remote(), timeout=60)
    cluster.kill(counter)
    with pytest.raises(ActorDiedError, match=r"killed with cluster\.kill"):
        cluster.get(counter.incr.remote(), timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    assert not pid_alive(pid)  # its worker process is gone too


def test_an_actor_killed_mid_call_restarts_and_retries_with_max_restarts_1(shared_cluster):
    counter = Counter.options(max_restarts=1, max_task_retries=1).remote(100)
    pid = cluster.get(counter.pid.remote(), timeout=60)
    slow = counter.slow_pid.remote(5)  # in flight when the process dies
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    new_pid = cluster.get(slow, timeout=60)  # retried on the restarted actor
    assert new_pid != pid
    assert cluster.get(counter.incr.remote(), timeout=60) == 101  # state rebuilt by the constructor
    cluster.kill(counter)


def test_an_actor_killed_mid_call_with_max_restarts_0_raises_actor_died_error(shared_cluster):
    counter = Counter.remote()
    pid = cluster.get(counter.pid.remote(), timeout=60)
    slow = counter.slow_pid.remote(5)
    time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ActorDiedError, match="worker process died"):
        cluster.get(slow, timeout=60)
    with pytest.raises(ActorDiedError):
        cluster.get(counter.incr.remote(), timeout=60)


def test_named_actors_are_found_by_name_and_names_are_unique(shared_cluster):
    counter = Counter.options(name="tally", namespace="tests").remote(7)
    found = cluster.get_actor("tally", namespace="tests")
    assert cluster.get(found.incr.remote(), timeout=60) == 8
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="tally", namespace="tests").remote()
    same = Counter.options(name="tally", namespace="tests", get_if_exists=True).remote()
    assert cluster.get(same.incr.remote(), timeout=60) == 9
    cluster.kill(counter)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            cluster.get_actor("tally", namespace="tests")
        except ValueError:
            break
        time.sleep(0.05)
    with pytest.raises(ValueError, match="no actor named 'tally'"):
        cluster.get_actor("tally", namespace="tests")


def test_calling_a_method_that_does_not_exist_names_the_methods(shared_cluster):
    counter = Counter.remote()
    with pytest.raises(AttributeError, match=r"has no method 'incrr'.*incr"):
        counter.incrr.remote()
    cluster.kill(counter)


@cluster.remote
class Sleeper:
    async def nap(self, seconds: float) -> float:
        import asyncio

        start = time.monotonic()
        await asyncio.sleep(seconds)  # the user's asyncio code runs on the actor's event loop
        return start

    def where(self) -> int:
        return os.getpid()


def test_an_async_actor_runs_100_sleeping_calls_at_once(shared_cluster):
    sleeper = Sleeper.remote()
    cluster.get(sleeper.where.remote(), timeout=60)  # started
    begin = time.monotonic()
    starts = cluster.get([sleeper.nap.remote(1.0) for _ in range(100)], timeout=60)
    elapsed = time.monotonic() - begin
    assert max(starts) - min(starts) < 1.0  # all 100 were sleeping at the same time
    assert elapsed < 5, f"100 concurrent 1 s sleeps took {elapsed:.1f}s"
    cluster.kill(sleeper)


def test_an_actor_stops_once_its_owner_drops_every_handle(shared_cluster):
    import gc

    counter = Counter.remote()
    pid = cluster.get(counter.pid.remote(), timeout=60)
    last = counter.slow_pid.remote(0.5)  # still runs: calls in flight finish first
    del counter
    gc.collect()
    assert cluster.get(last, timeout=60) == pid
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    assert not pid_alive(pid)


FIRST_DRIVER = """
import cluster

cluster.init()

@cluster.remote
class Store:
    def __init__(self):
        self.items = {}

    def put(self, key, value):
        self.items[key] = value
        return len(self.items)

    def get(self, key):
        return self.items.get(key)

    def pid(self):
        import os
        return os.getpid()

store = Store.options(name="kept", namespace="detached-test", lifetime="detached").remote()
assert cluster.get(store.put.remote("answer", 42)) == 1
print(cluster.get(store.pid.remote()))
"""


def test_a_named_detached_actor_is_found_by_a_second_driver_after_the_first_exited(shared_cluster, tmp_path):
    import subprocess
    import sys

    script = tmp_path / "first_driver.py"
    script.write_text(FIRST_DRIVER)
    first = subprocess.run([sys.executable, str(script)], env=shared_cluster.env, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    pid = int(first.stdout.strip().splitlines()[-1])
    store = cluster.get_actor("kept", namespace="detached-test")  # the first driver is gone
    assert cluster.get(store.get.remote("answer"), timeout=60) == 42
    cluster.kill(store)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    assert not pid_alive(pid)
    with pytest.raises(ValueError, match="no actor named 'kept'"):
        cluster.get_actor("kept", namespace="detached-test")


def test_a_detached_actor_needs_a_name(shared_cluster):
    from cluster.exceptions import ConfigError

    with pytest.raises(ConfigError, match="detached actor needs a name"):
        Counter.options(lifetime="detached").remote()


def test_cluster_list_actors_shows_name_class_state_node_pid_restarts(shared_cluster, node_ids):
    import json

    counter = Counter.options(name="listed", namespace="list-test", resources={"b": 0.01}).remote()
    pid = cluster.get(counter.pid.remote(), timeout=60)
    broken = Broken.remote()
    with pytest.raises(ValueError):
        cluster.get(broken.ping.remote(), timeout=60)
    actors = json.loads(shared_cluster.cli("list", "actors", "--json").stdout)
    listed = next(a for a in actors if a.get("name") == "listed")
    assert listed["class"] == "Counter" and listed["state"] == "alive" and listed["pid"] == pid
    assert listed["node_id"] == node_ids["node"] and listed["restarts"] == 0
    dead = next(a for a in actors if a.get("class") == "Broken")
    assert dead["state"] == "dead" and "constructor raised" in dead["cause"]
    text = shared_cluster.cli("list", "actors").stdout
    assert "listed" in text and "RESTARTS" in text and str(pid) in text
    cluster.kill(counter)


def test_an_actor_that_is_not_detached_dies_with_its_owner(shared_cluster, tmp_path):
    import subprocess
    import sys

    script = tmp_path / "owner.py"
    script.write_text(FIRST_DRIVER.replace(', lifetime="detached"', "").replace('"kept"', '"owned-by-driver"'))
    owner = subprocess.run([sys.executable, str(script)], env=shared_cluster.env, capture_output=True,
                           text=True, timeout=120)
    assert owner.returncode == 0, owner.stderr
    pid = int(owner.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    assert not pid_alive(pid)  # the node took the lease back when the owner's connection closed
    # Its name went with it: it can be taken again.
    again = Counter.options(name="owned-by-driver", namespace="detached-test").remote(3)
    assert cluster.get(again.incr.remote(), timeout=60) == 4
    cluster.kill(again)


# ------------------------------------------- max_concurrency: calls overlap up to the limit, never beyond
#
# Each call checks in with a turnstile in this process: once when its arguments are unpickled on
# the actor's worker (it has *arrived*: it is queued there, whether it may run yet or not), then
# when it starts running (it *enters*), and it then waits until the test lets it go. The test
# releases the calls a batch at a time, each batch only once every call has arrived and the
# limit is full; the turnstile counts, at every entry, how many calls run at once. With the limit
# respected that peak is exactly max_concurrency; with a smaller one the test waits for calls that
# cannot start, and with a larger one (or none) the calls queued behind the limit get in early.


class Turnstile:
    """A TCP server on 127.0.0.1 that actor calls report to, and wait at until released."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrived: set[int] = set()
        self.inside: set[int] = set()
        self.entered: list[int] = []
        self.peak = 0
        self._gates: dict[int, threading.Event] = {}
        turnstile = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                verb, i = self.rfile.readline().decode().split()
                turnstile._on(verb, int(i))
                self.wfile.write(b"go\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = self.server.server_address
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _on(self, verb: str, i: int) -> None:
        with self.lock:
            if verb == "arrive":
                self.arrived.add(i)
                return
            self.inside.add(i)
            self.entered.append(i)
            self.peak = max(self.peak, len(self.inside))
            gate = self._gates.setdefault(i, threading.Event())
        gate.wait(120)  # until release() (or close(), if the test failed)

    def ticket(self, i: int) -> Any:
        """Argument ``i`` of a call: unpickled on the actor's worker, it reports its arrival
        (before the worker's concurrency limit sees the call) and becomes ``(address, i)``."""
        address = self.address

        def arrived(address: tuple, i: int) -> tuple:
            import socket

            with socket.create_connection(address) as sock:
                sock.sendall(f"arrive {i}\n".encode())
                sock.makefile().readline()
            return address, i

        class Ticket:  # local, so cloudpickle ships ``arrived`` by value
            def __reduce__(self) -> Any:
                return arrived, (address, i)

        return Ticket()

    def release(self, calls: Iterable[int]) -> None:
        with self.lock:
            for i in calls:
                self.inside.discard(i)  # counted out before it can return and free its slot
                self._gates.setdefault(i, threading.Event()).set()

    def close(self) -> None:
        with self.lock:
            for gate in self._gates.values():
                gate.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def turnstile() -> Iterator[Turnstile]:
    gate = Turnstile()
    try:
        yield gate
    finally:
        gate.close()


def run_in_batches_of_the_limit(handle: Any, limit: int, turnstile: Turnstile, e2e: Any) -> None:
    batches = 3
    calls = [handle.hold.remote(turnstile.ticket(i)) for i in range(batches * limit)]
    for batch in range(batches):
        try:
            e2e.wait_until(lambda: len(turnstile.arrived) == len(calls) and len(turnstile.inside) >= limit,
                           timeout=30, what=f"{limit} calls running at once (batch {batch})")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; running: {sorted(turnstile.inside)}, arrived at the worker: "
                                 f"{len(turnstile.arrived)} of {len(calls)}") from None
        with turnstile.lock:
            running = sorted(turnstile.inside)
            peak = turnstile.peak
        assert peak == limit, f"{peak} calls ran at once with max_concurrency={limit}"
        turnstile.release(running)
    assert cluster.get(calls, timeout=60) == ["go"] * len(calls)
    assert turnstile.peak == limit, f"{turnstile.peak} calls ran at once with max_concurrency={limit}"
    assert sorted(turnstile.entered) == list(range(len(calls)))  # each call ran once


@cluster.remote
class AsyncGated:
    async def hold(self, ticket: tuple) -> str:
        import asyncio

        address, i = ticket
        reader, writer = await asyncio.open_connection(*address)  # on the actor's event loop
        writer.write(f"enter {i}\n".encode())
        await writer.drain()
        reply = await reader.readline()
        writer.close()
        return reply.decode().strip()


@cluster.remote
class ThreadGated:
    def hold(self, ticket: tuple) -> str:
        import socket

        address, i = ticket
        with socket.create_connection(address) as sock:  # blocks this call's thread only
            sock.sendall(f"enter {i}\n".encode())
            return sock.makefile().readline().strip()


def test_an_async_actor_runs_exactly_max_concurrency_calls_at_once(shared_cluster, turnstile, e2e):
    actor = AsyncGated.options(max_concurrency=2).remote()
    run_in_batches_of_the_limit(actor, 2, turnstile, e2e)
    cluster.kill(actor)


def test_a_threaded_actor_runs_exactly_max_concurrency_calls_at_once(shared_cluster, turnstile, e2e):
    actor = ThreadGated.options(max_concurrency=3).remote()
    run_in_batches_of_the_limit(actor, 3, turnstile, e2e)
    cluster.kill(actor)
