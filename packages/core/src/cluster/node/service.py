"""The node service: owns a node's resources, its worker pool, its store; grants worker leases.

An owner asks for a lease for a resource shape. The node grants one when the shape fits its
available resources and a worker is idle; when it does not fit now but fits elsewhere in the
head's resource view, the answer is "spill back to node X"; otherwise the request waits here.
Workers are pre-started (one per CPU), replaced when they die, and added on demand.

The node keeps working while the head is away (docs/design/0013): its connection to the head
(a :class:`~cluster.wire.headlink.HeadLink`) is dialled again until the head is back, and the
node registers again as itself, with what it has free. If the head says this node was
declared dead meanwhile (it missed its deadline: stopped, cut off, or the restarted head's
grace ran out), the node drops that identity, as everyone else has: it kills its workers
(their tasks were or will be run elsewhere), empties its store (its objects were declared
lost), and joins as a new node, under a new id.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import secrets
import signal
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import structlog
import trio
from cluster_store import default_store_root

from cluster import runtime_env as renv
from cluster.errors import (
    ClusterConnectionError,
    ObjectLostError,
    RemoteCallError,
    RuntimeEnvSetupError,
)
from cluster.node.envs import NodeEnvs
from cluster.node.ledger import ResourceLedger
from cluster.objects.transfer import ChunkSource, pull_object
from cluster.plugins import make_object_store, make_scheduler
from cluster.resources import (
    add_shapes,
    default_object_store_memory,
    fits,
    format_shape,
    visible_gpu_ids,
)
from cluster.scheduling import (
    DEFAULT_PLACEMENT,
    NodeView,
    Placement,
    ResourceView,
    SchedulingRequest,
    group_resources,
    labels_to_wire,
    with_default_labels,
)
from cluster.wire import messages as m
from cluster.wire.connection import Connection, Dialer
from cluster.wire.headlink import HeadLink, head_wait_s

log = structlog.get_logger("cluster.node")

HEARTBEAT_S = 0.25
MAX_FAILURES_PER_HEARTBEAT = 50
INFEASIBLE_STALE_S = 10.0  # an infeasible shape counts as demand this long after its owner last asked
HEAD_SILENT_DEADLINES = 3  # heartbeat deadlines with no answer from the head before it counts as gone
# An idle worker of a runtime env is stopped after this long (the plain pool stays).
ENV_WORKER_IDLE_S = float(os.environ.get("CLUSTER_ENV_WORKER_IDLE_S", "10"))


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


@attrs.define(eq=False)
class WorkerProc:
    worker_id: str
    pid: int | None = None
    address: str | None = None
    conn: Connection | None = None
    state: str = "starting"  # starting | idle | leased | dead
    lease_id: int | None = None
    env_id: str = ""  # the runtime env it runs in ("": none, the plain pool)
    idle_since: float = 0.0


@attrs.define(eq=False)
class Lease:
    lease_id: int
    worker: WorkerProc
    shape: dict
    owner_conn: Connection
    released_cpu: float = 0.0  # CPU handed back while the worker waits in get
    detached: bool = False  # a detached actor's: kept when its owner goes
    gpu_ids: list[str] = attrs.Factory(list)  # the devices it holds (its share of each: its shape's GPU)


@attrs.define(eq=False)
class Bundles:
    """The bundles of one placement group this node holds, by index: set aside (prepared),
    then offered under the group's resource names (committed). A group placed again after a
    node died may add bundles here beside those it already has."""

    shapes: dict[int, dict[str, float]] = attrs.Factory(dict)
    committed: set[int] = attrs.Factory(set)

    def offered(self, pg_id: str, indexes: Iterable[int]) -> dict[str, float]:
        """What bundles ``indexes`` offer under the group's names."""
        return add_shapes(group_resources(pg_id, index, self.shapes[index]) for index in indexes)


@attrs.define(eq=False)
class LeaseRequest:
    conn: Connection
    request_id: int
    shape: dict
    spill_count: int
    detached: bool = False
    backlog: int = 1  # the owner's tasks of this shape waiting when it asked
    told_busy: bool = False  # the owner heard it must wait (so it may pipeline meanwhile)
    env_id: str = ""  # of the runtime env its worker must run in ("": the plain pool)
    placement: Placement = DEFAULT_PLACEMENT  # where it may run

    def tell_busy(self) -> None:
        if not self.told_busy:
            self.told_busy = True
            self.conn.send(m.Pending("busy"), self.request_id)


