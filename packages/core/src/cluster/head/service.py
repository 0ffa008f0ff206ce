"""The head service: node membership, failure detection, the cluster's resource view, a KV store.

The head is on the control path only (nodes joining, heartbeats, drivers attaching); no task
passes through it.
"""

from __future__ import annotations

import collections
import os
import time
from collections.abc import Callable
from typing import Any

import attrs
import structlog
import trio

from cluster.wire import messages as m
from cluster.wire.connection import Connection

log = structlog.get_logger("cluster.head")

MAX_FAILURES = 200  # kept for `cluster status`


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
    death_reason: str = ""

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
    # The last faults of the cluster (nodes' reports and node deaths), oldest first.
    failures: collections.deque[m.Failure] = attrs.Factory(lambda: collections.deque(maxlen=MAX_FAILURES))

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
            m.ListFailures: self._list_failures,
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(min(1.0, self.heartbeat_timeout_s / 4))
            now = trio.current_time()
            for node in self.nodes.values():
                if node.state == "alive" and now - node.last_seen > self.heartbeat_timeout_s:
                    self._mark_dead(node, f"missed its heartbeat deadline ({self.heartbeat_timeout_s:g}s)")

    def view(self) -> list[dict[str, Any]]:
        return [node.public() for node in self.nodes.values()]

    def _mark_dead(self, node: NodeRecord, reason: str) -> None:
        if node.state == "dead":
            return
        node.state = "dead"
        node.died_at = time.time()
        node.death_reason = reason
        node.available = {}
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

    def _register_node(self, conn: Connection, msg: m.RegisterNode, request_id: int) -> None:
        record = NodeRecord(
            node_id=msg.node_id,
            address=msg.address,
            resources=msg.resources,
            available=dict(msg.resources),
            labels=msg.labels,
            hostname=msg.hostname,
            pid=msg.pid,
            store_path=msg.store_path,
            is_head=msg.is_head,
            store_capacity=msg.store_capacity,
            spill_dir=msg.spill_dir,
            conn=conn,
            object_store=msg.object_store,
        )
        self.nodes[msg.node_id] = record
        self.view_version += 1
        self._broadcast_view()
        conn.on_close.append(lambda _c: self._mark_dead(record, "connection to the node closed"))
        log.info("node_joined", node_id=msg.node_id, address=msg.address, resources=msg.resources)
        conn.reply(request_id, m.NodeRegistered(self.session_dir, self.view(), self.view_version,
                                               self.cluster_id))

    def _heartbeat(self, conn: Connection, msg: m.Heartbeat, request_id: int) -> None:
        node = self.nodes.get(msg.node_id)
        if node is None or node.state == "dead":
            conn.reply_error(request_id, "dead", "this node was declared dead; restart it to rejoin")
            return
        node.last_seen = trio.current_time()
        node.store = msg.store
        node.demand = msg.demand
        self.failures.extend(msg.failures)
        if node.available != msg.available:
            node.available = msg.available
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
        conn.reply(request_id, m.DriverRegistered(self.view(), self.session_dir, os.getpid(), self.cluster_id))

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
        conn.reply(request_id, True)

    def kv_get(self, key: str) -> bytes | None:
        """The KV entry ``key``, or None (for head services; peers send ``KvGet``)."""
        return self._kv.get(key)

    def _kv_get(self, conn: Connection, msg: m.KvGet, request_id: int) -> None:
        conn.reply(request_id, self._kv.get(msg.key))

    def _kv_delete(self, conn: Connection, msg: m.KvDelete, request_id: int) -> None:
        conn.reply(request_id, self._kv.pop(msg.key, None) is not None)
