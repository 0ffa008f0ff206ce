"""A head started again on the metadata store of an earlier one, in virtual time (MockClock).

Two HeadService objects share one SQLite store, one after the other, as two head processes of
a cluster would: what the first knew (nodes, KV) the second takes back; a node known alive
has one heartbeat deadline to register again under its id; a node declared dead, or one that
joined another cluster, is refused under its id; the first head's own node is dead at once.
The head's real handlers run over in-process connections (see test_head_failure_detection).
"""

from __future__ import annotations

import itertools
from typing import Any

import structlog
import trio
import trio.testing
from test_head_failure_detection import CHECK_S, TIMEOUT_S, InProcessConnection

from cluster.head.metadata import SqliteMetadataStore
from cluster.head.service import HeadService
from cluster.head.tables import claim_identity
from cluster.wire import messages as m


class Connection(InProcessConnection):
    def abort(self) -> None:
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()


class Peer:
    """One node's (or a driver's) side of a connection to a head, and its requests."""

    def __init__(self, head: HeadService, name: str) -> None:
        self.head = head
        self.conn = Connection(name)
        self._ids = itertools.count(1)

    async def open(self, nursery: trio.Nursery) -> Peer:
        async def keep_open(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                async with trio.open_nursery() as inner:
                    self.conn.nursery = inner
                    task_status.started()
                    await trio.sleep_forever()
            finally:
                self.conn.closed = True
                for callback in self.conn.on_close:
                    callback(self.conn)

        await nursery.start(keep_open)
        return self

    def request(self, msg: Any) -> tuple[str, Any]:
        request_id = next(self._ids)
        self.head.handlers()[type(msg)](self.conn, msg, request_id)
        return self.conn.replies.pop(request_id)

    def register(self, node_id: str, *, is_head: bool = False, cluster_id: str = "",
                 available: dict | None = None) -> tuple[str, Any]:
        return self.request(m.RegisterNode(
            node_id=node_id, address=f"127.0.0.1:{7000 + len(self.head.nodes)}", resources={"CPU": 2.0},
            labels={}, hostname="localhost", pid=1, store_path="/dev/shm/none", is_head=is_head,
            store_capacity=1 << 30, spill_dir=None, available=available, cluster_id=cluster_id,
        ))

    def heartbeat(self, node_id: str) -> tuple[str, Any]:
        return self.request(m.Heartbeat(node_id, {"CPU": 2.0}, 0, m.StoreStats()))


def new_head(store: SqliteMetadataStore, token: str = "t") -> HeadService:
    head = HeadService(session_dir="/tmp", address="127.0.0.1:6999", heartbeat_timeout_s=TIMEOUT_S, token=token)
    head.metadata = store
    head.cluster_id = claim_identity(store, token, "sqlite:///test")[0].cluster_id
    return head


def run(test: Any) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_restarted_head_takes_back_its_nodes_and_kv_and_waits_one_deadline_for_them(tmp_path) -> None:
    store = SqliteMetadataStore(str(tmp_path / "meta.db"))

    async def test() -> None:
        async with trio.open_nursery() as first_run:
            first = new_head(store)
            await first_run.start(first.run)
            for name in ("comes-back", "stays-away", "head-node", "already-dead"):
                peer = await Peer(first, name).open(first_run)
                assert peer.register(name, is_head=name == "head-node")[0] == "ok"
            first.nodes["already-dead"].conn.abort()  # its connection closes: dead under the first head
            await trio.testing.wait_all_tasks_blocked()
            assert first.nodes["already-dead"].state == "dead"
            driver = await Peer(first, "driver").open(first_run)
            assert driver.request(m.KvPut("actor/ns/counter", b"\x00record"))[0] == "ok"
            assert driver.request(m.KvPut("gone", b"x"))[0] == "ok"
            assert driver.request(m.KvDelete("gone"))[0] == "ok"
            first_run.cancel_scope.cancel()  # the first head process stops: its nodes' connections close

        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as second_run:
                second = new_head(store)
                assert second.cluster_id == first.cluster_id
                deaths: dict[str, float] = {}
                second.on_node_dead.append(lambda record: deaths.setdefault(record.node_id, trio.current_time()))
                await second_run.start(second.run)
                restarted = trio.current_time()
                nodes = second.nodes
                assert set(nodes) == {"comes-back", "stays-away", "head-node", "already-dead"}
                assert nodes["already-dead"].state == "dead"
                assert [n.node_id for n in second.previous_head_nodes] == ["head-node"]
                assert nodes["head-node"].state == "dead" and "the head restarted" in nodes["head-node"].death_reason
                assert nodes["comes-back"].state == nodes["stays-away"].state == "alive"  # within the grace
                assert second.kv_get("actor/ns/counter") == b"\x00record" and second.kv_get("gone") is None

                await trio.sleep(TIMEOUT_S / 2)
                back = await Peer(second, "comes-back again").open(second_run)
                kind, reply = back.register("comes-back", cluster_id=first.cluster_id, available={"CPU": 0.5})
                assert kind == "ok" and reply.cluster_id == first.cluster_id
                assert nodes["comes-back"].available == {"CPU": 0.5}  # what it has free, not its total

                async def heartbeat_forever() -> None:
                    while True:
                        await trio.sleep(0.25)
                        assert back.heartbeat("comes-back")[0] == "ok"

                second_run.start_soon(heartbeat_forever)
                await trio.sleep(TIMEOUT_S / 2 + 2 * CHECK_S)
                assert nodes["stays-away"].state == "dead"
                assert nodes["comes-back"].state == "alive"
                second_run.cancel_scope.cancel()
        died = {e["node_id"]: e["reason"] for e in logs if e["event"] == "node_dead"}
        assert died["stays-away"] == f"it did not come back within {TIMEOUT_S:.0f}s of the head's restart"
        assert restarted + TIMEOUT_S < deaths["stays-away"] <= restarted + TIMEOUT_S + CHECK_S
        assert "comes-back" not in died

    run(test)


def test_a_node_declared_dead_or_of_another_cluster_is_refused_under_its_id(tmp_path) -> None:
    store = SqliteMetadataStore(str(tmp_path / "meta.db"))

    async def test() -> None:
        async with trio.open_nursery() as nursery:
            head = new_head(store)
            await nursery.start(head.run)
            node = await Peer(head, "sleeper").open(nursery)
            assert node.register("sleeper")[0] == "ok"
            await trio.sleep(TIMEOUT_S + 2 * CHECK_S)  # silent past its deadline (stopped, partitioned)
            assert head.nodes["sleeper"].state == "dead" and node.conn.closed

            again = await Peer(head, "sleeper, reconnected").open(nursery)
            kind, message = again.register("sleeper", cluster_id=head.cluster_id)
            assert kind == "dead" and "was declared dead (missed its heartbeat deadline (10s))" in message
            assert "new node" in message
            assert head.nodes["sleeper"].state == "dead"

            stranger = await Peer(head, "from another cluster").open(nursery)
            kind, message = stranger.register("elsewhere", cluster_id="cother")
            assert kind == "dead" and f"runs cluster {head.cluster_id}, not cluster cother" in message
            assert "elsewhere" not in head.nodes

            assert again.register("sleeper-2", cluster_id=head.cluster_id)[0] == "ok"  # as a new node
            assert head.nodes["sleeper-2"].state == "alive"
            nursery.cancel_scope.cancel()

    run(test)


def test_a_node_that_reconnects_is_not_killed_by_its_old_connection_closing(tmp_path) -> None:
    store = SqliteMetadataStore(str(tmp_path / "meta.db"))

    async def test() -> None:
        async with trio.open_nursery() as nursery:
            head = new_head(store)
            await nursery.start(head.run)
            old = await Peer(head, "old connection").open(nursery)
            assert old.register("flaky")[0] == "ok"
            new = await Peer(head, "new connection").open(nursery)
            assert new.register("flaky", cluster_id=head.cluster_id)[0] == "ok"
            await trio.testing.wait_all_tasks_blocked()
            assert old.conn.closed  # the head dropped the connection the node replaced
            assert head.nodes["flaky"].state == "alive" and head.nodes["flaky"].conn is new.conn
            nursery.cancel_scope.cancel()

    run(test)


def test_a_head_that_stood_still_gives_its_nodes_a_deadline_before_judging_them(tmp_path) -> None:
    store = SqliteMetadataStore(str(tmp_path / "meta.db"))
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def test() -> None:
        async with trio.open_nursery() as nursery:
            head = new_head(store)
            await nursery.start(head.run)
            node = await Peer(head, "patient").open(nursery)
            assert node.register("patient")[0] == "ok"
            await trio.sleep(CHECK_S)
            clock.jump(3 * TIMEOUT_S)  # the head's process was stopped this long (SIGSTOP, a frozen VM)
            await trio.sleep(2 * CHECK_S)
            assert head.nodes["patient"].state == "alive"  # its heartbeats were waiting to be read
            assert node.heartbeat("patient")[0] == "ok"
            await trio.sleep(TIMEOUT_S + 2 * CHECK_S)  # then silent for real: judged as ever
            assert head.nodes["patient"].state == "dead"
            nursery.cancel_scope.cancel()

    trio.run(test, clock=clock)