@attrs.define(eq=False)
class NodeService:
    """One node's resources, workers and store."""

    node_id: str
    address: str
    head_address: str
    token: str
    resources: dict
    session_dir: str
    is_head: bool = False
    labels: dict = attrs.Factory(dict)
    store_root: str | None = None
    store_capacity: int | None = None
    spill_dir: str | None = None  # None: spilling off
    object_store: str = "shared"  # "memory": every process keeps its objects (cluster_store.MemoryStore)
    ledger: ResourceLedger = attrs.field(init=False)
    store: Any = attrs.field(init=False)
    store_path: str = attrs.field(init=False)
    policy: Any = attrs.field(init=False)
    pool_size: int = attrs.field(init=False)
    max_workers: int = attrs.field(init=False)
    view: list = attrs.Factory(list)
    view_version: int = 0
    placing: ResourceView = attrs.field(init=False)  # the view indexed for the policy (this node's own ledger live)
    head_link: HeadLink | None = None  # the connection to the head, dialled again when it closes
    cluster_id: str = ""  # the cluster this node joined (the head says, as it registers)
    heartbeat_timeout_s: float = 10.0  # the head's (it says, as the node registers)
    # Called with (old id, new id) when this node drops an identity the head declared dead and
    # joins as a new node (plugins stop what they ran for the old one).
    on_new_identity: list[Callable[[str, str], None]] = attrs.Factory(list)
    workers: dict[str, WorkerProc] = attrs.Factory(dict)
    leases: dict[int, Lease] = attrs.Factory(dict)
    _queue: collections.deque = attrs.Factory(collections.deque)
    _lease_ids: Any = attrs.Factory(lambda: itertools.count(1))
    _nursery: trio.Nursery | None = None
    _shutting_down: bool = False
    _workers_gone: trio.Event = attrs.Factory(trio.Event)  # shutting down, and the last worker exited
    chunks: Any = attrs.field(init=False)  # serves our objects' chunks to pulling nodes
    _dialer: Any = None  # the connections we dial (other nodes, owners)
    _fetches: dict = attrs.Factory(dict)  # object id -> [trio.Event, error message or None]
    transfers: dict = attrs.Factory(lambda: {"pulled": 0, "pulled_bytes": 0, "served_chunks": 0})
    _drop_every: int = attrs.field(init=False, default=0)
    zygote: Any = None
    _by_pid: dict = attrs.Factory(dict)
    services: Any = None  # the daemon's plugin services (cluster.contracts.ServiceRegistry)
    _infeasible: dict = attrs.Factory(dict)  # (shape, labels) -> (when last asked, backlog): fits no node now
    _retiring: set = attrs.Factory(set)  # ids of the workers of a dropped identity, until they exit
    _watchers: set = attrs.Factory(set)  # connections of owners told when a node dies (WatchNodes)
    _failures: list = attrs.Factory(list)  # of Failure: reported here, for the head's next heartbeat
    _retired_gone: trio.Event = attrs.Factory(trio.Event)  # set once none of them runs
    envs: NodeEnvs = attrs.field(init=False)  # the runtime envs made here
    _env_specs: dict[str, dict] = attrs.Factory(dict)  # env id -> the resolved env, as asked for
    _env_setups: dict[str, dict] = attrs.Factory(dict)  # env id -> what its workers enter (ready)
    _env_building: set[str] = attrs.Factory(set)
    bundles: dict[str, Bundles] = attrs.Factory(dict)  # placement group id -> its bundles here

    def __attrs_post_init__(self) -> None:
        self.ledger = ResourceLedger(dict(self.resources), visible_gpu_ids())
        root = self.store_root or str(default_store_root())
        if self.store_capacity is None:
            self.store_capacity = default_object_store_memory(root)
        self.store_path = os.path.join(root, f"cluster-{self.node_id}")
        self.store = make_object_store(self.store_path, self.info())
        self.chunks = ChunkSource(self.store)
        self.policy = make_scheduler(self)
        self._index_view()
        self.pool_size = max(1, int(self.resources.get("CPU", 1)))
        self.max_workers = self.pool_size * 4 + 8
        self.envs = NodeEnvs(os.path.join(self.session_dir, "runtime_resources"), self.node_id, self._kv_get)
        # Testing only: drop the connection of a pulling node after every N chunks served.
        self._drop_every = int(os.environ.get("CLUSTER_TESTING_DROP_PULL_EVERY", "0") or 0)

    @property
    def head_conn(self) -> Connection | None:
        """The connection to the head while there is one (plugins: see :meth:`head_connection`)."""
        return self.head_link.conn if self.head_link is not None else None

    async def head_connection(self) -> Connection:
        """The connection to the head; while the head is away, waits for it to come back (at
        most ``$CLUSTER_HEAD_WAIT_S``, then HeadUnreachableError)."""
        assert self.head_link is not None, "the node is not running"
        return await self.head_link.connection()

    def info(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "address": self.address, "store_path": self.store_path,
                "store_capacity": self.store_capacity, "spill_dir": self.spill_dir,
                "object_store": self.object_store}

    def handlers(self) -> dict[type, Any]:
        return {
            m.RequestLease: self._request_lease,
            m.ReturnLease: self._return_lease,
            m.RegisterWorker: self._register_worker,
            m.PullObject: self._pull_object,
            m.PullChunk: self._pull_chunk,
            m.FetchObject: self._fetch_object,
            m.ListWorkers: self._list_workers,
            m.DeleteObjects: self._delete_objects,
            m.WorkerBlocked: self._worker_blocked,
            m.WatchNodes: self._watch_nodes,
            m.ReportFailure: self._report_failure,
        }

    # ------------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._dialer = Dialer(self.token, "node", self._on_peer_message)
                self._dialer.nursery = nursery
                self.head_link = HeadLink(self.head_address, self.token, "node", self._on_head_message,
                                          on_connect=self._register)
                # Joining waits for a head that is not there yet (being started, or restarted).
                await nursery.start(functools.partial(self.head_link.run, first_wait_s=head_wait_s()))
                nursery.start_soon(self._zygote_events)
                for _ in range(self.pool_size):
                    self._spawn_worker()
                nursery.start_soon(self._heartbeat_loop)
                nursery.start_soon(self._reap_env_workers)
                log.info("node_started", node_id=self.node_id, address=self.address, resources=self.resources)
                task_status.started()
        finally:
            self._shutting_down = True
            with trio.CancelScope(shield=True):
                await self._stop_workers()
                self.store.destroy()

    async def _register(self, conn: Connection) -> None:
        """Register with the head on a new connection: as this node (joining, or back after the
        head restarted or the connection broke), or as a new node if the head declared this
        one dead (or is another cluster's now)."""
        while True:
            try:
                reply = await conn.request(m.RegisterNode(
                    self.node_id, self.address, self.resources, self.labels, socket.gethostname(),
                    os.getpid(), self.store_path, self.is_head, self.store_capacity, self.spill_dir,
                    self.object_store, available=dict(self.ledger.available), cluster_id=self.cluster_id,
                ))
            except RemoteCallError as exc:
                if exc.kind != "dead":
                    raise
                await self._become_new_node(str(exc))
                continue
            break
        if self.cluster_id and reply.cluster_id != self.cluster_id:
            log.warning("cluster_changed", was=self.cluster_id, now=reply.cluster_id)
        self.cluster_id = reply.cluster_id
        self.heartbeat_timeout_s = reply.heartbeat_timeout_s
        self._apply_view(reply.view, reply.version, fresh=True)  # (a restarted head counts versions anew)
        if self.head_link is not None and self.head_link.outages:
            log.info("node_registered_again", node_id=self.node_id, head=self.head_address)
        self._pump()

    async def _become_new_node(self, reason: str) -> None:
        """Drop the identity the head declared dead, as everyone else has: kill its workers
        (their owners run their tasks elsewhere), empty the store (its objects were declared
        lost), then take a new node id. Resources held by plugins stay held until they let go."""
        old = self.node_id
        log.warning("node_rejoining_as_new", node_id=old, reason=reason)
        for request in self._queue:
            if not request.conn.closed:
                request.conn.reply_error(request.request_id, "stopping", f"node {old} was declared dead; "
                                         "it joins the cluster again as a new node")
        self._queue.clear()
        for lease in self.leases.values():
            self._release(lease)
        self.leases.clear()
        retired, self.workers = list(self.workers.values()), {}
        self._retiring.update(worker.worker_id for worker in retired)  # (those starting are killed as they come up)
        for worker in retired:
            self._kill(worker)
        if self._retiring:
            self._retired_gone = trio.Event()
            with trio.move_on_after(5):  # none may write into the store once it is emptied
                await self._retired_gone.wait()
        self.store.destroy()
        self.node_id = self.envs.node_id = secrets.token_hex(8)
        # The same directory, empty now: the node's other processes (a driver attached to it)
        # find it where they look, and the daemon's record of it for `cluster stop` holds.
        self.store = make_object_store(self.store_path, self.info())
        self.chunks = ChunkSource(self.store)
        self._infeasible.clear()
        for callback in self.on_new_identity:
            callback(old, self.node_id)
        for _ in range(self.pool_size):
            self._spawn_worker()
        log.info("node_new_identity", node_id=self.node_id, was=old, store_path=self.store_path)

    def _on_head_message(self, conn: Connection, msg: Any, request_id: int) -> None:
        if isinstance(msg, m.ViewUpdate):
            self._apply_view(msg.view, msg.version)
            return
        if isinstance(msg, m.PrepareBundles):
            answer = self._prepare_bundles(msg)
            conn.reply(request_id, answer if answer is not True or not msg.commit else self._commit_bundles(msg.pg_id))
        elif isinstance(msg, m.CommitBundles):
            conn.reply(request_id, self._commit_bundles(msg.pg_id))
        elif isinstance(msg, m.ReturnBundles):
            if msg.indexes is None:
                self._return_bundles(msg.pg_id)
            else:
                self._unprepare_bundles(msg.pg_id, msg.indexes)
            conn.reply(request_id, None)
        else:
            conn.reply_error(request_id, "unexpected", f"node does not handle {type(msg).__name__} from the head")

    # -- placement groups' bundles (two phases, driven by the head: docs/design/0018) --

    def _prepare_bundles(self, msg: m.PrepareBundles) -> bool | str:
        """Set the bundles aside, all or none: True, or why not."""
        held = self.bundles.setdefault(msg.pg_id, Bundles())
        new = {i: dict(shape) for i, shape in zip(msg.indexes, msg.shapes, strict=True) if i not in held.shapes}
        wanted = add_shapes(new.values())
        if self._shutting_down or not self.ledger.take(wanted):
            if not held.shapes:
                del self.bundles[msg.pg_id]
            return f"node {self.node_id} has no room for {format_shape(wanted)} now"
        held.shapes.update(new)
        return True

    def _commit_bundles(self, pg_id: str) -> bool:
        bundles = self.bundles.get(pg_id)
        if bundles is None:
            return False
        fresh = [i for i in bundles.shapes if i not in bundles.committed]
        if fresh:
            bundles.committed.update(fresh)
            self.ledger.add(bundles.offered(pg_id, fresh))
            log.debug("bundles_committed", pg_id=pg_id, bundles=sorted(fresh))
            self._pump()
        return True

    def _unprepare_bundles(self, pg_id: str, indexes: list[int]) -> None:
        """Give back bundles set aside in a try that failed (those not committed yet)."""
        bundles = self.bundles.get(pg_id)
        if bundles is None:
            return
        back = [bundles.shapes.pop(i) for i in indexes if i in bundles.shapes and i not in bundles.committed]
        self.ledger.give_back(add_shapes(back))
        if not bundles.shapes:
            del self.bundles[pg_id]
        self._pump()

    def _return_bundles(self, pg_id: str) -> None:
        """Give a group's bundles back: the workers leased on them are stopped (what runs in a
        removed group ends with it, as in Ray), and requests waiting for them are refused."""
        bundles = self.bundles.pop(pg_id, None)
        if bundles is None:
            return
        suffix = "_" + pg_id
        if bundles.committed:
            for lease in [lease for lease in self.leases.values() if any(k.endswith(suffix) for k in lease.shape)]:
                del self.leases[lease.lease_id]
                self._release(lease)
                lease.worker.lease_id = None
                self._kill(lease.worker)
            self.ledger.remove(bundles.offered(pg_id, bundles.committed))
        self.ledger.give_back(add_shapes(bundles.shapes.values()))
        still = collections.deque()
        for request in self._queue:
            if any(name.endswith(suffix) for name in request.shape):
                if not request.conn.closed:
                    request.conn.reply(request.request_id, m.LeaseInfeasible(
                        f"placement group {pg_id} was removed", unschedulable=True, group_removed=True))
            else:
                still.append(request)
        self._queue = still
        log.debug("bundles_returned", pg_id=pg_id, bundles=sorted(bundles.shapes))
        self._pump()

    def _apply_view(self, view: list[dict[str, Any]], version: int, fresh: bool = False) -> None:
        """A newer resource view from the head: nodes it declared dead since the last one are
        announced to every watching owner (whose tasks and objects there are gone), and our
        connections to them are dropped (a partitioned node's would hang rather than close)."""
        if version <= self.view_version and not fresh:
            return
        was_alive = {node["node_id"] for node in self.view if node["state"] == "alive"}
        self.view, self.view_version = view, version
        self._index_view()
        live = [[n["node_id"], n["address"]] for n in view if n["state"] == "alive"]
        for node in view:
            if node["state"] != "alive" and node["node_id"] in was_alive and node["node_id"] != self.node_id:
                reason = node.get("death_reason") or "declared dead by the head"
                log.warning("peer_node_dead", node_id=node["node_id"], address=node["address"], reason=reason)
                conn = self._dialer.open(node["address"]) if self._dialer is not None else None
                if conn is not None:
                    conn.abort()
                announcement = m.NodeDied(node["node_id"], node["address"], reason, live)
                for watcher in list(self._watchers):
                    if not watcher.closed:
                        watcher.send(announcement)
        self._pump()

    def _index_view(self) -> None:
        """The policy's view of the cluster, from the head's: this node's own entry is its
        ledger itself, so what it grants meanwhile shows at once (and its labels, Ray's default
        ``ray.io/node-id`` among them)."""
        nodes = [NodeView.of(r) for r in self.view if r["state"] == "alive" and r["node_id"] != self.node_id]
        nodes.append(NodeView(self.node_id, self.address, self.ledger.total, self.ledger.available,
                              with_default_labels(self.labels, self.node_id, self.ledger.total)))
        self.placing = ResourceView(nodes, self.node_id)

    def _report_failure(self, conn: Connection, msg: m.ReportFailure, request_id: int) -> None:
        if len(self._failures) < MAX_FAILURES_PER_HEARTBEAT:  # (a storm is summed up by the first ones)
            self._failures.append(attrs.evolve(msg.failure, when=time.time(), node_id=self.node_id))

    def _watch_nodes(self, conn: Connection, msg: m.WatchNodes, request_id: int) -> None:
        if conn not in self._watchers:
            self._watchers.add(conn)
            conn.on_close.append(self._watchers.discard)

    def demand(self) -> list[m.DemandItem]:
        """Work waiting here for resources, by shape: what the autoscaler sizes the cluster by.

        Per owner and shape, the larger of its queued lease requests and the backlog its newest
        request reported (an owner asks for a few leases at a time however many tasks wait);
        shapes no node can fit count while their owners keep asking.
        """
        per_owner: dict[tuple, list[int]] = {}  # -> [queued requests, backlog of the newest]
        for request in self._queue:
            key = (id(request.conn), tuple(sorted(request.shape.items())), request.placement.labels)
            queued = per_owner.setdefault(key, [0, 0])
            queued[0] += 1
            queued[1] = request.backlog
        by_shape: dict[tuple, int] = {}
        for (_, shape, labels), entry in per_owner.items():
            by_shape[(shape, labels)] = by_shape.get((shape, labels), 0) + max(entry)
        out = [m.DemandItem(dict(shape), count, labels=labels_to_wire(labels)) for (shape, labels), count in by_shape.items()]
        now = time.monotonic()
        for (shape, labels), (when, backlog) in list(self._infeasible.items()):
            if now - when > INFEASIBLE_STALE_S:
                del self._infeasible[(shape, labels)]
            else:
                out.append(m.DemandItem(dict(shape), backlog, infeasible=True, labels=labels_to_wire(labels)))
        return out

    def store_stats(self) -> m.StoreStats:
        if hasattr(self.store, "stats"):
            s = self.store.stats()
            return m.StoreStats(used=s.bytes, objects=s.objects, spilled=s.spilled_bytes,
                                spilled_objects=s.spilled_objects, copies=s.secondary_objects,
                                copies_bytes=s.secondary_bytes, pooled_bytes=s.pooled_bytes, **self.transfers)
        objects, used = self.store.usage()  # a third-party store with the basic interface
        spilled_objects, spilled = self.store.spilled() if hasattr(self.store, "spilled") else (0, 0)
        return m.StoreStats(used=used, objects=objects, spilled=spilled, spilled_objects=spilled_objects,
                            **self.transfers)

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(HEARTBEAT_S)
            conn = self.head_conn
            if conn is None:
                continue  # the head is away: the link dials it again, and we register again
            failures, self._failures = self._failures, []
            # A head silent this long has gone without closing (its machine vanished): drop the
            # connection and dial again. Longer than the head's own deadline: a head that was only
            # stopped reads the waiting heartbeats when it resumes (and forgives its own silence),
            # while a connection dropped here would have it declare this node dead at once.
            with trio.move_on_after(HEAD_SILENT_DEADLINES * self.heartbeat_timeout_s) as silent:
                try:
                    ack = await conn.request(
                        m.Heartbeat(self.node_id, self.ledger.available, self.view_version, self.store_stats(),
                                    self.demand(), failures, self.ledger.total)
                    )
                except ClusterConnectionError:
                    continue  # it closed: the link dials the head again
                except RemoteCallError as exc:
                    if exc.kind != "dead":
                        raise
                    log.warning("declared_dead", node_id=self.node_id, reason=str(exc))
                    conn.abort()  # registering again, it is told the same, and joins as a new node
                    continue
            if silent.cancelled_caught:  # the head is gone without closing (cut off, stopped)
                log.warning("head_silent", head=self.head_address,
                            seconds=HEAD_SILENT_DEADLINES * self.heartbeat_timeout_s)
                conn.abort()
                continue
            if ack.view is not None:
                self._apply_view(ack.view, ack.version)

    # -------------------------------------------------------------------------- workers

    def _spawn_worker(self, env_id: str = "") -> None:
        worker_id = secrets.token_hex(8)
        config = {
            "token": self.token,
            "head_address": self.head_address,
            "node": self.info(),
            "worker_id": worker_id,
            "log_dir": os.path.join(self.session_dir, "logs"),
        }
        if env_id:
            config["runtime_env"] = self._env_setups[env_id]
        self.workers[worker_id] = WorkerProc(worker_id, env_id=env_id)
        log_path = os.path.join(self.session_dir, "logs", f"worker-{worker_id}.out")
        self.zygote.spawn(worker_id, config, log_path)

    async def _zygote_events(self) -> None:
        async for event in self.zygote.events():
            if type(event) is m.WorkerSpawned:
                worker = self.workers.get(event.worker_id)
                if worker is not None:
                    worker.pid = event.pid
                    self._by_pid[event.pid] = worker
                elif event.worker_id in self._retiring:  # asked for by an identity since dropped
                    worker = self._by_pid[event.pid] = WorkerProc(event.worker_id, event.pid)
                    self._kill(worker)
            elif type(event) is m.WorkerExited:
                worker = self._by_pid.pop(event.pid, None)
                if worker is not None and worker.worker_id in self._retiring:
                    self._retiring.discard(worker.worker_id)
                    if not self._retiring:
                        self._retired_gone.set()
                elif worker is not None:
                    self._worker_exited(worker, event.code)
        if not self._shutting_down:
            log.error("zygote_exited")
            self._nursery.cancel_scope.cancel()

    def _kill(self, worker: WorkerProc) -> None:
        worker.state = "dead"
        if worker.pid is not None:
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _worker_exited(self, worker: WorkerProc, code: int) -> None:
        self.workers.pop(worker.worker_id, None)
        previous = worker.state
        worker.state = "dead"
        if self._shutting_down:
            if not self.workers:
                self._workers_gone.set()
            return
        log.warning("worker_exited", worker_id=worker.worker_id, pid=worker.pid, code=code, state=previous)
        if worker.lease_id is not None:
            lease = self.leases.pop(worker.lease_id, None)
            if lease is not None:
                self._release(lease)
        if not worker.env_id and sum(1 for w in self.workers.values() if not w.env_id) < self.pool_size:
            self._spawn_worker()
        self._pump()

    def _register_worker(self, conn: Connection, msg: m.RegisterWorker, request_id: int) -> None:
        worker = self.workers.get(msg.worker_id)
        if worker is None:
            conn.reply_error(request_id, "unknown", "this node did not start that worker")
            return
        worker.address = msg.address
        worker.conn = conn
        worker.state = "idle"
        worker.idle_since = time.monotonic()
        conn.context = worker
        conn.reply(request_id, None)
        log.info("worker_ready", worker_id=msg.worker_id, pid=msg.pid, address=msg.address)
        if self._shutting_down and worker.pid is not None:  # it came up while we drain: stop it
            try:
                os.kill(worker.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self._pump()

    async def drain(self) -> None:
        """Take no more work, and return once every worker has exited: told to stop (SIGTERM),
        a worker finishes the tasks it was given, sends their results, and exits. The caller
        bounds the wait (the daemon's shutdown grace)."""
        log.info("node_draining", workers=len(self.workers), leases=len(self.leases))
        self._shutting_down = True
        for request in self._queue:
            if not request.conn.closed:
                request.conn.reply_error(request.request_id, "stopping", f"node {self.node_id} is stopping")
        self._queue.clear()
        self._terminate_workers()
        if self.workers:
            await self._workers_gone.wait()

    def _terminate_workers(self) -> None:
        """Ask every worker to stop (SIGTERM: it finishes what it was given, then exits)."""
        for worker in self.workers.values():
            if worker.pid is not None:
                try:
                    os.kill(worker.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    async def _stop_workers(self) -> None:
        """SIGTERM the workers; the zygote, seeing its pipe close, kills any that linger."""
        self._terminate_workers()
        self.zygote.close()
        with trio.move_on_after(5):
            await trio.to_thread.run_sync(_reap, self.zygote.pid, abandon_on_cancel=True)

    def _worker_blocked(self, conn: Connection, msg: m.WorkerBlocked, request_id: int) -> None:
        worker = self.workers.get(msg.worker_id)
        if worker is None or worker.lease_id is None:
            return
        lease = self.leases.get(worker.lease_id)
        if lease is None:
            return
        cpu = lease.shape.get("CPU", 0.0)
        if msg.blocked and not lease.released_cpu and cpu:
            lease.released_cpu = cpu
            self.ledger.lend(cpu)
            self._pump()
        elif not msg.blocked and lease.released_cpu:
            self.ledger.reclaim(lease.released_cpu)
            lease.released_cpu = 0.0

    # --------------------------------------------------------------------------- leases

    def _request_lease(self, conn: Connection, msg: m.RequestLease, request_id: int) -> None:
        if self._shutting_down:
            conn.reply_error(request_id, "stopping", f"node {self.node_id} is stopping")
            return
        request = LeaseRequest(conn, request_id, {k: float(v) for k, v in msg.shape.items()}, msg.spill_count,
                               msg.detached, max(1, msg.backlog), placement=Placement.from_wire(msg.placement))
        if msg.runtime_env:
            request.env_id = renv.env_id(msg.runtime_env)
            self._env_specs.setdefault(request.env_id, msg.runtime_env)
        decision = self.policy.decide(SchedulingRequest(request.shape, request.placement, request.spill_count),
                                      self.placing)
        if decision.action == "spill":
            conn.reply(request_id, m.LeaseSpill(decision.address))
            return
        if decision.action in ("infeasible", "unschedulable"):
            log.warning("lease_" + decision.action, shape=request.shape, reason=decision.reason)
            if decision.action == "infeasible":
                key = (tuple(sorted(request.shape.items())), request.placement.labels)
                self._infeasible[key] = (time.monotonic(), max(request.backlog, self._infeasible.get(key, (0, 0))[1]))
            conn.reply(request_id, m.LeaseInfeasible(decision.reason, decision.action == "unschedulable"))
            return
        if self._try_grant(request):
            return
        if conn not in self._watched_owners():
            conn.on_close.append(self._owner_lost)
        if not self.ledger.fits(request.shape):
            request.tell_busy()
        self._queue.append(request)
        self._maybe_spawn()

    def _watched_owners(self) -> set[Connection]:
        return {lease.owner_conn for lease in self.leases.values()} | {r.conn for r in self._queue}

    def _try_grant(self, request: LeaseRequest) -> bool:
        if request.conn.closed:
            return True  # nobody to grant to; drop it
        if not self.ledger.fits(request.shape):
            return False
        gpus = request.shape.get("GPU", 0.0)
        if gpus and not self.ledger.can_assign_gpus(gpus):
            return False  # (enough GPU in all, but split over devices: it waits for whole ones)
        env_id = request.env_id
        worker = next((w for w in self.workers.values() if w.state == "idle" and w.env_id == env_id), None)
        if worker is None:
            return False
        lease_id = next(self._lease_ids)
        self.ledger.take(request.shape)
        lease = Lease(lease_id, worker, request.shape, request.conn, detached=request.detached,
                      gpu_ids=self.ledger.assign_gpus(gpus) if gpus else [])
        self.leases[lease_id] = lease
        worker.state = "leased"
        worker.lease_id = lease_id
        if self._owner_lost not in request.conn.on_close:
            request.conn.on_close.append(self._owner_lost)
        request.conn.reply(request.request_id, m.LeaseGranted(lease_id, worker.address, worker.worker_id, self.node_id,
                                                              lease.gpu_ids))
        return True

    def _return_lease(self, conn: Connection, msg: m.ReturnLease, request_id: int) -> None:
        lease = self.leases.pop(msg.lease_id, None)
        if lease is None:
            return
        self._release(lease)
        worker = lease.worker
        worker.lease_id = None
        if worker.state == "leased":
            if msg.worker_ok:
                worker.state = "idle"
                worker.idle_since = time.monotonic()
            else:
                self._kill(worker)
        self._pump()

    # -- resources held by plugin services (a job's entrypoint, say) rather than a lease --

    def reserve(self, shape: dict[str, float]) -> bool:
        """Take ``shape`` out of this node's available resources if it fits now."""
        return self.ledger.take(shape)

    def unreserve(self, shape: dict[str, float]) -> None:
        """Give back what ``reserve`` took; queued lease requests may now be granted."""
        self.ledger.give_back(shape)
        self._pump()

    def _release(self, lease: Lease) -> None:
        self.ledger.give_back(lease.shape, lent_cpu=lease.released_cpu)
        if lease.gpu_ids:
            self.ledger.release_gpus(lease.gpu_ids, lease.shape.get("GPU", 0.0))

    def _owner_lost(self, conn: Connection) -> None:
        """An owner went away: take back its leases (killing workers that may still run its tasks)."""
        if self._shutting_down:
            return
        for lease in [lease for lease in self.leases.values() if lease.owner_conn is conn and not lease.detached]:
            del self.leases[lease.lease_id]
            self._release(lease)
            lease.worker.lease_id = None
            self._kill(lease.worker)
        self._queue = collections.deque(r for r in self._queue if r.conn is not conn)
        self._pump()

    def _pump(self) -> None:
        """Grant queued requests that fit now; spill those another node can take."""
        if not self._queue:
            return
        still = collections.deque()
        for request in self._queue:
            if self._try_grant(request):
                continue
            if not self.ledger.fits(request.shape):
                # Asked again as if new (spill count 0): the request waited, and a node with
                # room may be new (one the autoscaler just added); the count only stops
                # ping-pong on arrival. Only a spill is acted on: it was placed here already.
                decision = self.policy.decide(SchedulingRequest(request.shape, request.placement), self.placing)
                if decision.action == "spill":
                    request.conn.reply(request.request_id, m.LeaseSpill(decision.address))
                    continue
            if not self.ledger.fits(request.shape) and not request.conn.closed:
                request.tell_busy()  # the grants before it took what it was waiting for
            still.append(request)
        self._queue = still
        self._maybe_spawn()

    def _maybe_spawn(self) -> None:
        if self._shutting_down:
            return
        # Workers for the queued requests that fit in what is free, all together (not each on
        # its own: eight 1-CPU requests on a 2-CPU node need two workers, not eight), of the
        # runtime env each asks for.
        room = self.ledger.room()
        waiting: dict[str, int] = {}
        for request in self._queue:
            if fits(request.shape, room):
                waiting[request.env_id] = waiting.get(request.env_id, 0) + 1
                for name, amount in request.shape.items():
                    room[name] = room.get(name, 0.0) - amount
        for env_id, count in waiting.items():
            if env_id and env_id not in self._env_setups:
                if env_id not in self._env_building:
                    self._env_building.add(env_id)
                    self._nursery.start_soon(self._build_env, env_id, self._env_specs[env_id])
                continue
            need = count - sum(1 for w in self.workers.values()
                               if w.env_id == env_id and w.state in ("idle", "starting"))
            while need > 0:
                if len(self.workers) >= self.max_workers and not self._evict_idle_worker(env_id):
                    break
                self._spawn_worker(env_id)
                need -= 1

    def _evict_idle_worker(self, env_id: str) -> bool:
        """Stop an idle worker of another runtime env, to make room for one of ``env_id``."""
        plain = sum(1 for w in self.workers.values() if not w.env_id and w.state != "dead")
        for worker in sorted(self.workers.values(), key=lambda w: (not w.env_id, w.idle_since)):
            if worker.state == "idle" and worker.env_id != env_id and (worker.env_id or plain > self.pool_size):
                log.info("worker_evicted", worker_id=worker.worker_id, runtime_env=worker.env_id, for_env=env_id)
                self._kill(worker)
                return True
        return False

    # --------------------------------------------------------------------- runtime envs

    async def _kv_get(self, key: str) -> bytes | None:
        conn = await self.head_connection()
        value: bytes | None = await conn.request(m.KvGet(key))
        return value

    async def _build_env(self, env_id: str, env: dict) -> None:
        """Set up a runtime env on this node (once: queued requests for it wait meanwhile);
        then start its workers, or fail the requests that wait for it."""
        try:
            self._env_setups[env_id] = await self.envs.prepare(env, functools.partial(self._announce_env, env_id))
        except RuntimeEnvSetupError as exc:
            self._fail_env_requests(env_id, str(exc))
        except Exception as exc:  # the head went away meanwhile, a full disk: the asker hears why
            self._fail_env_requests(env_id, f"could not set up the runtime env on node {self.node_id}: {exc!r}")
        finally:
            self._env_building.discard(env_id)
        self._pump()

    def _announce_env(self, env_id: str, text: str) -> None:
        """Tell the owners waiting for env ``env_id`` how its setup goes (printed by drivers
        as their workers' output is)."""
        log.info("runtime_env_progress", env_id=env_id, text=text)
        line = m.LogLines("runtime_env", os.getpid(), "stderr", text)
        for conn in {r.conn for r in self._queue if r.env_id == env_id and not r.conn.closed}:
            conn.send(line)

    def _fail_env_requests(self, env_id: str, error: str) -> None:
        log.warning("runtime_env_failed", env_id=env_id, error=error)
        still = collections.deque()
        for request in self._queue:
            if request.env_id != env_id:
                still.append(request)
            elif not request.conn.closed:
                request.conn.reply(request.request_id, m.RuntimeEnvFailed(error))
        self._queue = still
        self._env_specs.pop(env_id, None)

    async def _reap_env_workers(self) -> None:
        """Stop workers of runtime envs idle longer than ENV_WORKER_IDLE_S (the plain pool stays)."""
        while True:
            await trio.sleep(min(1.0, ENV_WORKER_IDLE_S))
            now = time.monotonic()
            for worker in list(self.workers.values()):
                if worker.env_id and worker.state == "idle" and now - worker.idle_since > ENV_WORKER_IDLE_S:
                    log.info("env_worker_reaped", worker_id=worker.worker_id, runtime_env=worker.env_id)
                    self._kill(worker)

    # -------------------------------------------------------------------------- objects

    def _pull_object(self, conn: Connection, msg: m.PullObject, request_id: int) -> None:
        self.chunks.size(conn, msg, request_id)

    def _pull_chunk(self, conn: Connection, msg: m.PullChunk, request_id: int) -> None:
        self.transfers["served_chunks"] += 1
        if self._drop_every and self.transfers["served_chunks"] % self._drop_every == 0:
            self._nursery.start_soon(self._drop_when_flushed, conn)  # and never answer this one
            return
        self.chunks.chunk(conn, msg, request_id)

    @staticmethod
    async def _drop_when_flushed(conn: Connection) -> None:
        """Testing only: drop a connection once what it has queued has gone out."""
        while conn.sending:
            await trio.sleep(0.001)
        conn.abort()

    async def _connect(self, address: str, what: str) -> Connection:
        return await self._dialer.connect(address, what)

    def _on_peer_message(self, conn: Connection, msg: Any, request_id: int) -> None:
        conn.reply_error(request_id, "unexpected", f"node does not handle {type(msg).__name__} here")

    def _list_workers(self, conn: Connection, msg: m.ListWorkers, request_id: int) -> None:
        conn.reply(request_id, [
            {"kind": "worker", "pid": w.pid, "address": w.address, "node_id": self.node_id, "state": w.state,
             "runtime_env": w.env_id}
            for w in self.workers.values() if w.address and w.state != "dead"
        ])

    def _fetch_object(self, conn: Connection, msg: m.FetchObject, request_id: int) -> None:
        """Copy an object from another node into this node's store, once however many ask."""
        if self.store.contains(msg.object_id):
            conn.reply(request_id, None)
            return
        fetch = self._fetches.get(msg.object_id)
        if fetch is None:
            fetch = self._fetches[msg.object_id] = [trio.Event(), None]
            self._nursery.start_soon(self._run_fetch, msg, fetch)
        self._nursery.start_soon(self._answer_fetch, conn, request_id, fetch)

    async def _answer_fetch(self, conn: Connection, request_id: int, fetch: list) -> None:
        await fetch[0].wait()
        if fetch[1] is None:
            conn.reply(request_id, None)
        else:
            conn.reply_error(request_id, "lost", fetch[1])

    async def _run_fetch(self, msg: m.FetchObject, fetch: list) -> None:
        started = trio.current_time()
        try:
            size = await pull_object(self._connect, self.store, msg.object_id, msg.source, secondary=True)
            log.info("object_fetched", object_id=msg.object_id.hex(), size=size,
                     seconds=round(trio.current_time() - started, 3))
        except ObjectLostError as exc:
            fetch[1] = str(exc)
        except Exception as exc:  # e.g. the store is full: the asker gets the reason
            log.warning("fetch_failed", object_id=msg.object_id.hex(), source=msg.source, error=repr(exc))
            fetch[1] = f"could not copy object {msg.object_id.hex()} to node {self.node_id}: {exc}"
        else:
            self.transfers["pulled"] += 1
            self.transfers["pulled_bytes"] += size
        finally:
            del self._fetches[msg.object_id]
            fetch[0].set()
        if fetch[1] is None and msg.owner:
            await self._tell_owner(msg.object_id, msg.owner)

    async def _tell_owner(self, object_id: bytes, owner: str) -> None:
        """Register our copy with the object's owner, who deletes it with the object."""
        try:
            conn = await self._connect(owner, "the object's owner")
            still_owned = await conn.request(m.AddObjectLocation(object_id, self.address))
        except (ClusterConnectionError, RemoteCallError):
            still_owned = False  # the owner is gone, and its objects with it
        if not still_owned:
            self.chunks.forget(object_id)
            self.store.delete(object_id)

    def _delete_objects(self, conn: Connection, msg: m.DeleteObjects, request_id: int) -> None:
        for object_id in msg.object_ids:
            self.chunks.forget(object_id)
            self.store.delete(object_id)
