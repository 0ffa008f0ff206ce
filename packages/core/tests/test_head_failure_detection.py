"""The head's failure detection by heartbeat deadline, in virtual time (trio's MockClock).

A node whose connection stays open but which stops heartbeating must be declared dead once
``heartbeat_timeout_s`` has passed since its last heartbeat (a closed connection is the other
path, tested end to end in tests/test_e2e_failures.py); a node that keeps heartbeating, even
only just in time, must not be.

The head's real handlers run; only the connection is in-process. cluster.protocol.Connection
reads its socket in a thread of its own, which MockClock cannot see: with autojump the virtual
clock would race ahead while a heartbeat sits in that thread. So messages are handed to the
head's handlers here exactly as a connection's reader hands them over (``head.handlers()``),
and what the head replies or sends is kept.
"""

from __future__ import annotations

import itertools
from typing import Any

import structlog
import trio
import trio.testing

from cluster.head.service import HeadService
from cluster.node.service import HEARTBEAT_S  # how often a node daemon heartbeats
from cluster.wire import messages as m

TIMEOUT_S = 10.0
CHECK_S = min(1.0, TIMEOUT_S / 4)  # how often the head looks (HeadService.run): detection may lag this much


class InProcessConnection:
    """The head's end of one node's connection: what the head calls on it, nothing more."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.closed = False
        self.nursery: trio.Nursery | None = None  # cancelling it drops the connection
        self.on_close: list = []
        self.replies: dict[int, tuple[str, Any]] = {}
        self.sent: list = []

    def reply(self, request_id: int, value: Any = None) -> None:
        self.replies[request_id] = ("ok", value)

    def reply_error(self, request_id: int, kind: str, message: str) -> None:
        self.replies[request_id] = (kind, message)

    def send(self, msg: Any, request_id: int = 0) -> None:
        assert not self.closed, "the head sent on a closed connection"
        self.sent.append(msg)


class FakeNode:
    """A node daemon's side: registers, heartbeats (or falls silent), over its connection."""

    def __init__(self, head: HeadService, node_id: str) -> None:
        self.head = head
        self.node_id = node_id
        self.conn = InProcessConnection(f"127.0.0.1:{7000 + len(head.nodes)}")
        self.joined_at = float("nan")  # virtual times, set as it happens
        self.last_heartbeat = float("nan")
        self._ids = itertools.count(1)

    async def run_connection(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the connection open until someone drops it (as cluster.protocol.run_connection)."""
        try:
            async with trio.open_nursery() as nursery:
                self.conn.nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self.conn.closed = True
            for callback in self.conn.on_close:
                callback(self.conn)

    def request(self, msg: Any) -> tuple[str, Any]:
        request_id = next(self._ids)
        self.head.handlers()[type(msg)](self.conn, msg, request_id)
        return self.conn.replies.pop(request_id)

    def register(self) -> None:
        kind, _ = self.request(m.RegisterNode(
            node_id=self.node_id, address=self.conn.peer, resources={"CPU": 1.0}, labels={},
            hostname="localhost", pid=1, store_path="/dev/shm/none", is_head=False,
            store_capacity=1 << 30, spill_dir=None,
        ))
        assert kind == "ok"

    def heartbeat(self) -> tuple[str, Any]:
        return self.request(m.Heartbeat(self.node_id, {"CPU": 1.0}, self.head.view_version, m.StoreStats()))

    async def heartbeat_every(self, interval: float, *, until: float = float("inf")) -> None:
        """Heartbeat every ``interval`` seconds until the clock reads ``until``; then fall silent."""
        while trio.current_time() + interval <= until:
            await trio.sleep(interval)
            kind, reply = self.heartbeat()
            assert kind == "ok", reply
            self.last_heartbeat = trio.current_time()


class Scenario:
    """A head service running in a nursery, with the nodes' deaths recorded as they happen."""

    def __init__(self, nursery: trio.Nursery, tmp: str) -> None:
        self.nursery = nursery
        self.head = HeadService(session_dir=tmp, address="127.0.0.1:6999", heartbeat_timeout_s=TIMEOUT_S)
        self.deaths: dict[str, float] = {}
        self.head.on_node_dead.append(lambda record: self.deaths.setdefault(record.node_id, trio.current_time()))

    async def start(self) -> None:
        await self.nursery.start(self.head.run)

    async def join(self, node_id: str) -> FakeNode:
        node = FakeNode(self.head, node_id)
        await self.nursery.start(node.run_connection)
        node.register()
        node.joined_at = trio.current_time()
        return node


def run_in_virtual_time(test: Any, tmp_path: Any) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            scenario = Scenario(nursery, str(tmp_path))
            await scenario.start()
            await test(scenario)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_silent_node_is_declared_dead_after_the_deadline_and_a_heartbeating_one_is_not(tmp_path) -> None:
    async def test(scenario: Scenario) -> None:
        with structlog.testing.capture_logs() as logs:
            silent = await scenario.join("silent")  # joins, then never heartbeats (connection open)
            steady = await scenario.join("steady")
            scenario.nursery.start_soon(steady.heartbeat_every, HEARTBEAT_S)

            await trio.sleep(TIMEOUT_S - CHECK_S)  # not yet: nothing is late
            assert scenario.deaths == {}
            assert scenario.head.nodes["silent"].state == "alive"

            await trio.sleep(10 * TIMEOUT_S)
            head = scenario.head
            assert list(scenario.deaths) == ["silent"]  # and only it, in a minute of virtual time
            # Found just past its deadline (the head looks again at the first deadline due).
            assert silent.joined_at + TIMEOUT_S < scenario.deaths["silent"] <= silent.joined_at + TIMEOUT_S + 0.05
            assert head.nodes["silent"].state == "dead" and head.nodes["silent"].available == {}
            assert head.nodes["steady"].state == "alive"
        dead = [e for e in logs if e["event"] == "node_dead"]
        assert [(e["node_id"], e["reason"]) for e in dead] == [("silent", "missed its heartbeat deadline (10s)")]
        # The head dropped the silent node's connection, and told the others it is gone.
        assert silent.conn.closed and not steady.conn.closed
        views = [msg.view for msg in steady.conn.sent if isinstance(msg, m.ViewUpdate)]
        assert {n["node_id"]: n["state"] for n in views[-1]} == {"silent": "dead", "steady": "alive"}
        # Should it speak again, it is told it was declared dead.
        kind, message = silent.heartbeat()
        assert kind == "dead" and "declared dead" in message

    run_in_virtual_time(test, tmp_path)


def test_the_deadline_runs_from_the_last_heartbeat_not_from_joining(tmp_path) -> None:
    async def test(scenario: Scenario) -> None:
        node = await scenario.join("fades")
        stop_at = trio.current_time() + 3 * TIMEOUT_S
        await node.heartbeat_every(HEARTBEAT_S, until=stop_at)  # then silent, connection open
        assert scenario.deaths == {}
        await trio.sleep(2 * TIMEOUT_S)
        died = scenario.deaths["fades"]
        assert node.last_heartbeat + TIMEOUT_S < died <= node.last_heartbeat + TIMEOUT_S + CHECK_S

    run_in_virtual_time(test, tmp_path)


def test_heartbeats_just_inside_the_deadline_keep_a_node_alive(tmp_path) -> None:
    async def test(scenario: Scenario) -> None:
        node = await scenario.join("just-in-time")
        scenario.nursery.start_soon(node.heartbeat_every, TIMEOUT_S - 1.5 * CHECK_S)
        await trio.sleep(20 * TIMEOUT_S)
        assert scenario.deaths == {}
        assert scenario.head.nodes["just-in-time"].state == "alive"

    run_in_virtual_time(test, tmp_path)


def test_one_gap_longer_than_the_deadline_is_enough_to_be_declared_dead(tmp_path) -> None:
    async def test(scenario: Scenario) -> None:
        node = await scenario.join("late")
        await trio.sleep(TIMEOUT_S + 1.5 * CHECK_S)  # one heartbeat comes late
        kind, _ = node.heartbeat()
        assert kind == "dead", "a heartbeat after a gap longer than the deadline was accepted"
        assert node.joined_at + TIMEOUT_S < scenario.deaths["late"] <= node.joined_at + TIMEOUT_S + CHECK_S

    run_in_virtual_time(test, tmp_path)
