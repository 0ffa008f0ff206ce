"""The head service: node membership, failure detection, the cluster's resource view, a KV store.

The head is on the control path only (nodes joining, heartbeats, drivers attaching); no task
passes through it, so the cluster's work goes on while it is down.

It keeps its node table and KV in the metadata store (:mod:`cluster.head.tables`). A head
started again on that store takes them back: a node it knew alive has one heartbeat deadline
from then to come back under its id (it reconnects by itself, with what it has free now), or
it is declared dead, and a node declared dead is refused under its old id (it rejoins as a
new node). The node of the previous head process is dead at once: its workers went with it.
"""

from __future__ import annotations

import collections
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import attrs
import structlog
import trio

from cluster.head import tables
from cluster.head.placement import PlacementGroups
from cluster.plugins import make_scheduler
from cluster.wire import messages as m
from cluster.wire.connection import Connection

log = structlog.get_logger("cluster.head")

MAX_FAILURES = 200  # kept for `cluster status`
JOB_COUNTER_KEY = "__cluster/job_counter"  # (in the KV) the last job number given to a driver


@attrs.define(eq=False)
class NodeRecord:
    node_id: str
    address: str
    resources: dict
    available: dict
    labels: dict
    hostname: str
    pid: int
    store_path: str
    is_head: bool
    store_capacity: int
    spill_dir: str | None
    conn: Connection | None
    object_store: str = "shared"
    store: m.StoreStats | None = None  # as of its last heartbeat
    demand: list = attrs.Factory(list)  # of DemandItem: what waits on this node (NodeService.demand)
    state: str = "alive"
    last_seen: float = attrs.Factory(trio.current_time)  # trio's clock: tests can mock it
    joined_at: float = attrs.Factory(time.time)
    died_at: float | None = None  # wall clock, once declared dead
    death_reason: str = ""  # why it was declared dead
    returned: bool = True  # False: known from before the head restarted, not back yet

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> NodeRecord:
        """A node as a previous head process left it in the ``nodes`` table (not connected)."""
        fields = {name: row[name] for name in tables.NODE_FIELDS if name in row}
        return cls(**fields, available={}, conn=None, returned=False)

    def public(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "address": self.address,
            "resources": self.resources,
            "available": self.available,
            "labels": self.labels,
            "hostname": self.hostname,
            "pid": self.pid,
            "store_path": self.store_path,
            "is_head": self.is_head,
            "store_capacity": self.store_capacity,
            "spill_dir": self.spill_dir,
            "object_store": self.object_store,
            "store": attrs.asdict(self.store) if self.store is not None else {},
            "demand": [attrs.asdict(item) for item in self.demand],
            "state": self.state,
            "died_at": self.died_at,
            "death_reason": self.death_reason,
        }


