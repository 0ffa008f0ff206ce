"""The owner runtime of a driver or worker process: submits tasks, owns their results, fetches.

Each driver and each worker runs one :class:`Runtime`. Its network side is a trio event loop
in a background thread; the user's thread calls in through a few thread-safe entry points
(``submit``, ``get``, ``wait``, ``put``, ``cancel``). The hot path (DESIGN.md §4):

1. ``submit`` records the task, queues it and wakes the trio thread (one wake-up per batch);
2. the trio thread resolves ObjectRef arguments, then leases a worker for the task's resource
   shape from the local node daemon (which may answer "spill back to node X");
3. tasks are pushed straight to leased workers, a few in flight per worker, batched per frame;
4. workers answer on the same connection; small values arrive inline, large ones stay in the
   executing node's shared-memory store and only their location comes back;
5. a lease with no more work of its shape is returned to its node after a short linger.

The head is not on that path. A driver holds a connection to it (a
:class:`~cluster.wire.headlink.HeadLink`, a worker too once it first needs the head) that is
dialled again whenever it closes; what needs the head (named actors, ``nodes()``) waits for it
while it is away, bounded.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import itertools
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
import trio
from cluster_store.errors import ObjectStoreFullError as StoreFull

from cluster import runtime_env as renv
from cluster.context import current_namespace, current_task_id
from cluster.errors import (
    ClusterConnectionError,
    ClusterError,
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    ObjectStoreFullError,
    OwnerDiedError,
    ReferenceCountingAssertionError,
    RemoteCallError,
    RuntimeEnvSetupError,
    TaskCancelledError,
    TaskPlacementGroupRemoved,
    TaskUnschedulableError,
    WorkerCrashedError,
)
from cluster.objects import refs as object_ref_module
from cluster.objects import values as v
from cluster.objects.refs import ObjectRef
from cluster.objects.transfer import ChunkSource, pull_object
from cluster.owner import envs
from cluster.owner.actors import LIFETIME_SUFFIX, Actors, ActorState, HandleFields
from cluster.owner.generators import Streams
from cluster.owner.recovery import Recovery
from cluster.owner.references import KEEP, Borrow, ReferenceTable
from cluster.owner.tasks import (
    DEFAULT_NAMESPACE,
    DEFAULT_SHAPE,
    Lease,
    PendingTask,
    Shape,
    ShapeQueue,
)
from cluster.plugins import make_object_store
from cluster.resources import fits, format_shape
from cluster.scheduling import (
    AUTOSCALER_NODE_TYPES_KEY,
    DEFAULT_PLACEMENT,
    SPREAD,
    Placement,
    group_of,
    matches,
)
from cluster.wire import messages as m
from cluster.wire.connection import Connection, Dialer, run_connection
from cluster.wire.handshake import server_handshake
from cluster.wire.headlink import HeadLink
from cluster.wire.streams import open_local_listener, parse_address

if TYPE_CHECKING:
    from cluster.contracts import ObjectStore

NodeInfo = dict[str, Any]  # a node as the head's resource view shows it (NodeRecord.public)

log = structlog.get_logger("cluster.runtime")

LEASE_LINGER_S = 0.05  # keep an idle lease this long in case more work of its shape comes
PIPELINE_DEPTH = int(os.environ.get("CLUSTER_TASKS_IN_FLIGHT_PER_WORKER", "4"))
MAX_LEASE_REQUESTS = 8  # concurrent lease requests per resource shape
INFEASIBLE_RETRY_S = 1.0
BORROWER_CHECK_S = 2.0  # how often an owner checks that its borrowers' processes still exist
_NONE_ENTRY = v.serialize(None).inline_entry()  # the value of marker objects (owned_marker)
LOAD_ATTEMPTS = 4  # reads of a stored object, each after its owner recovered it, before giving up


class Runtime:
    """Owner runtime: one per driver or worker process."""

    def __init__(
        self,
        *,
        token: str,
        head_address: str,
        node: NodeInfo | None,
        role: str,
        listen_host: str | None = None,
    ) -> None:
        self.token = token
        self.head_address = head_address
        self.role = role
        # Where peers (workers of any node, other owners) reach this process; None: the host of
        # its node's address, which the node told the cluster it is reachable at.
        self.listen_host = listen_host
        self.address = ""
        self.executor: Any = None  # set by cluster.worker in worker processes
        self.log_sink: Any = None  # where LogLines from workers go (driver: the terminal)
        # The resolved runtime env of what this process submits when a task names none: the
        # driver's cluster.init(runtime_env=), a worker's own env (nested tasks inherit it).
        self.runtime_env: dict[str, Any] | None = None
        self._resolved_envs: dict[str, dict[str, Any] | None] = {}  # checked user env -> merged, resolved
        self._env_packages: set[str] = set()  # packages this process knows the head has
        self.nodes: list[NodeInfo] = []
        self.session_dir: str | None = None
        self._chunks: Any = None
        if node is not None:
            self._set_node(node)
        self._cv = threading.Condition(threading.Lock())
        self._values: dict[bytes, m.ValueEntry] = {}
        self._tasks: dict[bytes, PendingTask] = {}
        self.actors = Actors(self)
        self.streams = Streams(self)  # generator tasks: values streamed back as they are yielded
        self._queues: dict[Shape, ShapeQueue] = {}
        self._submitted: collections.deque[PendingTask] = collections.deque()
        self._wake_scheduled = False
        self._trio_waiters: dict[bytes, list[trio.Event]] = {}
        self._fetching: set[bytes] = set()
        self.references = ReferenceTable()  # who holds which object (its own lock)
        self.add_local_ref = self.references.add_local  # (ObjectRef calls it for every new ref)
        # Where copies of our objects are (besides their primary).
        self._locations: dict[bytes, set[str]] = {}
        # Refs inside our objects' values, kept alive while the container lives.
        self._contained: dict[bytes, list[ObjectRef]] = {}
        self._trio_thread: threading.Thread | None = None
        self._warned_infeasible: set[Shape] = set()
        self._ready_groups: set[str] = set()  # placement groups seen placed (their tasks need not ask again)
        self._owned: set[bytes] = set()
        self.recovery = Recovery(self)  # node deaths, lost objects, lineage
        self._loaders: concurrent.futures.ThreadPoolExecutor | None = None  # for futures of stored values
        self._namespace = ""  # of the actor names it creates and looks up (init(namespace=)); "": the default
        self._dialer = Dialer(token, role, self._on_message, self._on_message_fast)
        self._ids = itertools.count()
        # Task ids start with the job's number (4 bytes, as Ray's JobID): a driver's own, given by
        # the head; in a worker, that of the task running in the thread that submits.
        self.job = 0
        self._job_prefix = bytes(4)
        self._thread: threading.Thread | None = None
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._crashed: BaseException | None = None  # the trio thread died of this
        self._stopped = False
        self.node_conn: Connection | None = None
        self.cluster_id = ""  # the head says, as this driver registers
        self._head_link: HeadLink | None = None  # a driver's from the start; a worker's once it needs the head

    @property
    def namespace(self) -> str:
        """The namespace of actor names here: a task's caller's, else this process's own."""
        return current_namespace.get() or self._namespace or DEFAULT_NAMESPACE

    @namespace.setter
    def namespace(self, value: str) -> None:
        self._namespace = value

    def caller_namespace(self) -> str:
        """The namespace a task submitted now carries to its worker ("": the default)."""
        return current_namespace.get() or self._namespace

    def _set_node(self, node: NodeInfo) -> None:
        self.node = node
        self.node_id: str = node["node_id"]
        self.node_address: str = node["address"]
        self.store: ObjectStore = make_object_store(node["store_path"], node)
        # Where our stored objects live: the node's shared store, or (for a private store,
        # e.g. cluster_store.MemoryStore) this process, which then serves their chunks itself.
        self.private_store = not getattr(self.store, "shared", True)
        self.store_node_id = f"{self.node_id}/{os.getpid()}" if self.private_store else self.node_id
        self.store_address = self.node_address
        self._serve_private_store()

    def _serve_private_store(self) -> None:
        """With a private store, this process serves its objects' chunks (once it listens)."""
        if getattr(self, "private_store", False) and self.address and self._chunks is None:
            self.store_address = self.address
            self._chunks = ChunkSource(self.store)

    # ----------------------------------------------------------------- lifecycle (user thread)

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._thread_main, name="cluster-runtime", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ClusterConnectionError(f"the cluster runtime did not start within {timeout:.0f}s")
        if self._start_error is not None:
            raise self._start_error
        object_ref_module._runtime = self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._loaders is not None:
            self._loaders.shutdown(wait=False, cancel_futures=True)
        if object_ref_module._runtime is self:
            object_ref_module._runtime = None
        if self._trio_token is not None and self._nursery is not None:
            try:
                trio.from_thread.run_sync(self._return_all_leases, trio_token=self._trio_token)
                trio.from_thread.run_sync(self._nursery.cancel_scope.cancel, trio_token=self._trio_token)
            except trio.RunFinishedError:
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            if not self._ready.is_set():
                self._start_error = _first_error(exc)
                self._ready.set()
            else:
                log.error("runtime_crashed", error=repr(exc), exc_info=True)
                self._crashed = _first_error(exc)
                with self._cv:
                    self._cv.notify_all()

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = self._dialer.nursery = nursery
            self._trio_token = trio.lowlevel.current_trio_token()
            self._trio_thread = threading.current_thread()
            if self.role == "driver":  # its node first: the driver listens where its node is reached
                first = await self._connect(self.head_address, "the cluster")
                self.nodes = await first.request(m.ListNodes())
                first.abort()  # (the head link below is the driver's connection to the head)
                self._set_node(choose_local_node(self.nodes, self.head_address))
            host = self.listen_host or parse_address(self.node_address)[0]
            listeners = await trio.open_tcp_listeners(0, host=host)
            port = listeners[0].socket.getsockname()[1]
            self.address = f"{host}:{port}"
            local = open_local_listener(self.address)
            if local is not None:
                listeners.append(local)
            self._serve_private_store()
            nursery.start_soon(trio.serve_listeners, self._serve_incoming, listeners)
            if self.role == "driver":
                self._head_link = HeadLink(self.head_address, self.token, self.role, self._on_message,
                                           on_connect=self._register_driver, say=_tell_user)
                await nursery.start(self._head_link.run)  # (the first connect does not wait)
            self.node_conn = await self._connect(self.node_address, "the node daemon")
            self.node_conn.send(m.WatchNodes())  # (so that we hear of nodes that die: _node_died)
            nursery.start_soon(self._linger_loop)
            nursery.start_soon(self._borrower_sweep)
            self._ready.set()

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a task in the runtime's nursery (on the trio thread)."""
        nursery = self._nursery
        assert nursery is not None, "the runtime is not running"
        nursery.start_soon(fn, *args)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run a sync function on the trio thread and return its result."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self._trio_token)

    def call_async(self, fn: Any, *args: Any) -> Any:
        """Run an async function on the trio thread and return its result."""
        return trio.from_thread.run(fn, *args, trio_token=self._trio_token)

    def resolve_env(self, user_env: Any) -> dict[str, Any] | None:
        """The resolved runtime env of a task or actor whose own ``runtime_env`` is
        ``user_env`` (ConfigError if it is invalid): its local directories uploaded, merged onto
        this process's default env (Ray's rules); None: the plain workers. User thread."""
        if not user_env:
            return self.runtime_env
        checked = renv.check(user_env)
        key = renv.canonical(checked)
        if key not in self._resolved_envs:
            resolved = self.call_async(envs.resolve, self.kv_request, checked, self._env_packages)
            self._resolved_envs[key] = renv.merge(self.runtime_env, resolved) or None
        return self._resolved_envs[key]

    def list_nodes(self) -> list[NodeInfo]:
        """The cluster's nodes as the head sees them (waits, bounded, while the head is away)."""
        nodes: list[NodeInfo] = self.call_async(self.head_request, m.ListNodes())
        return nodes

    def report_failure(self, kind: str, what: str) -> None:
        """Tell the cluster of a fault met here (``cluster status`` lists the last ones); trio thread."""
        conn = self.node_conn
        if conn is not None and not conn.closed:
            conn.send(m.ReportFailure(m.Failure(kind, what)))

    # ------------------------------------------------------------------ the head (trio)

    @property
    def head_conn(self) -> Connection | None:
        """The connection to the head, while there is one."""
        return self._head_link.conn if self._head_link is not None else None

    async def head_request(self, msg: m.Message) -> Any:
        """Ask the head ``msg`` (one that means the same sent twice); while the head is away,
        wait for it (at most ``$CLUSTER_HEAD_WAIT_S``, then HeadUnreachableError)."""
        if self._head_link is None:  # a worker: it connects the first time it needs the head
            self._head_link = HeadLink(self.head_address, self.token, self.role, self._on_message)
            self.spawn(functools.partial(self._head_link.run, first_wait_s=None))
        return await self._head_link.request(msg)

    async def _register_driver(self, conn: Connection) -> None:
        """Register with the head, on each connection to it: the head lists this driver again
        after it restarted; if the node this driver used is gone with it (the head's own), the
        driver moves to the node that replaced it."""
        reply = await conn.request(m.RegisterDriver(os.getpid(), socket.gethostname(), self.address, self.job))
        if self.cluster_id and reply.cluster_id != self.cluster_id:
            _tell_user(f"the head at {self.head_address} came back as another cluster ({reply.cluster_id}, "
                       f"was {self.cluster_id}): what the old one kept (actor names, jobs) is gone")
        self.cluster_id = reply.cluster_id
        if reply.job and not self.job:
            self.job = reply.job
            self._job_prefix = reply.job.to_bytes(4, "little")
        self.nodes = reply.nodes
        if self.session_dir is None:
            self.session_dir = reply.session_dir
        mine = getattr(self, "node_id", None)
        if mine is not None and not any(n["node_id"] == mine and n["state"] == "alive" for n in reply.nodes):
            self.spawn(self._move_to_new_local_node, mine)

    async def _move_to_new_local_node(self, old: str) -> None:
        """This driver's node is dead (it was the previous head process's): use the one on this
        machine now, once it has joined (the head's new node registers just after the head)."""
        deadline = trio.current_time() + 30
        try:
            while True:
                nodes: list[NodeInfo] = await self.head_request(m.ListNodes())
                try:
                    node = choose_local_node(nodes, self.head_address)
                except ClusterConnectionError:
                    node = None
                if node is not None and node["node_id"] != old:
                    break
                if trio.current_time() > deadline:
                    log.warning("no_local_node", was=old, head=self.head_address)
                    return
                await trio.sleep(0.2)  # (it registers within moments of the head's start)
            self._set_node(node)
            self.node_conn = await self._connect(self.node_address, "the node daemon")
            self.node_conn.send(m.WatchNodes())
        except ClusterConnectionError as exc:  # the head (or that node) went away again: the next
            log.warning("driver_not_moved", was=old, error=str(exc))  # registration tries again
            return
        log.info("driver_moved_node", was=old, node_id=self.node_id, address=self.node_address)

    def soon(self, fn: Any, *args: Any) -> None:
        """Schedule a sync function on the trio thread without waiting."""
        token = self._trio_token
        assert token is not None, "the runtime is not running"
        token.run_sync_soon(fn, *args)

    # ------------------------------------------------------------------ connections (trio)

    async def _connect(self, address: str, what: str) -> Connection:
        return await self._dialer.connect(address, what)

    async def _serve_incoming(self, stream: trio.SocketStream) -> None:
        try:
            peer_role = await server_handshake(stream, self.token, self.role)
        except Exception as exc:
            log.warning("refused_connection", error=str(exc))
            await trio.aclose_forcefully(stream)
            return
        await run_connection(stream, "incoming", peer_role, self._on_message, self._on_message_fast)

    def _on_message_fast(self, conn: Connection, msg: Any, request_id: int) -> bool:
        """The hot messages, handled in the connection's reader thread (no trip through trio):
        calls pushed to this worker, and plain results of actor calls. False: not here."""
        kind = type(msg)
        if kind is m.PushTasks:
            if self.executor is None:
                return False
            self.executor.push(conn, msg.tasks)
            return True
        if kind is m.TaskResults and type(conn.context) in (ActorState, Lease):
            return self._on_results_fast(conn.context, msg.results)
        if kind is m.GeneratorItem:
            self.streams.on_item(conn, msg)
            return True
        return False

    def _on_message(self, conn: Connection, msg: Any, request_id: int) -> None:
        kind = type(msg)
        if kind is m.TaskResults:
            self._on_results(conn, msg.results)
        elif kind is m.PushTasks:
            self.executor.push(conn, msg.tasks)
        elif kind is m.GeneratorItem:
            self.streams.on_item(conn, msg)
        elif kind is m.GeneratorConsumed or kind is m.GeneratorStop:
            if self.executor is not None:
                self.executor.stream_signal(msg)
        elif kind is m.LogLines:
            if self.log_sink is not None:
                self.log_sink(msg)
        elif kind is m.GetObject:
            self.spawn(self._serve_get_object, conn, request_id, msg.object_id)
        elif kind is m.StealTasks:
            conn.reply(request_id, self.executor.steal(conn, msg.max_tasks) if self.executor is not None else [])
        elif kind is m.WorkerBlocked:
            self._on_worker_blocked(conn, msg.blocked)
        elif kind is m.CancelTask:
            if msg.recursive:  # its children first: a forced cancel ends this process
                self._cancel_children(msg.task_id, msg.force)
            if self.executor is not None:
                self.executor.cancel(conn, msg.task_id, msg.force)
        elif kind is m.AddBorrowers:
            conn.reply(request_id, self._register_borrowers(msg.object_ids, msg.borrower))
        elif kind is m.RemoveBorrowers:
            self._unregister_borrowers(msg.object_ids, msg.borrower, msg.counts)
        elif kind is m.AddObjectLocation:
            conn.reply(request_id, self._add_location(msg.object_id, msg.node_address))
        elif kind is m.NodeDied:
            self.recovery.node_died(msg)
        elif kind is m.RecoverObject:
            self.spawn(self.recovery.serve_recover, conn, request_id, msg)
        elif kind is m.ListObjects:
            conn.reply(request_id, self.list_objects(msg.limit))
        elif self._chunks is not None and kind is m.PullChunk:
            self._chunks.chunk(conn, msg, request_id)
        elif self._chunks is not None and kind is m.PullObject:
            self._chunks.size(conn, msg, request_id)
        elif self._chunks is not None and kind is m.DeleteObjects:
            for object_id in msg.object_ids:
                self._chunks.forget(object_id)
                self.store.delete(object_id)
        elif not self.actors.handle_message(conn, msg, request_id):
            conn.reply_error(request_id, "unexpected", f"{self.role} does not handle {kind.__name__}")

    # ------------------------------------------------- actors (the API's entry points)

    def create_actor(self, actor_class: Any, blob: bytes, payload: bytes, dep_refs: list[ObjectRef],
                     held: list[ObjectRef]) -> HandleFields:
        return self.actors.create_actor(actor_class, blob, payload, dep_refs, held)

    def submit_actor_call(self, handle: Any, method: str, num_returns: int, payload: bytes,
                          dep_refs: list[ObjectRef], held: list[ObjectRef],
                          stream: tuple[int, bool] | None = None, group: str = "") -> list[ObjectRef]:
        return self.actors.submit_actor_call(handle, method, num_returns, payload, dep_refs, held, stream, group)

    def named_actor(self, name: str, namespace: str | None) -> HandleFields | None:
        return self.actors.named_actor(name, namespace)

    def kill_actor(self, handle: Any, no_restart: bool) -> None:
        self.actors.kill_actor(handle, no_restart)

    def actor_handle_added(self, actor_id: bytes) -> None:
        pass  # an actor's handles hold its lifetime ref: reference counting follows them

    def actor_handle_escaped(self, actor_id: bytes) -> None:
        self.actors.actor_handle_escaped(actor_id)

    def actor_handle_dropped(self, actor_id: bytes) -> None:
        pass

    async def kv_request(self, msg: Any) -> Any:
        """Send a KV message (KvPut, KvGet, KvDelete) to the head; its answer."""
        return await self.head_request(msg)

    # ---------------------------------------------------------------- ids and references

    def new_task_id(self) -> bytes:
        running = current_task_id.get()
        prefix = running[:4] if running is not None else self._job_prefix
        return prefix + os.urandom(8) + next(self._ids).to_bytes(4, "little")

    def job_id(self) -> bytes:
        """The job of the code running now: the task's in a worker, else this driver's own."""
        running = current_task_id.get()
        return running[:4] if running is not None else self._job_prefix

    def remove_local_ref(self, object_id: bytes) -> None:
        release = self.references.remove_local(object_id, self._owned)
        if release.free:
            self._free(object_id)
        elif release is not KEEP:
            self._release_borrowed(object_id, release.borrow)

    def mark_escaped(self, object_id: bytes, owner: str) -> None:
        self.references.escape(object_id)

    def _free(self, object_id: bytes) -> None:
        with self._cv:
            entry = self._values.get(object_id)
            if entry is None:
                return  # not finished yet: _finish_many frees it when it arrives
            del self._values[object_id]
            self._owned.discard(object_id)
        if object_id[16:] == LIFETIME_SUFFIX:
            self.actors.lifetime_ended(object_id[:16])
            return
        self._drop(object_id, entry)
        self.recovery.lineage.release(object_id, self._owned, self.address)

    def _drop(self, object_id: bytes, entry: m.ValueEntry) -> None:
        """Let go of a freed object: its stored copies, and the refs its value held."""
        with self._cv:
            locations = self._locations.pop(object_id, None)
            contained = self._contained.pop(object_id, None)
        if type(entry) is m.StoredValue:
            self.store.delete(object_id)  # the primary copy, or a copy on this node
            remote = set(locations or ())
            if entry.node_id != self.store_node_id:
                remote.add(entry.node_address)
            remote.discard(self.store_address)
            if remote and self._trio_token is not None and not self._stopped:
                try:
                    self.soon(self._send_deletes, remote, object_id)
                except trio.RunFinishedError:
                    pass
        del contained  # may free more objects (outside our locks)

    def _send_deletes(self, addresses: set[str], object_id: bytes) -> None:
        for address in addresses:
            conn = self._dialer.open(address)
            if conn is not None:
                conn.send(m.DeleteObjects([object_id]))
            else:
                self.spawn(self._send_delete_dialing, address, object_id)

    async def _send_delete_dialing(self, address: str, object_id: bytes) -> None:
        try:
            conn = await self._connect(address, "a node daemon")
            conn.send(m.DeleteObjects([object_id]))
        except ClusterConnectionError:
            pass  # the node is gone, and its copy with it

    # ------------------------------------------------- borrowing (distributed refcounts)

    def register_borrowed(self, refs: list[ObjectRef]) -> None:
        """Tell the owners of ``refs`` (just unpickled here) that this process holds them.

        Blocks until the owners know, so the sender may drop its own hold afterwards; refs
        this process already registered cost nothing.
        """
        wanted = self.references.to_register(refs)
        if not wanted:
            return
        if threading.current_thread() is self._trio_thread:
            self.spawn(self._add_borrowers, wanted, None)  # cannot block here
        else:
            self.call_async(self._add_borrowers, wanted, None)

    def register_for(self, refs: list[ObjectRef], borrower: str) -> None:
        """Make ``borrower`` a borrower of ``refs`` (found in a value we send it), and wait."""
        wanted: dict[str, list[bytes]] = {}
        for ref in refs:
            wanted.setdefault(ref._owner, []).append(ref._id)
        mine = wanted.pop(self.address, None)
        if mine:
            self._register_borrowers(mine, borrower)
        if wanted:
            self.call_async(self._add_borrowers, wanted, borrower)

    async def _add_borrowers(self, wanted: dict[str, list[bytes]], borrower: str | None) -> None:
        async def one(owner: str, ids: list[bytes]) -> None:
            try:
                conn = await self._connect(owner, "the object's owner")
                known = await conn.request(m.AddBorrowers(ids, borrower or self.address))
            except (ClusterConnectionError, RemoteCallError) as exc:
                log.warning("borrow_register_failed", owner=owner, error=str(exc))
                return  # the owner is gone; get() will say the object is lost
            if borrower is not None:
                return
            late = self.references.registered(ids, known)  # (dropped while we registered)
            if late:
                conn.send(m.RemoveBorrowers(late, self.address, [1] * len(late)))

        async with trio.open_nursery() as nursery:
            for owner, ids in wanted.items():
                nursery.start_soon(one, owner, ids)

    def _register_borrowers(self, object_ids: list[bytes], borrower: str) -> list[bool]:
        return self.references.add_borrowers(object_ids, borrower, self._owned)

    def _unregister_borrowers(self, object_ids: list[bytes], borrower: str, counts: list[int]) -> None:
        for object_id in self.references.remove_borrowers(object_ids, borrower, counts):
            self._free(object_id)

    def _release_borrowed(self, object_id: bytes, record: Borrow | None) -> None:
        self._values.pop(object_id, None)  # the cached entry of an object we no longer hold
        if record is None or record.registered <= 0 or self._stopped or self._trio_token is None:
            return
        try:
            self.soon(self._send_unborrow, record.owner, object_id, record.registered)
        except trio.RunFinishedError:
            pass

    def _send_unborrow(self, owner: str, object_id: bytes, count: int) -> None:
        conn = self._dialer.open(owner)
        if conn is not None:
            conn.send(m.RemoveBorrowers([object_id], self.address, [count]))
        # else: the owner is gone (we reached it to register), and the object with it

    async def _borrower_sweep(self) -> None:
        """Forget borrowers whose process is gone (they could not say they let go)."""
        while True:
            await trio.sleep(BORROWER_CHECK_S)
            addresses = self.references.borrower_addresses() - {self.address}
            for address in addresses:
                try:
                    await self._connect(address, "a borrower")  # cached while it is alive
                except ClusterConnectionError:
                    self._forget_borrower(address)

    def _forget_borrower(self, address: str) -> None:
        log.info("borrower_gone", borrower=address)
        for object_id in self.references.forget_borrower(address):
            self._free(object_id)

    def _adopt_contained(self, return_ids: list[bytes] | None, contained: list[m.ContainedRef]) -> None:
        """Hold the refs a worker found in our task's return values (it registered us)."""
        held: list[tuple[int, ObjectRef]] = []
        for item in contained:
            index, object_id, owner = item.index, item.object_id, item.owner
            ref = ObjectRef(object_id, owner)
            if owner == self.address:
                self.references.take_back(object_id, owner)  # the ref we hold now replaces that
            else:
                self.references.adopt(object_id, owner)
            held.append((index, ref))
        if return_ids is not None:
            with self._cv:
                for index, ref in held:
                    if index < len(return_ids):
                        self._contained.setdefault(return_ids[index], []).append(ref)

    def _add_location(self, object_id: bytes, node_address: str) -> bool:
        with self._cv:
            if object_id not in self._owned:
                return False
            self._locations.setdefault(object_id, set()).add(node_address)
            return True

    # ------------------------------------------------------------------- submit (user thread)

    def submit(self, task: PendingTask, refs: list[ObjectRef] | None = None) -> list[ObjectRef]:
        if refs is None:
            refs = [ObjectRef(oid, self.address) for oid in task.return_ids]
        if self.executor is not None and task.parent is None:
            task.parent = current_task_id.get()
        with self._cv:
            self._tasks[task.task_id] = task
            self._owned.update(task.return_ids)
        self._submitted.append(task)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self.soon(self._drain_submitted)
        return refs

    def put(self, value: Any) -> ObjectRef:
        object_id = self.new_task_id() + b"\xff\xff\xff\xff"
        ser = v.serialize(value)
        entry = self.entry_for(object_id, ser, self.address)
        ref = ObjectRef(object_id, self.address)
        with self._cv:
            self._values[object_id] = entry
            self._owned.add(object_id)
            if ser.refs:
                self._contained[object_id] = list(ser.refs)
        return ref

    def pending_ref(self, name: str, wait: Any) -> ObjectRef:
        """A ref of ours whose value is what ``await wait()`` returns (or the ClusterError it
        raises), made by this runtime rather than by a task: a placement group's ``ready()``."""
        task_id = self.new_task_id()
        task = PendingTask(task_id, name, b"", b"", b"", [], 1, [task_id + bytes(4)], (), 0, False)
        with self._cv:
            self._tasks[task_id] = task
            self._owned.update(task.return_ids)
        ref = ObjectRef(task.return_ids[0], self.address)  # (counted before its value can come: kept, not freed)
        self.soon(self.spawn, self._settle_with, task, wait)
        return ref

    async def _settle_with(self, task: PendingTask, wait: Any) -> None:
        try:
            value = await wait()
            entry = self.entry_for(task.return_ids[0], v.serialize(value), self.address)
        except ClusterError as exc:
            entry = v.serialize_error(exc)
        if task.task_id in self._tasks and not task.cancelled:
            self._finish(task, [entry])

    def forget_placement_group(self, pg_id: str) -> None:
        """This process removed group ``pg_id``: its tasks here must not take it as placed."""
        if pg_id in self._ready_groups:  # (a read from this thread; the trio thread changes it)
            self.call(self._ready_groups.discard, pg_id)

    async def wait_placement_group(self, pg_id: str, fresh: bool = False) -> None:
        """Until placement group ``pg_id`` is placed; TaskPlacementGroupRemoved if it is removed
        (or unknown) first. ``fresh``: ask the head even if it was placed when last asked (a
        lease request need not; ``pg.ready()`` must). Trio thread."""
        if pg_id in self._ready_groups and not fresh:
            return
        while True:
            record = await self.head_request(m.WaitPlacementGroup(pg_id, None))
            if record is None:
                raise TaskPlacementGroupRemoved(f"placement group {pg_id} does not exist (removed, or never made)")
            if record["state"] == "REMOVED":
                raise TaskPlacementGroupRemoved(f"placement group {pg_id} was removed "
                                                f"({record['stats'].get('reason') or 'removed'})")
            if record["state"] == "CREATED":
                self._ready_groups.add(pg_id)
                return

    def owned_marker(self, object_id: bytes) -> ObjectRef:
        """A ref to an object of ours that holds nothing (None): something that must live as
        long as any process holds a ref to it (an actor's handles), counted like any object."""
        ref = ObjectRef(object_id, self.address)
        with self._cv:
            self._values[object_id] = _NONE_ENTRY
            self._owned.add(object_id)
        return ref

    def entry_for(self, object_id: bytes, ser: v.Serialized, owner: str) -> m.ValueEntry:
        """A value entry: inline when small, else written to this node's store."""
        if ser.size <= v.INLINE_LIMIT:
            return ser.inline_entry()
        try:
            size = self.store.put(object_id, ser.metadata, ser.inband, ser.buffers)
        except StoreFull as exc:
            raise ObjectStoreFullError(self._store_full_message(ser.size, exc)) from None
        return m.StoredValue(object_id, self.store_node_id, self.store_address, size, owner)

    def _store_full_message(self, size: int, exc: Exception) -> str:
        capacity = getattr(exc, "capacity_bytes", None)
        used = getattr(exc, "used_bytes", None)
        if capacity is None or used is None:
            return f"the object store of node {self.node_id} has no room for an object of {_mb(size)}: {exc}"
        sizes = sorted(((self.store.size_of(oid) or 0, oid) for oid in self.store.object_ids()), reverse=True)
        largest = ", ".join(f"{oid.hex()[:12]}… {_mb(n)}" for n, oid in sizes[:3]) or "none"
        return (
            f"the object store of node {self.node_id} is full: an object of {_mb(size)} does not "
            f"fit, {_mb(used)} of its {_mb(capacity)} are in use by {len(sizes)} objects (largest: "
            f"{largest}). Drop ObjectRefs you no longer need (objects are freed when no reference "
            "remains), or give the node more room: `cluster start --object-store-memory SIZE`, or "
            "cluster.init(object_store_memory=SIZE) for a local cluster."
        )

    # ------------------------------------------------------------------- introspection

    def list_objects(self, limit: int) -> list[dict[str, Any]]:
        """The largest objects this process owns, each with where it lives and why it is alive."""
        with self._cv:
            owned = list(self._owned)
            values = {oid: self._values.get(oid) for oid in owned}
            locations = {oid: sorted(self._locations.get(oid, ())) for oid in owned}
            containers: dict[bytes, list[bytes]] = {}
            for container, refs in self._contained.items():
                for ref in refs:
                    containers.setdefault(ref._id, []).append(container)
            task_args: collections.Counter[bytes] = collections.Counter()
            for task in self._tasks.values():
                for ref in (*task.dep_refs, *task.held):
                    task_args[ref._id] += 1
        table = self.references
        with table.lock:
            local = {oid: table.local.get(oid, 0) for oid in owned}
            borrowers = {oid: dict(table.borrowers.get(oid, {})) for oid in owned}
            pinned = {oid for oid in owned if oid in table.escaped}
        rows: list[dict[str, Any]] = []
        for oid in owned:
            entry = values[oid]
            if entry is None:
                size, where, state = 0, "", "pending"
            elif isinstance(entry, m.StoredValue):
                size, where, state = entry.size, entry.node_id, "stored"
            else:
                size = len(entry.inband) + sum(len(b) for b in entry.buffers)
                where, state = "", "error" if entry.is_error else "inline"
            if oid[16:] == LIFETIME_SUFFIX:
                state = "actor handle"  # an actor's lifetime: what holds it holds the actor
            reasons = []
            own_refs = local[oid] - len(containers.get(oid, ())) - task_args[oid]  # those hold refs too
            if own_refs > 0:
                reasons.append(f"{own_refs} ref(s) in the owner")
            for address, count in sorted(borrowers[oid].items()):
                reasons.append(f"borrowed by {address} ({count})")
            for container in containers.get(oid, ()):
                reasons.append(f"inside object {container.hex()}")
            if task_args[oid]:
                reasons.append(f"argument of {task_args[oid]} unfinished task(s)")
            if oid in pinned:
                reasons.append("pickled outside the cluster's view (kept until the owner exits)")
            rows.append({
                "object_id": oid.hex(), "size": size, "state": state, "node_id": where,
                "copies": locations[oid], "owner": self.address, "owner_pid": os.getpid(),
                "owner_kind": self.role, "referenced_by": reasons,
            })
        rows.sort(key=lambda row: int(row["size"]), reverse=True)
        return rows[: max(0, limit)]

    # ------------------------------------------------------------------ scheduling (trio)

    def _drain_submitted(self) -> None:
        self._wake_scheduled = False
        touched = set()
        submitted = self._submitted
        while submitted:
            task = submitted.popleft()
            if task.actor is not None:
                self.actors.enqueue_call(task)  # in order, behind the actor's earlier calls
                continue
            if task.dep_refs:
                if not self._deps_ready(task):
                    self.spawn(self._resolve_then_queue, task)
                    continue
                if self._failed_dependency(task):
                    continue
            self._enqueue(task)
            touched.add(task.shape)
        for shape in touched:
            self._dispatch(self._queues[shape])

    def _deps_ready(self, task: PendingTask) -> bool:
        values = self._values
        deps: list[m.ValueEntry] = []
        for ref in task.dep_refs:
            entry = values.get(ref.id)
            if entry is None:
                return False
            deps.append(entry)
        task.deps = deps
        return True

    def _failed_dependency(self, task: PendingTask) -> bool:
        """A failed argument fails the task with the same error, without running it."""
        for entry in task.deps:
            if entry.is_error:
                self._finish(task, [entry] * task.num_returns)
                return True
        return False

    async def _resolve_then_queue(self, task: PendingTask) -> None:
        for ref in task.dep_refs:
            await self._wait_entry(ref)
        if task.cancelled:
            return
        self._deps_ready(task)
        if self._failed_dependency(task):
            return
        self._enqueue(task)
        self._dispatch(self._queues[task.shape])

    def _enqueue(self, task: PendingTask, front: bool = False) -> None:
        queue = self._queues.get(task.shape)
        if queue is None:
            queue = self._queues[task.shape] = ShapeQueue(task.shape, runtime_env=task.runtime_env,
                                                          placement=task.placement)
        if front:
            queue.pending.appendleft(task)
        else:
            queue.pending.append(task)

    def _dispatch(self, queue: ShapeQueue) -> None:
        pending = queue.pending
        if pending and queue.leases:
            batches: dict[int, tuple[Lease, list[PendingTask]]] = {}
            # While lease requests are fresh, more workers may be on their way: give each lease
            # one task, so a burst spreads out. Once nodes say the rest must wait, pipeline.
            depth = 1 if queue.fresh_requests else PIPELINE_DEPTH
            leases = [lease for lease in queue.leases if len(lease.in_flight) < depth and not lease.blocked]
            leases.sort(key=lambda lease: len(lease.in_flight))  # the least loaded first
            if queue.placement.kind == SPREAD:
                self._dispatch_spread(queue, leases, depth, batches)
                leases = []
            while pending and leases:
                still_room = []
                for lease in leases:
                    if not pending:
                        break
                    task = pending.popleft()
                    task.lease = lease
                    lease.in_flight[task.task_id] = task
                    lease.idle_since = None
                    batches.setdefault(id(lease), (lease, []))[1].append(task)
                    if len(lease.in_flight) < depth:
                        still_room.append(lease)
                leases = still_room
            for lease, tasks in batches.values():
                sent = lease.conn.sent_functions
                specs = []
                for task in tasks:
                    fn = None
                    if task.function_id not in sent:
                        sent.add(task.function_id)
                        fn = task.function
                    specs.append(
                        m.TaskSpec(
                            task.task_id, task.name, task.function_id, fn, task.args,
                            task.deps, task.num_returns, self.address, "", task.namespace,
                            None if task.stream is None else task.stream.spec(), "",
                            None if task.shape == DEFAULT_SHAPE else envs.plain_shape(task.shape),
                            lease.gpu_ids,
                        )
                    )
                try:
                    lease.conn.send(m.PushTasks(specs))
                except ClusterConnectionError:
                    pass  # the close callback requeues them
        wanted = min(len(pending), MAX_LEASE_REQUESTS) - queue.requesting
        for _ in range(max(0, wanted)):
            queue.requesting += 1  # counted now, so the next dispatch does not ask again
            self.spawn(self._request_lease, queue)

    @staticmethod
    def _dispatch_spread(queue: ShapeQueue, leases: list[Lease], depth: int,
                         batches: dict[int, tuple[Lease, list[PendingTask]]]) -> None:
        """SPREAD: each task to the node (of those the queue holds leases on) that got fewest of
        its tasks so far; while that node's workers are all busy, the task waits for them, so
        tasks spread evenly over nodes however many leases each granted or however fast each is."""
        counts = queue.spread
        nodes = {lease.node_id for lease in queue.leases if not lease.returned}
        pending = queue.pending
        while pending and leases:
            fewest = min(nodes, key=lambda node_id: counts.get(node_id, 0))
            there = [lease for lease in leases if lease.node_id == fewest]
            if not there:
                return
            lease = min(there, key=lambda lease: len(lease.in_flight))
            task = pending.popleft()
            task.lease = lease
            lease.in_flight[task.task_id] = task
            lease.idle_since = None
            counts[fewest] = counts.get(fewest, 0) + 1
            batches.setdefault(id(lease), (lease, []))[1].append(task)
            if len(lease.in_flight) >= depth:
                leases.remove(lease)

    def _maybe_steal(self, queue: ShapeQueue, idle: Lease) -> None:
        """``idle`` has nothing to do while another lease has tasks queued behind its running
        one (pipelined, see _dispatch): ask that worker to give half of them back."""
        if idle.returned or idle.in_flight or queue.pending:
            return
        victim = max((lease for lease in queue.leases if lease is not idle and not lease.returned),
                     key=lambda lease: len(lease.in_flight), default=None)
        if victim is not None and len(victim.in_flight) >= 2 and not victim.stealing:
            victim.stealing = True
            self.spawn(self._steal, queue, victim)

    async def _steal(self, queue: ShapeQueue, victim: Lease, everything: bool = False) -> None:
        try:
            stolen = await victim.conn.request(m.StealTasks(len(victim.in_flight) // (1 if everything else 2)))
        except (ClusterConnectionError, RemoteCallError):
            return
        finally:
            victim.stealing = False
        for task_id in reversed(stolen):  # (newest first: back to the front in their order)
            task = victim.in_flight.pop(task_id, None)
            if task is not None:
                task.lease = None
                queue.pending.appendleft(task)
        if not victim.in_flight and victim.idle_since is None:
            # Its last results came while these were being taken back: nobody else marks it
            # idle, and a lease never marked idle is never given back (its node's CPU stays held).
            victim.idle_since = time.monotonic()
        if stolen:
            log.debug("tasks_stolen", count=len(stolen))
            self._dispatch(queue)
        if victim.blocked and not everything and len(victim.in_flight) > 1 and not victim.returned:
            self._steal_all(queue, victim)  # it blocked while half were being taken

    def _on_worker_blocked(self, conn: Connection, blocked: bool) -> None:
        """A leased worker's running task waits in get/wait, or no longer: what it waits for
        may be queued behind it there (pipelined, see _dispatch), so while it waits take all
        those back and send nothing more; its node lends its CPU to another worker meanwhile."""
        lease = conn.context
        if type(lease) is not Lease or lease.returned:
            return  # an actor's worker, or a lease given back
        queue = self._queues.get(lease.shape)
        if queue is None:
            return
        lease.blocked = blocked
        if blocked:
            if len(lease.in_flight) > 1 and not lease.stealing:
                self._steal_all(queue, lease)
        else:
            self._dispatch(queue)

    def _steal_all(self, queue: ShapeQueue, victim: Lease) -> None:
        victim.stealing = True
        self.spawn(self._steal, queue, victim, True)

    async def _request_lease(self, queue: ShapeQueue) -> None:
        """Get one more worker for ``queue``'s shape: ask, follow spillbacks, connect to it."""
        queue.fresh_requests += 1
        fresh = [True]

        def not_fresh(_reason: str = "") -> None:
            # Until now more workers might come, so each lease got one task (see _dispatch).
            if fresh[0]:
                fresh[0] = False
                queue.fresh_requests -= 1
                self._dispatch(queue)

        try:
            lease = await self._lease_worker(queue, not_fresh)
        except (RuntimeEnvSetupError, TaskUnschedulableError, TaskPlacementGroupRemoved) as exc:  # all of the queue fail
            lease = None
            failed, queue.pending = list(queue.pending), collections.deque()
            if isinstance(exc, TaskUnschedulableError):
                names = ", ".join(sorted({task.name for task in failed})) or "the task"
                exc = TaskUnschedulableError(f"{names} cannot be scheduled: {exc}")
            entry = v.serialize_error(exc)
            self._finish_many([(task, [entry] * task.num_returns) for task in failed])
        finally:
            queue.requesting -= 1
            if fresh[0]:
                fresh[0] = False
                queue.fresh_requests -= 1
        if lease is not None:
            queue.leases.append(lease)
        self._dispatch(queue)
        if lease is not None and not lease.in_flight:
            self._maybe_steal(queue, lease)

    async def _lease_worker(self, queue: ShapeQueue, on_busy: Any, detached: bool = False) -> Lease | None:
        address = self.node_address
        spill_count = 0
        group = group_of(name for name, _ in queue.shape)
        if group:  # its bundles must be reserved first (or it fails: the group was removed)
            await self.wait_placement_group(group)
        plain = queue.runtime_env is None and queue.placement is DEFAULT_PLACEMENT
        shape = dict(queue.shape) if plain else envs.plain_shape(queue.shape)
        placement = None if queue.placement is DEFAULT_PLACEMENT else queue.placement.to_wire()
        while True:
            try:
                node_conn = await self._connect(address, "a node daemon")
                answer = await node_conn.request(
                    m.RequestLease(shape, self.address, spill_count, detached, queue.wanted(), queue.runtime_env,
                                   placement),
                    on_pending=on_busy
                )
            except (ClusterConnectionError, RemoteCallError) as exc:
                log.warning("lease_request_failed", node=address, error=str(exc))
                if address == self.node_address:
                    await trio.sleep(0.5)
                address, spill_count = self.node_address, 0
                if not queue.wanted():
                    return None
                continue
            if type(answer) is m.LeaseSpill:
                address = answer.address
                spill_count += 1
                continue
            if type(answer) is m.RuntimeEnvFailed:
                raise RuntimeEnvSetupError(answer.error)
            if type(answer) is m.LeaseInfeasible:
                if group and answer.group_removed:
                    self._ready_groups.discard(group)
                    raise TaskPlacementGroupRemoved(answer.reason)
                if answer.unschedulable:
                    raise TaskUnschedulableError(answer.reason)
                if group:  # its group may be gone, or being placed again after losing a node
                    self._ready_groups.discard(group)
                    await self.wait_placement_group(group)
                    address, spill_count = self.node_address, 0
                    continue
                if queue.shape not in self._warned_infeasible:
                    self._warn_infeasible(queue, answer.reason, await self._launchable_for(shape, queue.placement))
                await trio.sleep(INFEASIBLE_RETRY_S)
                address, spill_count = self.node_address, 0
                if not queue.wanted():
                    return None
                continue
            break
        try:
            worker_conn = await self._connect(answer.worker_address, "a worker")
        except ClusterConnectionError:
            node_conn.send(m.ReturnLease(answer.lease_id, False))
            return None
        lease = Lease(answer.lease_id, node_conn, worker_conn, queue.shape, idle_since=time.monotonic(),
                      node_id=answer.node_id, gpu_ids=answer.gpu_ids or None)
        worker_conn.context = lease
        if self._on_worker_lost not in worker_conn.on_close:
            worker_conn.on_close.append(self._on_worker_lost)
        return lease

    def _warn_infeasible(self, queue: ShapeQueue, reason: str, launchable: str = "") -> None:
        if queue.shape in self._warned_infeasible:
            return
        self._warned_infeasible.add(queue.shape)
        names = ", ".join(sorted({task.name for task in queue.pending})) or "a task"
        if launchable:  # no node fits now, but the autoscaler can make one that does
            text = f"{names} waits for the autoscaler to launch {launchable}: {reason} yet."
        else:
            text = (f"warning: {names} cannot be scheduled: {reason}. It stays pending until a node that "
                    "fits joins the cluster.")
        print(f"cluster: {text}", file=sys.stderr, flush=True)

    async def _launchable_for(self, shape: dict[str, float], placement: Placement) -> str:
        """The node type an autoscaler could launch for ``shape`` ("a node of type X"), or ""
        (no autoscaler, or none of its types fits)."""
        try:
            raw = await self.head_request(m.KvGet(AUTOSCALER_NODE_TYPES_KEY))
            types = json.loads(raw) if raw else {}
        except (ClusterError, ValueError):
            return ""
        for name, spec in sorted(types.items(), key=lambda item: sum(item[1].get("resources", {}).values())):
            if fits(shape, spec.get("resources", {})) and matches(placement.labels, spec.get("labels") or {}):
                return f"a node of type {name} ({format_shape(spec.get('resources', {}))})"
        return ""

    async def _linger_loop(self) -> None:
        while True:
            await trio.sleep(LEASE_LINGER_S)
            now = time.monotonic()
            for queue in self._queues.values():
                if queue.pending:
                    continue
                backlog = False
                for lease in list(queue.leases):
                    if len(lease.in_flight) > 1:
                        backlog = True
                    if lease.in_flight or lease.idle_since is None:
                        continue
                    if now - lease.idle_since >= LEASE_LINGER_S:
                        self._return_lease(queue, lease, worker_ok=True)
                self._ask_for_backlog(queue, backlog, now)

    def _ask_for_backlog(self, queue: ShapeQueue, backlog: bool, now: float) -> None:
        """Tasks pipelined behind a running one (see _dispatch) would wait for it however long
        it runs, though another node or CPU may be free: once they have waited a linger, ask
        for one more worker; when it comes, it takes half of them (_maybe_steal)."""
        if not backlog:
            queue.backlog_since = None
        elif queue.backlog_since is None:
            queue.backlog_since = now
        elif now - queue.backlog_since >= LEASE_LINGER_S and not queue.requesting:
            queue.backlog_since = None
            queue.requesting += 1
            self.spawn(self._request_lease, queue)

    def _return_all_leases(self) -> None:
        """Give idle workers back before going away, so nodes need not kill them."""
        for queue in self._queues.values():
            for lease in list(queue.leases):
                self._return_lease(queue, lease, worker_ok=not lease.in_flight)

    def _return_lease(self, queue: ShapeQueue, lease: Lease, worker_ok: bool) -> None:
        if lease.returned:
            return
        lease.returned = True
        if lease in queue.leases:
            queue.leases.remove(lease)
        lease.conn.context = None
        if not lease.node_conn.closed:
            lease.node_conn.send(m.ReturnLease(lease.lease_id, worker_ok))

    def _on_worker_lost(self, conn: Connection) -> None:
        lease = conn.context
        if not isinstance(lease, Lease) or lease.returned:
            return
        queue = self._queues.get(lease.shape)
        if queue is None:  # not a task lease (an actor's, given back already)
            return
        with lease.lock:  # (the reader thread may be finishing the last results right now)
            lost = list(lease.in_flight.values())
            lease.in_flight.clear()
        self._return_lease(queue, lease, worker_ok=False)
        for task in lost:
            if task.cancelled:
                self._finish(task, [v.serialize_error(TaskCancelledError(task.name))] * task.num_returns)
            elif task.retries_left > 0:
                task.retries_left -= 1
                task.lease = None
                reason = lease.lost_reason or "its worker died"
                log.info("task_retry", task=task.name, reason=reason, retries_left=task.retries_left)
                self.report_failure("task_retry", f"{task.name}: {reason}")
                self._enqueue(task, front=True)
            elif lease.lost_reason:
                err: WorkerCrashedError = NodeDiedError(
                    f"{task.name} was running on {lease.lost_reason}, and the task has no retries "
                    f"left (max_retries={task.max_retries}); raise max_retries to retry it")
                self._finish(task, [v.serialize_error(err)] * task.num_returns)
            else:
                err = WorkerCrashedError(
                    f"the worker running {task.name} died (process exited or the connection "
                    f"to it was lost) and the task has no retries left (max_retries={task.max_retries}); "
                    "raise max_retries to retry it"
                )
                self._finish(task, [v.serialize_error(err)] * task.num_returns)
        self._dispatch(queue)

    # ---------------------------------------------------------------------- results (trio)

    def _on_results(self, conn: Connection, results: list[m.TaskResult]) -> None:
        lease = conn.context
        in_flight = lease.in_flight if isinstance(lease, Lease | ActorState) else {}
        retry = []
        done = []
        for result in results:
            task = in_flight.pop(result.task_id, None)
            if result.contained:  # (released at once when the task is no longer ours)
                self._adopt_contained(task.return_ids if task is not None else None, result.contained)
            if task is None:
                continue
            entries = result.entries
            first = entries[0]
            if first.is_error and task.retry_exceptions and task.retries_left > 0 and not task.cancelled \
                    and _retries_on(task.retry_exceptions, first):
                task.retries_left -= 1
                self.report_failure("task_retry", f"{task.name}: it raised, and retry_exceptions allows it")
                retry.append(task)
                continue
            if len(entries) != task.num_returns:
                entries = [first] * task.num_returns
            done.append((task, entries))
        if done:
            self._finish_many(done)
        if isinstance(lease, Lease):
            for task in retry:
                self._enqueue(task, front=True)
            queue = self._queues[lease.shape]
            if not lease.in_flight:
                lease.idle_since = time.monotonic()
            self._dispatch(queue)
            if not lease.in_flight:
                self._maybe_steal(queue, lease)

    def _on_results_fast(self, lease: Lease | ActorState, results: list[m.TaskResult]) -> bool:
        """``_on_results`` from a reader thread, for results that need nothing of the trio
        thread: no refs inside, no retry. False (and nothing done) otherwise."""
        in_flight = lease.in_flight
        for result in results:
            if result.contained:
                return False
            if result.entries[0].is_error:
                task = in_flight.get(result.task_id)
                if task is not None and task.retry_exceptions:
                    return False
        done = []
        with lease.lock:
            for result in results:
                task = in_flight.pop(result.task_id, None)
                if task is not None:
                    entries = result.entries
                    done.append((task, entries if len(entries) == task.num_returns else [entries[0]] * task.num_returns))
        if done:
            self._finish_many(done, in_trio=False)
        if type(lease) is Lease:
            queue = self._queues[lease.shape]
            if not in_flight:
                lease.idle_since = time.monotonic()
            if queue.pending:
                self.soon(self._dispatch, queue)
            elif not in_flight and any(len(other.in_flight) >= 2 for other in queue.leases):
                self.soon(self._maybe_steal, queue, lease)  # (checked here first: no trio trip per task)
        return True

    def _finish(self, task: PendingTask, entries: list[m.ValueEntry]) -> None:
        self._finish_many([(task, entries)])

    def _finish_many(self, done: list[tuple[PendingTask, list[m.ValueEntry]]], in_trio: bool = True) -> None:
        to_free = []
        released = []  # argument refs, dropped once out of the lock (dropping may free objects)
        with self._cv:
            values = self._values
            tasks = self._tasks
            table = self.references
            refcounts, escaped, borrowers = table.local, table.escaped, table.borrowers
            lineage = self.recovery.lineage
            for task, entries in done:
                tasks.pop(task.task_id, None)
                if task.stream is not None:
                    entries = self.streams.finishing(task, entries)
                stored = False
                for oid, entry in zip(task.return_ids, entries, strict=False):
                    stored = stored or type(entry) is m.StoredValue
                    if oid in refcounts or oid in escaped or oid in borrowers:
                        values[oid] = entry
                    else:
                        self._owned.discard(oid)
                        to_free.append((oid, entry))
                if stored and task.actor is None and not task.held:
                    lineage.keep(task, self._owned, self.address)  # (before its arguments go, below)
                task.rebuilding = False
                released.append((task.dep_refs, task.held))
                task.dep_refs = task.held = []  # release the arguments
            self._cv.notify_all()
        waiters = self._trio_waiters
        if waiters:  # (_wait_entry checks the value again after it adds a waiter: no lost wakeup)
            for task, _ in done:
                for oid in task.return_ids:
                    for event in waiters.pop(oid, ()):
                        if in_trio:
                            event.set()
                        else:
                            self.soon(event.set)
        for oid, entry in to_free:
            self._drop(oid, entry)
            self.recovery.lineage.release(oid, self._owned, self.address)
        del released

    async def _wait_entry(self, ref: ObjectRef) -> m.ValueEntry:
        """Wait (in trio) until ``ref``'s value entry is known; fetch it from its owner if borrowed."""
        return await self._wait_entry_of(ref.id, ref.owner)

    async def _wait_entry_of(self, object_id: bytes, owner: str) -> m.ValueEntry:
        while True:
            entry = self._values.get(object_id)
            if entry is not None:
                return entry
            if owner != self.address:
                self._start_fetch(ObjectRef(object_id, owner))
            event = trio.Event()
            waiters = self._trio_waiters.setdefault(object_id, [])
            waiters.append(event)
            if object_id in self._values:  # finished by a reader thread just now
                waiters.remove(event)
                if not waiters:
                    self._trio_waiters.pop(object_id, None)
                continue
            await event.wait()

    # ------------------------------------------------------- futures: ref.future(), await ref

    def future(self, ref: ObjectRef) -> concurrent.futures.Future[Any]:
        """A future of ``ref``'s value, settled from the trio thread as soon as it is known."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.soon(self.spawn, self._settle_future, ref, future)
        return future

    async def _settle_future(self, ref: ObjectRef, future: concurrent.futures.Future[Any]) -> None:
        entry = await self._wait_entry(ref)
        if isinstance(entry, m.InlineValue):
            _settle(future, self.load_inline, entry)
            return
        # A stored value may first be copied to this node, through this thread: load it elsewhere.
        if self._loaders is None:
            self._loaders = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="cluster-load")
        self._loaders.submit(_settle, future, self.load_entry, entry)

    def load_inline(self, entry: m.InlineValue) -> Any:
        return self.loads(entry.metadata, entry.inband, entry.buffers)

    def settle(self, object_id: bytes, entry: m.ValueEntry) -> None:
        """Give ``object_id`` the value ``entry`` (on the trio thread); its waiters wake."""
        with self._cv:
            self._values[object_id] = entry
            self._cv.notify_all()
        for event in self._trio_waiters.pop(object_id, ()):
            event.set()

    def resubmit(self, task: PendingTask) -> None:
        """Run a finished task again (on the trio thread), to rebuild its lost results."""
        with self._cv:
            self._tasks[task.task_id] = task
            self._owned.update(task.return_ids)
            for object_id in task.return_ids:
                self._values.pop(object_id, None)
        self._submitted.append(task)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self.soon(self._drain_submitted)

    def _start_fetch(self, ref: ObjectRef) -> None:
        if ref.id in self._fetching or ref.id in self._values:
            return
        self._fetching.add(ref.id)
        self.spawn(self._fetch_borrowed, ref)

    async def _fetch_borrowed(self, ref: ObjectRef) -> None:
        try:
            try:
                owner = await self._connect(ref.owner, "the object's owner")
                entry = await owner.request(m.GetObject(ref.id))
            except (ClusterConnectionError, RemoteCallError) as exc:
                entry = v.serialize_error(
                    OwnerDiedError(
                        f"object {ref.hex()} is lost: its owner at {ref.owner} is unreachable ({exc}); an "
                        "object's metadata lives with the process that created it, so it is gone with it"
                    )
                )
            with self._cv:
                self._values[ref.id] = entry
                self._cv.notify_all()
            for event in self._trio_waiters.pop(ref.id, ()):
                event.set()
        finally:
            self._fetching.discard(ref.id)

    async def _serve_get_object(self, conn: Connection, request_id: int, object_id: bytes) -> None:
        if object_id not in self._values and object_id not in self._owned:
            conn.reply(request_id, v.serialize_error(ReferenceCountingAssertionError(
                f"object {object_id.hex()} is not known to its owner (it was freed or never existed)"
            )))
            return
        entry = await self._wait_entry(ObjectRef(object_id, self.address))
        conn.reply(request_id, entry)

    # --------------------------------------------------------------- get / wait (user thread)

    def get(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        entries = self._wait_entries(refs, timeout)
        return [self.load_entry(entry, deadline) for entry in entries]

    def _wait_entries(self, refs: Sequence[ObjectRef], timeout: float | None) -> list[m.ValueEntry]:
        values = self._values
        with self._cv:
            missing = [ref for ref in refs if ref.id not in values]
        if missing:
            borrowed = [ref for ref in missing if ref.owner != self.address]
            if borrowed:
                self.soon(self._fetch_all, borrowed)
            deadline = None if timeout is None else time.monotonic() + timeout
            blocked = self.executor is not None and self.executor.notify_blocked(True)
            try:
                with self._cv:
                    for ref in missing:
                        while ref.id not in values:
                            remaining = None if deadline is None else deadline - time.monotonic()
                            if remaining is not None and remaining <= 0:
                                raise GetTimeoutError(
                                    f"get timed out after {timeout}s: {ref} (and maybe others) "
                                    "is not ready yet"
                                )
                            if self._crashed is not None:
                                raise self._crashed_error()
                            self._cv.wait(remaining if remaining is not None else 1.0)
            finally:
                if blocked:
                    self.executor.notify_blocked(False)
        return [values[ref.id] for ref in refs]

    def _crashed_error(self) -> ClusterConnectionError:
        return ClusterConnectionError(
            "this process's cluster runtime stopped after an internal error "
            f"({self._crashed!r}); call cluster.shutdown() and cluster.init() "
            "again, and please report it with the log of this process"
        )

    def _fetch_all(self, refs: list[ObjectRef]) -> None:
        for ref in refs:
            self._start_fetch(ref)

    def wait(self, refs: Sequence[ObjectRef], num_returns: int,
             timeout: float | None) -> tuple[list[ObjectRef], list[ObjectRef]]:
        values = self._values
        ready = [ref for ref in refs if ref._id in values]
        if len(ready) < num_returns:
            borrowed = [r for r in refs if r._owner != self.address and r._id not in values]
            if borrowed:
                self.soon(self._fetch_all, borrowed)
            ready = self._block_until(lambda: [ref for ref in refs if ref._id in values], num_returns, timeout)
        if len(ready) == len(refs):
            return list(refs[:num_returns]), list(refs[num_returns:])
        ready = ready[:num_returns]
        chosen = {ref._id for ref in ready}
        return ready, [ref for ref in refs if ref._id not in chosen]

    def wait_any(self, items: Sequence[Any], num_returns: int, timeout: float | None,
                 is_ready: Callable[[Any], bool]) -> tuple[list[Any], list[Any]]:
        """``wait`` over refs and other things (generators) that ``is_ready`` tells ready;
        ``is_ready`` is called with the runtime's lock held, and woken by what it sees change."""
        borrowed = [r for r in items if type(r) is ObjectRef and r._owner != self.address and r._id not in self._values]
        if borrowed:
            self.soon(self._fetch_all, borrowed)
        with self._cv:
            ready = [item for item in items if is_ready(item)]
        if len(ready) < num_returns and timeout != 0:
            ready = self._block_until(lambda: [item for item in items if is_ready(item)], num_returns, timeout)
        chosen = {id(item) for item in ready[:num_returns]}
        return [item for item in items if id(item) in chosen], [item for item in items if id(item) not in chosen]

    def _block_until(self, ready_now: Callable[[], list[Any]], num_returns: int, timeout: float | None) -> list[Any]:
        """Wait on the runtime's condition until ``ready_now()`` (called with its lock held)
        lists ``num_returns`` items or ``timeout`` passes; what it listed last. A worker tells
        its node and owner it is blocked meanwhile (they lend its CPU, take back its tasks)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        blocked = self.executor is not None and self.executor.notify_blocked(True)
        try:
            with self._cv:
                while True:
                    ready = ready_now()
                    if len(ready) >= num_returns:
                        return ready
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return ready
                    if self._crashed is not None:  # (set before it notifies: no lost wakeup)
                        raise self._crashed_error()
                    self._cv.wait(remaining)
        finally:
            if blocked:
                self.executor.notify_blocked(False)

    def load_entry(self, entry: m.ValueEntry, deadline: float | None = None) -> Any:
        """The value of ``entry``. A stored object no copy of which can be read is recovered by
        its owner (from another copy, or rebuilt from lineage) and read again."""
        for attempt in range(LOAD_ATTEMPTS + 1):
            if isinstance(entry, m.InlineValue):
                return self.loads(entry.metadata, entry.inband, entry.buffers)
            if attempt == LOAD_ATTEMPTS:
                break
            try:
                return self._load_stored(entry, deadline)
            except ObjectLostError as exc:
                if self._trio_token is None or threading.current_thread() is self._trio_thread:
                    raise
                log.info("object_unreadable", object_id=entry.object_id.hex(), node=entry.node_id, error=str(exc))
                entry = self.call_async(self.recovery.recover, entry, str(exc))
        assert type(entry) is m.StoredValue  # (an inline one returned above)
        raise ObjectLostError(f"object {entry.object_id.hex()} was recovered {LOAD_ATTEMPTS} times, and "
                              f"still no copy could be read (last on node {entry.node_id})")

    def _load_stored(self, entry: m.StoredValue, deadline: float | None) -> Any:
        object_id = entry.object_id
        stored = self.store.get(object_id)
        attempts = 0
        while stored is None:
            if entry.node_id == self.store_node_id:
                raise ObjectLostError(
                    f"object {object_id.hex()} is gone from its node's store (was it freed, or "
                    "the node restarted?)"
                )
            attempts += 1
            if attempts > 3:  # copies are evictable: one may go again before we map it
                raise ObjectLostError(f"object {object_id.hex()} could not be copied to this node")
            self.call_async(self._copy_here, entry, deadline)
            stored = self.store.get(object_id)
            if self.private_store:
                # A private copy lives as long as the value loaded from it (its views hold
                # the memory); the next load copies again.
                self.store.delete(object_id)
        return self.loads(stored.metadata, stored.inband, stored.buffers)

    def loads(self, metadata: bytes, inband: Any, buffers: Sequence[Any]) -> Any:
        """Unpickle a value; borrowed ObjectRefs inside it are registered with their owners."""
        with object_ref_module.collect_incoming() as incoming:
            try:
                value = v.loads(metadata, inband, buffers)
            finally:
                if incoming:
                    self.register_borrowed(incoming)
        return value

    async def _copy_here(self, entry: m.StoredValue, deadline: float | None = None) -> None:
        """Have this node hold a copy of a stored object that lives on another node."""
        if deadline is not None:
            with trio.move_on_after(deadline - time.monotonic()) as scope:
                await self._copy_here(entry)
            if scope.cancelled_caught:
                raise GetTimeoutError(
                    f"get timed out while copying object {entry.object_id.hex()} ({_mb(entry.size)}) "
                    f"from node {entry.node_address}"
                )
            return
        object_id, node_address, owner = entry.object_id, entry.node_address, entry.owner
        if self.private_store:
            await self._pull(object_id, node_address)  # a private store: copy it ourselves
            return
        try:
            assert self.node_conn is not None  # (set once the runtime runs)
            await self.node_conn.request(m.FetchObject(object_id, node_address, owner))
        except RemoteCallError as exc:
            raise ObjectLostError(f"object {object_id.hex()} could not be copied from {node_address}: {exc}") from None
        except ClusterConnectionError as exc:
            raise ObjectLostError(
                f"object {object_id.hex()} could not be copied: this process lost its node daemon ({exc})"
            ) from None

    async def _pull(self, object_id: bytes, node_address: str) -> None:
        """Copy an object from another node's store into ours, in chunks."""
        await pull_object(self._connect, self.store, object_id, node_address)

    # -------------------------------------------------------------------------- cancel

    def cancel(self, ref: ObjectRef, force: bool, recursive: bool = True) -> None:
        if force:
            with self._cv:
                task = self._tasks.get(ref.id[:16])
            if task is not None and task.actor is not None:
                raise ValueError("force=True is not supported for actor tasks: an actor call is never interrupted "
                                 "(its actor's state stays whole); use cluster.kill(actor) to stop the actor")
        self.call(self._cancel, ref.id[:16], force, recursive)

    def _cancel_children(self, parent: bytes, force: bool) -> None:
        """Cancel the unfinished tasks that task ``parent`` (run by this worker) submitted, and
        theirs (each child's worker does the same for its own children)."""
        with self._cv:
            children = [t.task_id for t in self._tasks.values() if t.parent == parent]
        # Newest first: children pipelined to one worker run in submission order, so cancelling
        # the running (oldest) one first would let the next start before its own cancel arrives.
        for task_id in reversed(children):
            self._cancel(task_id, force, True)

    def _cancel(self, task_id: bytes, force: bool, recursive: bool = True) -> None:
        task = self._tasks.get(task_id)
        if task is None or (task.cancelled and not force):
            return
        task.cancelled = True
        if task.actor is not None and task.lease is None:
            state = task.actor
            if isinstance(state, ActorState):
                with state.lock:
                    if task in state.pending:
                        state.pending.remove(task)
            self._finish(task, [v.serialize_error(TaskCancelledError(task.name))] * task.num_returns)
        elif task.lease is None:
            queue = self._queues.get(task.shape)
            if queue is not None and task in queue.pending:
                queue.pending.remove(task)
            self._finish(task, [v.serialize_error(TaskCancelledError(task.name))] * task.num_returns)
        elif task.lease.conn is not None and not task.lease.conn.closed:
            # (force never reaches an actor call: a child actor call of a forced recursive cancel, as Ray)
            task.lease.conn.send(m.CancelTask(task_id, force and task.actor is None, recursive))


def _settle(future: concurrent.futures.Future[Any], load: Callable[[Any], Any], entry: m.ValueEntry) -> None:
    # A future its waiter cancelled (asyncio.wait_for timing out on ``await ref``) takes no value;
    # from here on it cannot be cancelled, so setting it below cannot race with a cancel.
    if not future.set_running_or_notify_cancel():
        return
    try:
        value = load(entry)
    except BaseException as exc:  # the task's error (or the object's loss): the future raises it
        future.set_exception(exc)
    else:
        future.set_result(value)


def _retries_on(retry_exceptions: bool | tuple[type[BaseException], ...], entry: m.ValueEntry) -> bool:
    """Whether a task that failed with ``entry`` runs again, by its ``retry_exceptions``."""
    if retry_exceptions is True:
        return True
    try:
        v.loads(entry.metadata, entry.inband, entry.buffers)  # type: ignore[union-attr]
    except BaseException as exc:  # the task's error (a TaskError, also an instance of its cause)
        cause = getattr(exc, "cause", exc)
        return isinstance(cause, retry_exceptions or ())
    return False


def _mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def choose_local_node(nodes: list[NodeInfo], head_address: str) -> NodeInfo:
    """The node a driver on this machine attaches to: ``CLUSTER_NODE_ID``, else the head's."""
    alive = [node for node in nodes if node["state"] == "alive"]
    wanted = os.environ.get("CLUSTER_NODE_ID")
    if wanted:
        for node in alive:
            if node["node_id"] == wanted:
                return node
        raise ClusterConnectionError(f"CLUSTER_NODE_ID={wanted} names no live node of this cluster")
    here = socket.gethostname()
    local = [node for node in alive if node["hostname"] == here
             and (node.get("object_store") == "memory" or os.path.isdir(node["store_path"]))]
    for node in local:
        if node["is_head"]:
            return node
    if local:
        return local[0]
    raise ClusterConnectionError(
        f"no node of the cluster at {head_address} runs on this machine, and a driver needs one "
        "for its objects. Start one here with `cluster start --address "
        f"{head_address} --host <this machine's address>`, run the script on a machine of the "
        f"cluster, or connect as a remote client: cluster.init('cluster://{head_address}') "
        "(pip install cluster-client), whose calls go through the head."
    )


def _tell_user(text: str) -> None:
    """Say something the driver's user should know (on stderr, as the infeasible warning)."""
    log.warning("driver_notice", message=text)
    print(f"cluster: {text}", file=sys.stderr, flush=True)


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def print_worker_output(msg: Any) -> None:
    """Driver-side sink for what workers print: prefixed with task name and pid."""
    stream = sys.stderr if msg.stream == "stderr" else sys.stdout
    prefix = f"({msg.task_name} pid={msg.pid}) "
    text = "".join(prefix + line + "\n" for line in msg.text.splitlines())
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass
