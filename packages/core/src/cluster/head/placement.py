"""Placement groups at the head: their records, where their bundles go, and the two phases
that reserve them all or none (docs/design/0018).

A group is created PENDING; the head asks the scheduling policy (``place_group``, pure, on the
resource view) for a node per bundle, asks each of those nodes to set its bundles aside
(``PrepareBundles``), and only when every node said yes tells them to offer the bundles
(``CommitBundles``): CREATED. If any node says no (its view of the node was stale), the ones
that said yes give theirs back (``ReturnBundles``) and the group waits for the next try, with
the reason in its record. Removing a group (or its creator going away, unless it is detached)
returns its bundles; the nodes stop the workers that use them. A node that dies takes its
bundles with it: the group is RESCHEDULING until they are placed again.

Records live in the metadata store's ``placement_groups`` table: a head started again on it
has the same groups (the nodes kept their bundles). The last ``KEEP_REMOVED`` removed groups
stay listed (state REMOVED), as Ray keeps them for a while.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from typing import Any

import attrs
import structlog
import trio

from cluster.errors import ClusterConnectionError, RemoteCallError
from cluster.scheduling import GroupRequest, ResourceView, labels_from_wire
from cluster.wire import messages as m

log = structlog.get_logger("cluster.head.placement")

TABLE = "placement_groups"
RETRY_S = 0.5  # a pending group is tried again this often (and whenever a node joins or frees room)
NODE_ANSWER_S = 10.0  # a node that does not answer a phase within this is taken as a no
KEEP_REMOVED = 1000  # removed groups whose records stay listed (the oldest go first)

PENDING, CREATED, REMOVED, RESCHEDULING = "PENDING", "CREATED", "REMOVED", "RESCHEDULING"


@attrs.define(eq=False)
class GroupRecord:
    pg_id: str
    name: str
    namespace: str
    strategy: str
    bundles: list[dict[str, float]]
    bundle_labels: list[list[list[Any]]]
    detached: bool
    state: str = PENDING
    bundle_nodes: list[str] = attrs.Factory(list)  # per bundle: its node ("": not placed)
    reason: str = ""  # why it waits
    created_at: float = attrs.Factory(time.time)
    creator: Any = None  # the connection of the process that made it (not saved)

    def row(self) -> dict[str, Any]:
        return {k: v for k, v in attrs.asdict(self, recurse=False).items() if k != "creator"}

    def public(self) -> dict[str, Any]:
        """What ``placement_group_table()`` shows of it (Ray's keys)."""
        return {
            "placement_group_id": self.pg_id, "name": self.name, "namespace": self.namespace,
            "strategy": self.strategy, "state": self.state, "stats": {"reason": self.reason},
            "bundles": dict(enumerate(self.bundles)),
            "bundles_to_node_id": {i: node for i, node in enumerate(self.bundle_nodes) if node},
            "is_detached": self.detached, "created_at": self.created_at,
        }


class PlacementGroups:
    """The head's placement groups: a member of :class:`~cluster.head.service.HeadService`."""

    def __init__(self, head: Any, policy: Callable[[], Any]) -> None:
        self.head = head
        self._policy = policy  # the scheduling policy (made once, when first needed)
        self.groups: dict[str, GroupRecord] = {}
        self._waiters: dict[str, list[trio.Event]] = {}
        self._removed: collections.deque[str] = collections.deque()  # removed groups, oldest first
        self._wake = trio.Event()

    def handlers(self) -> dict[type, Any]:
        return {
            m.CreatePlacementGroup: self._create,
            m.WaitPlacementGroup: self._wait,
            m.RemovePlacementGroup: self._remove,
            m.GetPlacementGroup: self._get,
            m.ListPlacementGroups: self._list,
        }

    # ------------------------------------------------------------------------ requests

    def _create(self, conn: Any, msg: m.CreatePlacementGroup, request_id: int) -> None:
        if msg.name and any(g.name == msg.name and g.namespace == msg.namespace and g.state != REMOVED
                            for g in self.groups.values()):
            conn.reply_error(request_id, "exists", f"a placement group named {msg.name!r} already exists in "
                                                   f"namespace {msg.namespace!r}; remove it or pick another name")
            return
        record = GroupRecord(msg.pg_id, msg.name, msg.namespace, msg.strategy, [dict(b) for b in msg.bundles],
                             [list(labels) for labels in msg.bundle_labels], msg.detached,
                             bundle_nodes=[""] * len(msg.bundles), creator=conn)
        self.groups[record.pg_id] = record
        if not msg.detached:
            conn.on_close.append(self._creator_gone)
        self._save(record)
        log.info("placement_group_created", pg_id=record.pg_id, strategy=record.strategy, bundles=len(record.bundles))
        self.wake()
        conn.reply(request_id, None)

    def _wait(self, conn: Any, msg: m.WaitPlacementGroup, request_id: int) -> None:
        record = self.groups.get(msg.pg_id)
        if record is None or record.state in (CREATED, REMOVED) or msg.timeout_s == 0:
            conn.reply(request_id, record.public() if record is not None else None)
            return
        event = trio.Event()
        self._waiters.setdefault(msg.pg_id, []).append(event)
        self.head._nursery.start_soon(self._answer_when_settled, conn, request_id, record, event, msg.timeout_s)

    async def _answer_when_settled(self, conn: Any, request_id: int, record: GroupRecord, event: trio.Event,
                                   timeout_s: float | None) -> None:
        with trio.move_on_after(timeout_s if timeout_s is not None else float("inf")):
            await event.wait()
        if not conn.closed:
            conn.reply(request_id, record.public())

    def _remove(self, conn: Any, msg: m.RemovePlacementGroup, request_id: int) -> None:
        record = self.groups.get(msg.pg_id)
        if record is None:
            conn.reply_error(request_id, "unknown", f"no placement group {msg.pg_id} in this cluster")
            return
        self._remove_group(record, "removed")
        conn.reply(request_id, None)

    def _get(self, conn: Any, msg: m.GetPlacementGroup, request_id: int) -> None:
        found = self.groups.get(msg.pg_id) if msg.pg_id else next(
            (g for g in self.groups.values() if g.name == msg.name and g.namespace == msg.namespace
             and g.state != REMOVED), None)
        conn.reply(request_id, found.public() if found is not None else None)

    def _list(self, conn: Any, msg: m.ListPlacementGroups, request_id: int) -> None:
        conn.reply(request_id, [g.public() for g in self.groups.values()])

    # ------------------------------------------------------------------------ lifecycle

    def pending(self) -> list[dict[str, Any]]:
        """The groups waiting for room, with the bundles they still need placed."""
        return [{"pg_id": g.pg_id, "strategy": g.strategy,
                 "bundles": [b for b, node in zip(g.bundles, g.bundle_nodes, strict=True) if not node]}
                for g in self.groups.values() if g.state in (PENDING, RESCHEDULING)]

    def wake(self) -> None:
        """Try the waiting groups again now (one was made, a node joined or freed room)."""
        self._wake.set()

    def recover(self) -> None:
        """Take back the groups an earlier head process kept (their nodes kept their bundles)."""
        if self.head.metadata is None:
            return
        for _, row in self.head.metadata.items(TABLE):
            record = GroupRecord(**row)
            if record.state != REMOVED:
                self.groups[record.pg_id] = record

    def node_dead(self, node: Any) -> None:
        """A node died: the bundles it held must be placed again."""
        for record in self.groups.values():
            if record.state in (CREATED, RESCHEDULING) and node.node_id in record.bundle_nodes:
                record.bundle_nodes = ["" if n == node.node_id else n for n in record.bundle_nodes]
                record.state = RESCHEDULING
                record.reason = f"its bundles on node {node.node_id} were lost with the node"
                self._save(record)
                log.warning("placement_group_rescheduling", pg_id=record.pg_id, node_id=node.node_id)
        self.wake()

    def _creator_gone(self, conn: Any) -> None:
        for record in list(self.groups.values()):
            if record.creator is conn and not record.detached and record.state != REMOVED:
                self._remove_group(record, "its creator went away")

    def _remove_group(self, record: GroupRecord, why: str) -> None:
        if record.state == REMOVED:
            return
        was = record.bundle_nodes
        holders = {node for node in was if node}
        record.state, record.reason = REMOVED, why
        record.bundle_nodes = [""] * len(record.bundles)
        self._save(record)
        self._settled(record)
        log.info("placement_group_removed", pg_id=record.pg_id, why=why)
        self._removed.append(record.pg_id)
        while len(self._removed) > KEEP_REMOVED:
            old = self._removed.popleft()
            self.groups.pop(old, None)
            if self.head.metadata is not None:
                self.head.metadata.delete(TABLE, old)
        for node_id in holders:
            shapes = [b for b, n in zip(record.bundles, was, strict=True) if n == node_id]
            self.head._nursery.start_soon(self._give_back, node_id, record.pg_id, shapes)

    def _settled(self, record: GroupRecord) -> None:
        for event in self._waiters.pop(record.pg_id, ()):
            event.set()

    def _save(self, record: GroupRecord) -> None:
        if self.head.metadata is not None:
            self.head.metadata.put(TABLE, record.pg_id, record.row())

    async def run(self) -> None:
        """Place waiting groups, one at a time and oldest first (two never race for a node)."""
        while True:
            with trio.move_on_after(RETRY_S):
                await self._wake.wait()
            self._wake = trio.Event()
            waiting = [g for g in self.groups.values() if g.state in (PENDING, RESCHEDULING)]
            for record in sorted(waiting, key=lambda g: g.created_at):
                await self._try_place(record)

    # ------------------------------------------------------------------------ placing

    async def _try_place(self, record: GroupRecord) -> None:
        missing = [i for i, node in enumerate(record.bundle_nodes) if not node]
        view = ResourceView.from_records(self.head.view(), local_id="")
        request = GroupRequest([record.bundles[i] for i in missing], record.strategy,
                               [_labels(record.bundle_labels, i) for i in missing],
                               [node for node in record.bundle_nodes if node])
        decision = self._policy().place_group(request, view)
        if decision.nodes is None:
            if record.reason != decision.reason:
                record.reason = decision.reason
                log.info("placement_group_pending", pg_id=record.pg_id, reason=decision.reason)
            return
        by_node: dict[str, list[int]] = {}
        for index, node_id in zip(missing, decision.nodes, strict=True):
            by_node.setdefault(node_id, []).append(index)
        prepared: list[str] = []
        refusal = ""
        alone = len(by_node) == 1  # one node: its own all-or-none is the group's, one phase does
        for node_id, indexes in by_node.items():
            answer = await self._ask(node_id, m.PrepareBundles(record.pg_id, indexes, [record.bundles[i] for i in indexes],
                                                               commit=alone))
            if answer is not True:
                refusal = str(answer)
                break
            prepared.append(node_id)
            self._take_from_view(node_id, [record.bundles[i] for i in indexes])
        if refusal or record.state == REMOVED:  # (removed while we asked: give back what we got)
            for node_id in prepared:
                await self._ask(node_id, m.ReturnBundles(record.pg_id, by_node[node_id]))
                self._take_from_view(node_id, [record.bundles[i] for i in by_node[node_id]], -1.0)
            record.reason = refusal or record.reason
            return
        for node_id in by_node if not alone else ():
            if await self._ask(node_id, m.CommitBundles(record.pg_id)) is not True:
                # The node went away between the phases: what it prepared is gone with it.
                for other in by_node:
                    if other != node_id:
                        await self._ask(other, m.ReturnBundles(record.pg_id, by_node[other]))
                record.reason = f"node {node_id} went away while its bundles were being reserved"
                return
        for index, node_id in zip(missing, decision.nodes, strict=True):
            record.bundle_nodes[index] = node_id
        record.state, record.reason = CREATED, ""
        self._save(record)
        log.info("placement_group_ready", pg_id=record.pg_id, nodes=sorted(by_node))
        self._settled(record)

    async def _ask(self, node_id: str, msg: m.Message) -> Any:
        node = self.head.nodes.get(node_id)
        conn = node.conn if node is not None and node.state == "alive" else None
        if conn is None or conn.closed:
            return f"node {node_id} is not connected"
        with trio.move_on_after(NODE_ANSWER_S):
            try:
                return await conn.request(msg)
            except (ClusterConnectionError, RemoteCallError) as exc:
                return f"node {node_id} could not answer: {exc}"
        return f"node {node_id} did not answer within {NODE_ANSWER_S:g}s"

    async def _give_back(self, node_id: str, pg_id: str, shapes: list[dict[str, float]]) -> None:
        await self._ask(node_id, m.ReturnBundles(pg_id))
        self._take_from_view(node_id, shapes, -1.0)
        self.wake()  # (room for a waiting group, maybe)

    def _take_from_view(self, node_id: str, shapes: list[dict[str, float]], sign: float = 1.0) -> None:
        """What a node set aside is not free any more (or, given back, is again), before its
        next heartbeat says so."""
        node = self.head.nodes.get(node_id)
        if node is None:
            return
        for shape in shapes:
            for name, amount in shape.items():
                node.available[name] = node.available.get(name, 0.0) - sign * amount


def _labels(bundle_labels: list[list[list[Any]]], index: int) -> tuple:
    return labels_from_wire(bundle_labels[index]) if index < len(bundle_labels) else ()