@attrs.define(eq=False)
class HeadService:
    """Membership and health of nodes; the resource view every node spills back with."""

    session_dir: str
    address: str
    heartbeat_timeout_s: float = 10.0
    nodes: dict[str, NodeRecord] = attrs.Factory(dict)
    view_version: int = 1
    _kv: dict[str, bytes] = attrs.Factory(dict)
    drivers: dict[Connection, dict] = attrs.Factory(dict)
    services: Any = None  # the daemon's plugin services (cluster.contracts.ServiceRegistry)
    token: str = ""  # the cluster token (head services that accept other protocols check it)
    cluster_id: str = ""  # kept in the metadata store with the token (cluster.head.tables)
    metadata: Any = None  # the metadata store (cluster.contracts.MetadataStore)
    dashboard_host: str = "127.0.0.1"  # where the head's HTTP service should listen ...
    dashboard_port: int | None = None  # ... (None: 8265, or any free port if that is taken)
    dashboard_url: str | None = None  # set by the HTTP service once it listens
    autoscaling_config: str | None = None  # a cluster config (YAML) to autoscale by (cluster-autoscaler)
    # Called with each NodeRecord the head declares dead (plugins' head services add theirs).
    on_node_dead: list[Callable[[NodeRecord], None]] = attrs.Factory(list)
    # The nodes of earlier head processes of this cluster, declared dead as this one started.
    previous_head_nodes: list[NodeRecord] = attrs.Factory(list)
    placement: PlacementGroups = attrs.field(init=False)  # the placement groups (head/placement.py)
    _policy: Any = None  # the scheduling policy, for placing groups' bundles (made when first needed)

    def __attrs_post_init__(self) -> None:
        self.placement = PlacementGroups(self, self._scheduling_policy)
        self.on_node_dead.append(self.placement.node_dead)

    def pending_placement_groups(self) -> list[dict[str, Any]]:
        return self.placement.pending()

    def _scheduling_policy(self) -> Any:
        if self._policy is None:
            self._policy = make_scheduler(self)
        return self._policy
    # The last faults of the cluster (nodes' reports and node deaths), oldest first.
    failures: collections.deque[m.Failure] = attrs.Factory(lambda: collections.deque(maxlen=MAX_FAILURES))
    _nursery: trio.Nursery | None = None  # while it runs

    def handlers(self) -> dict[type, Any]:
        return {
            m.RegisterNode: self._register_node,
            m.Heartbeat: self._heartbeat,
            m.RegisterDriver: self._register_driver,
            m.ListNodes: self._list_nodes,
            m.ListDrivers: self._list_drivers,
            m.KvPut: self._kv_put,
            m.KvGet: self._kv_get,
            m.KvDelete: self._kv_delete,
            m.KvExists: self._kv_exists,
            m.ListFailures: self._list_failures,
            **self.placement.handlers(),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._recover()
        self.placement.recover()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.placement.run)
                task_status.started()
                await self._detect_failures()
        finally:
            self._nursery = None  # stopping: connections that close now say nothing of their nodes

    async def _detect_failures(self) -> None:
        every = min(1.0, self.heartbeat_timeout_s / 4)
        last = trio.current_time()
        while True:
            # Look again at the first node's deadline (just past it), or after ``every`` at the
            # latest: a silent node is found within moments of its deadline, not up to ``every`` late.
            due = min((n.last_seen + self.heartbeat_timeout_s for n in self.nodes.values() if n.state == "alive"),
                      default=last + every)
            await trio.sleep(min(every, max(0.005, due - trio.current_time() + 0.005)))
            now = trio.current_time()
            if now - last > self.heartbeat_timeout_s / 2:
                # The head itself stood still (stopped, its machine frozen): the silence was its
                # own, and the heartbeats waiting on its connections are read only now. Every
                # node gets one deadline from now, as after a restart.
                log.warning("head_stalled", seconds=round(now - last, 1))
                for node in self.nodes.values():
                    node.last_seen = max(node.last_seen, now)
            last = now
            for node in self.nodes.values():
                if node.state == "alive" and now - node.last_seen > self.heartbeat_timeout_s:
                    if node.returned:
                        self._mark_dead(node, f"missed its heartbeat deadline ({self.heartbeat_timeout_s:g}s)")
                    else:
                        self._mark_dead(node, f"it did not come back within {self.heartbeat_timeout_s:.0f}s "
                                              "of the head's restart")

    def _recover(self) -> None:
        """Take back the KV and the node table that earlier head processes of this cluster
        kept in the metadata store. A node known alive has until one heartbeat deadline from
        now to register again; the previous head's own node is dead now."""
        if self.metadata is None:
            return
        self._kv.update(tables.stored_kv(self.metadata))
        for row in tables.stored_nodes(self.metadata):
            record = NodeRecord.from_row(row)
            self.nodes[record.node_id] = record
        for record in list(self.nodes.values()):
            if record.is_head and record.state == "alive":
                self.previous_head_nodes.append(record)
                self._mark_dead(record, "the head restarted (that node's workers and objects went with "
                                        "the head process)")
        if self.nodes or self._kv:
            log.info("head_recovered", nodes=len(self.nodes), kv=len(self._kv),
                     waiting_for=sorted(n.node_id for n in self.nodes.values() if n.state == "alive"))

    def view(self) -> list[dict[str, Any]]:
        return [node.public() for node in self.nodes.values()]

    def _mark_dead(self, node: NodeRecord, reason: str) -> None:
        if node.state == "dead":
            return
        node.state = "dead"
        node.died_at = time.time()
        node.death_reason = reason
        node.available = {}
        self._save_node(node)
        self.view_version += 1
        self._broadcast_view()
        log.warning("node_dead", node_id=node.node_id, address=node.address, reason=reason)
        self.failures.append(m.Failure("node_dead", f"node {node.node_id} at {node.address}: {reason}",
                                       node.died_at or time.time(), node.node_id))
        for callback in self.on_node_dead:
            callback(node)
        if node.conn is not None and node.conn.nursery is not None:
            node.conn.nursery.cancel_scope.cancel()

    def _broadcast_view(self) -> None:
        """Membership changed: tell every node now rather than at its next heartbeat."""
        update = m.ViewUpdate(self.view_version, self.view())
        for node in self.nodes.values():
            if node.state == "alive" and node.conn is not None and not node.conn.closed:
                node.conn.send(update)

    # -- handlers --

    def _save_node(self, node: NodeRecord) -> None:
        if self.metadata is not None:
            self.metadata.put(tables.NODES_TABLE, node.node_id, tables.node_row(node))

    def _refusal(self, msg: m.RegisterNode) -> str | None:
        """Why a node may not register under its id (it must join as a new node), or None."""
        if msg.cluster_id and self.cluster_id and msg.cluster_id != self.cluster_id:
            return (f"this head runs cluster {self.cluster_id}, not cluster {msg.cluster_id} that node "
                    f"{msg.node_id} joined")
        known = self.nodes.get(msg.node_id)
        if known is not None and known.state == "dead":
            return f"node {msg.node_id} was declared dead ({known.death_reason})"
        return None

    def _register_node(self, conn: Connection, msg: m.RegisterNode, request_id: int) -> None:
        refusal = self._refusal(msg)
        if refusal is not None:
            log.warning("node_refused", node_id=msg.node_id, address=msg.address, reason=refusal)
            conn.reply_error(request_id, "dead", f"{refusal}; it may only come back as a new node")
            return
        available = dict(msg.resources if msg.available is None else msg.available)
        record = self.nodes.get(msg.node_id)
        returning = record is not None
        if record is None:
            record = self.nodes[msg.node_id] = NodeRecord(
                node_id=msg.node_id, address=msg.address, resources=msg.resources, available=available,
                labels=msg.labels, hostname=msg.hostname, pid=msg.pid, store_path=msg.store_path,
                is_head=msg.is_head, store_capacity=msg.store_capacity, spill_dir=msg.spill_dir,
                conn=conn, object_store=msg.object_store,
            )
        else:  # back: the head restarted, or its connection broke
            previous = record.conn
            record.address, record.resources, record.available = msg.address, msg.resources, available
            record.labels, record.hostname, record.pid = msg.labels, msg.hostname, msg.pid
            record.store_path, record.store_capacity, record.spill_dir = msg.store_path, msg.store_capacity, msg.spill_dir
            record.object_store, record.conn, record.returned = msg.object_store, conn, True
            record.last_seen = trio.current_time()
            if previous is not None and previous is not conn:
                previous.abort()  # (its close no longer speaks for the node: see _connection_closed)
        self._save_node(record)
        self.view_version += 1
        self._broadcast_view()
        self.placement.wake()  # (a node joined: a waiting group may fit now)
        conn.on_close.append(functools.partial(self._connection_closed, record))
        log.info("node_rejoined" if returning else "node_joined", node_id=msg.node_id, address=msg.address,
                 resources=msg.resources)
        conn.reply(request_id, m.NodeRegistered(self.session_dir, self.view(), self.view_version,
                                               self.cluster_id, self.heartbeat_timeout_s))

    def _connection_closed(self, record: NodeRecord, conn: Connection) -> None:
        if record.conn is not conn or self._nursery is None:  # (replaced since, or the head stops)
            return
        try:
            self._nursery.start_soon(self._connection_gone, record, conn)
        except RuntimeError:  # closed to new arrivals: the head is stopping
            pass

    async def _connection_gone(self, record: NodeRecord, conn: Connection) -> None:
        # One checkpoint first: when the head itself is stopping (every connection closes as
        # its daemon is cancelled), this never gets past it, and the node table keeps the
        # nodes alive for the head started next.
        await trio.sleep(0)
        if record.conn is conn:
            self._mark_dead(record, "connection to the node closed")

    def _heartbeat(self, conn: Connection, msg: m.Heartbeat, request_id: int) -> None:
        node = self.nodes.get(msg.node_id)
        if node is None or node.state == "dead":
            conn.reply_error(request_id, "dead", "this node was declared dead; restart it to rejoin")
            return
        node.last_seen = trio.current_time()
        node.store = msg.store
        node.demand = msg.demand
        self.failures.extend(msg.failures)
        if node.available != msg.available or (msg.resources is not None and node.resources != msg.resources):
            node.available = msg.available
            if msg.resources is not None:
                node.resources = msg.resources  # (placement groups' bundles come and go)
            self.view_version += 1
        if msg.view_version == self.view_version:
            conn.reply(request_id, m.HeartbeatAck(self.view_version, None))
        else:
            conn.reply(request_id, m.HeartbeatAck(self.view_version, self.view()))

    def _register_driver(self, conn: Connection, msg: m.RegisterDriver, request_id: int) -> None:
        log.info("driver_attached", pid=msg.pid, hostname=msg.hostname)
        if msg.address:
            self.drivers[conn] = {"kind": "driver", "pid": msg.pid, "hostname": msg.hostname,
                                  "address": msg.address}
            conn.on_close.append(lambda c: self.drivers.pop(c, None))
        job = msg.job or self._new_job()
        conn.reply(request_id, m.DriverRegistered(self.view(), self.session_dir, os.getpid(), self.cluster_id, job))

    def _new_job(self) -> int:
        """The next job number (from 1, as Ray's JobIDs), kept in the KV so a new head goes on
        counting where the old one stopped."""
        job = int.from_bytes(self._kv.get(JOB_COUNTER_KEY, b""), "little") + 1
        value = job.to_bytes(4, "little")
        self._kv[JOB_COUNTER_KEY] = value
        if self.metadata is not None:
            tables.put_kv(self.metadata, JOB_COUNTER_KEY, value)
        return job

    def _list_failures(self, conn: Connection, msg: m.ListFailures, request_id: int) -> None:
        conn.reply(request_id, list(self.failures))

    def _list_nodes(self, conn: Connection, msg: m.ListNodes, request_id: int) -> None:
        conn.reply(request_id, self.view())

    def _list_drivers(self, conn: Connection, msg: m.ListDrivers, request_id: int) -> None:
        conn.reply(request_id, list(self.drivers.values()))

    def _kv_put(self, conn: Connection, msg: m.KvPut, request_id: int) -> None:
        if not msg.overwrite and msg.key in self._kv:
            conn.reply(request_id, False)
            return
        self._kv[msg.key] = msg.value
        if self.metadata is not None:
            tables.put_kv(self.metadata, msg.key, msg.value)
        conn.reply(request_id, True)

    def kv_get(self, key: str) -> bytes | None:
        """The KV entry ``key``, or None (for head services; peers send ``KvGet``)."""
        return self._kv.get(key)

    def kv_put(self, key: str, value: bytes) -> None:
        """Set the KV entry ``key`` (for head services; peers send ``KvPut``)."""
        self._kv[key] = value
        if self.metadata is not None:
            tables.put_kv(self.metadata, key, value)

    def _kv_get(self, conn: Connection, msg: m.KvGet, request_id: int) -> None:
        conn.reply(request_id, self._kv.get(msg.key))

    def _kv_exists(self, conn: Connection, msg: m.KvExists, request_id: int) -> None:
        conn.reply(request_id, msg.key in self._kv)

    def _kv_delete(self, conn: Connection, msg: m.KvDelete, request_id: int) -> None:
        found = self._kv.pop(msg.key, None) is not None
        if found and self.metadata is not None:
            tables.delete_kv(self.metadata, msg.key)
        conn.reply(request_id, found)
