"""The actor half of the owner runtime (:class:`Actors`, a member of :class:`cluster.owner.runtime.Runtime`).

The process that calls ``C.remote()`` owns the actor: it leases a worker for the actor's
lifetime (the lease is never returned while the actor lives, so the node keeps the worker and
its resources), sends it ``CreateActor``, and restarts it on a new worker if the process dies
and ``max_restarts`` allows. Every caller, owner or not, keeps one :class:`ActorState` per
actor: the calls not sent yet (in submission order) and those in flight on the connection to
the actor's worker. A caller that is not the owner learns the worker's address from the
owner (``GetActorInfo``), also after a restart.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from cluster.context import current_task_id
from cluster.errors import (
    ActorDiedError,
    ActorPlacementGroupRemoved,
    ActorUnschedulableError,
    ClusterConnectionError,
    ConfigError,
    PendingCallsLimitExceeded,
    RemoteCallError,
    RuntimeEnvSetupError,
    TaskCancelledError,
    TaskPlacementGroupRemoved,
    TaskUnschedulableError,
)
from cluster.objects import values as v
from cluster.objects.refs import ObjectRef
from cluster.owner.envs import shape_with_env
from cluster.owner.tasks import Lease, PendingTask, Shape, ShapeQueue
from cluster.scheduling import DEFAULT_PLACEMENT, Placement
from cluster.wire import messages as m
from cluster.wire.codec import packb, unpackb

log = structlog.get_logger("cluster.actors")

if TYPE_CHECKING:
    from cluster.owner.runtime import Runtime
    from cluster.wire.connection import Connection

UNLIMITED = 1 << 30


def unpack_record(record: bytes) -> m.ActorNameRecord:
    """The ActorNameRecord the head's KV keeps under an actor's name."""
    found = unpackb(record)
    if type(found) is not m.ActorNameRecord:
        raise ValueError(f"not an actor name record: {found!r}")
    return found


# What an ActorHandle is made of: (actor_id, class_name, methods, owner, name_key[, lifetime]).
# ``lifetime`` is the ref that keeps an unnamed actor alive (see Actors.create_actor).
HandleFields = tuple[Any, ...]

# The last four bytes of an actor's lifetime object's id (the first 16 are the actor's id).
LIFETIME_SUFFIX = b"\xfe\xff\xff\xff"


@attrs.define(slots=True, eq=False)
class ActorState:
    actor_id: bytes
    class_name: str
    owner: str
    owned: bool
    detached: bool = False
    create: m.CreateActor | None = None  # owner only: how to build it (again)
    shape: Shape = ()
    runtime_env: dict[str, Any] | None = None  # resolved: the env its worker runs in
    placement: Placement = DEFAULT_PLACEMENT  # where it may run (each restart too)
    name_key: str | None = None
    state: str = "pending"  # pending | alive | dead
    cause: str = ""
    address: str = ""
    conn: Connection | None = None
    lease: Lease | None = None
    pending: collections.deque[PendingTask] = attrs.Factory(collections.deque)
    in_flight: dict[bytes, PendingTask] = attrs.Factory(dict)
    resolving: bool = False
    # Calls need not wait behind earlier calls whose arguments are not ready (async and threaded
    # actors, allow_out_of_order_execution); their ids while their arguments are awaited.
    out_of_order: bool = False
    resolving_calls: set[bytes] = attrs.Factory(set)
    restarts_left: int = 0
    restarts: int = 0
    task_retries: int = 0
    ready: trio.Event = attrs.Factory(trio.Event)
    error_entry: m.InlineValue | None = None  # the constructor's error, answered to every call
    held: list[ObjectRef] = attrs.Factory(list)  # refs in the constructor's arguments
    # Guards state, pending and sending: user threads send calls straight to the worker when
    # nothing is ahead of them (unsent: calls submitted but not yet in pending).
    lock: threading.RLock = attrs.Factory(threading.RLock)
    unsent: int = 0

    @property
    def name(self) -> str:
        return self.class_name


class Actors:
    """The actor half of a runtime: creation, calls, failures and kills of the actors it owns
    or calls. A member of :class:`~cluster.owner.runtime.Runtime` (``runtime.actors``), which
    it uses for connections, results and the trio thread."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._actors: dict[bytes, ActorState] = {}
        self._actors_escaped: set[bytes] = set()  # named, or pickled where we cannot follow: live as long as we do

    # ------------------------------------------------------------------ user thread

    def create_actor(self, actor_class: Any, blob: bytes, payload: bytes, dep_refs: list[ObjectRef],
                     held: list[ObjectRef]) -> HandleFields:
        """Start an actor of ``actor_class`` (or find the live one, with ``get_if_exists``);
        return the fields of its handle (the API layer makes the handle)."""
        opts = actor_class._options  # an ActorOptions
        runtime_env = self.rt.resolve_env(opts.runtime_env)
        shape, _ = shape_with_env(opts.shape, runtime_env)
        actor_id = self.rt.new_task_id()
        detached = opts.lifetime == "detached"
        name_key = None
        if opts.name:
            name_key = f"actor/{opts.namespace or self.rt.namespace}/{opts.name}"
        handle: HandleFields
        if detached:  # no owner to ask after we exit: holders find it by name
            handle = (actor_id, actor_class.__name__, actor_class._methods, "", name_key or "")
        elif name_key:  # reachable by name: lives as long as its owner
            handle = (actor_id, actor_class.__name__, actor_class._methods, self.rt.address, "")
        else:
            # Every handle, here or in any process it was passed to, holds this ref: the actor
            # lives until the reference counting frees it (lifetime_ended), as Ray's do.
            lifetime = self.rt.owned_marker(actor_id + LIFETIME_SUFFIX)
            handle = (actor_id, actor_class.__name__, actor_class._methods, self.rt.address, "", lifetime)
        if name_key:
            record = self._name_record(actor_id, actor_class.__name__, actor_class._methods, detached, "")
            if not self.rt.call_async(self._claim_name, name_key, record):
                if opts.get_if_exists:
                    existing = self.named_actor(opts.name, opts.namespace)
                    if existing is not None:
                        return existing
                raise ConfigError(
                    f"an actor named {opts.name!r} already exists in namespace "
                    f"{opts.namespace or self.rt.namespace!r}; pick another name, kill that actor, "
                    "or pass get_if_exists=True to get its handle"
                )
        restarts = opts.max_restarts
        retries = opts.max_task_retries
        state = ActorState(
            actor_id, actor_class.__name__, self.rt.address, True, detached,
            create=m.CreateActor(actor_id, actor_class.__name__, blob, payload, [], self.rt.address,
                                 opts.max_concurrency, dict(opts.concurrency_groups or {}), dict(opts.shape),
                                 handle_owner=handle[3], name_key=handle[4]),
            shape=shape,
            runtime_env=runtime_env,
            placement=opts.placement,
            name_key=name_key,
            restarts_left=UNLIMITED if restarts == -1 else restarts,
            task_retries=UNLIMITED if retries == -1 else retries,
            held=[*dep_refs, *held],
            out_of_order=getattr(actor_class._methods, "out_of_order", False),
        )
        self._actors[actor_id] = state
        if name_key:
            self._actors_escaped.add(actor_id)
        self.rt.soon(self.rt.spawn, self._start_actor, state, dep_refs)
        return handle

    def submit_actor_call(self, handle: Any, method: str, num_returns: int, payload: bytes,
                          dep_refs: list[ObjectRef], held: list[ObjectRef],
                          stream: tuple[int, bool] | None = None, group: str = "") -> list[ObjectRef]:
        """Call ``method``; ``stream``: a generator's (back-pressure limit, dynamic); ``group``:
        the concurrency group it runs in, when the call names one."""
        if handle._max_pending_calls >= 0:
            self._check_pending_limit(handle, handle._max_pending_calls)
        task_id = self.rt.new_task_id()
        task = PendingTask(
            task_id=task_id,
            name=f"{handle._class_name}.{method}",
            function_id=handle._actor_id,
            function=b"",
            args=payload,
            dep_refs=dep_refs,
            num_returns=num_returns,
            return_ids=[task_id + i.to_bytes(4, "little") for i in range(num_returns)],
            shape=(),
            retries_left=0,
            retry_exceptions=False,
            held=held,
            namespace=self.rt.caller_namespace(),
        )
        task.method = method
        task.group = group
        task.actor = handle
        if self.rt.executor is not None:
            task.parent = current_task_id.get()
        if handle._lifetime is not None and handle._owner != self.rt.address:
            held.append(handle._lifetime)  # a borrower's call in flight keeps the actor alive
        if stream is not None:
            self.rt.streams.open(task, *stream)
        state = self._actors.get(handle._actor_id)
        refs = [ObjectRef(oid, self.rt.address) for oid in task.return_ids]  # before a reply can come
        if state is not None:
            with state.lock:
                if not dep_refs and self._send_call_now(state, task):
                    return refs
                state.unsent += 1
                task.counted = True
        return self.rt.submit(task, refs)

    def _check_pending_limit(self, handle: Any, limit: int) -> None:
        """Ray's ``max_pending_calls``: refuse a call while ``limit`` calls through this
        process's handles of the actor are unfinished."""
        state = self._actors.get(handle._actor_id) or self.rt.call(self._actor_state, handle)
        with state.lock:
            pending = len(state.pending) + len(state.in_flight) + state.unsent
        if pending >= limit:
            raise PendingCallsLimitExceeded(
                f"actor {handle._class_name} has {pending} unfinished calls from this process, and its "
                f"max_pending_calls is {limit}: wait for some (cluster.get or cluster.wait) before calling "
                "it again, or create it with a higher max_pending_calls"
            )

    def _send_call_now(self, state: ActorState, task: Any) -> bool:
        """From the caller's thread: send the call at once if nothing is ahead of it (the
        common case), skipping the hop through the trio thread. Holds state.lock."""
        conn = state.conn
        if state.state != "alive" or state.unsent or state.pending or conn is None or conn.closed:
            return False
        with self.rt._cv:
            self.rt._tasks[task.task_id] = task
            self.rt._owned.update(task.return_ids)
        task.actor = task.lease = state
        state.in_flight[task.task_id] = task
        spec = m.TaskSpec(task.task_id, task.name, state.actor_id, None, task.args, [], task.num_returns,
                          self.rt.address, task.method, task.namespace,
                          None if task.stream is None else task.stream.spec(), task.group)
        try:
            conn.send_threadsafe(m.PushTasks([spec]))
        except ClusterConnectionError:
            pass  # the close callback fails or retries it
        return True

    def named_actor(self, name: str, namespace: str | None) -> HandleFields | None:
        """The handle fields of the live actor ``name`` in ``namespace``, or None."""
        key = f"actor/{namespace or self.rt.namespace}/{name}"
        record = self.rt.call_async(self._live_record, key)
        if record is None:
            return None
        found = unpack_record(record)
        return (found.actor_id, found.class_name, found.methods, found.owner, "" if found.owner else key)

    async def _claim_name(self, key: str, record: bytes) -> bool:
        """Take ``key`` for a new actor; a name left behind by a dead actor is taken over."""
        if await self.kv_request(m.KvPut(key, record, False)):
            return True
        if await self.kv_request(m.KvGet(key)) == record:
            return True  # ours: the head took it and went away before it answered, and it was asked again
        if await self._live_record(key) is not None:
            return False
        return bool(await self.kv_request(m.KvPut(key, record, True)))

    async def _live_record(self, key: str) -> bytes | None:
        """The record under an actor name if its actor still lives; a stale one is removed
        (its owner died without saying so, or its detached worker is gone)."""
        record: bytes | None = await self.kv_request(m.KvGet(key))
        if record is None:
            return None
        found = unpack_record(record)
        actor_id, owner, address = found.actor_id, found.owner, found.address
        state = self._actors.get(actor_id)
        if state is not None and state.owned:
            return record if state.state != "dead" else None
        try:
            if owner:
                conn = await self.rt._connect(owner, "the actor's owner")
                with trio.fail_after(10):
                    info = await conn.request(m.GetActorInfo(actor_id))
                alive = info.state != "dead"
            else:
                alive = not address or (await self.rt._connect(address, "the actor's worker")) is not None
        except (ClusterConnectionError, RemoteCallError, trio.TooSlowError):
            alive = False
        if alive:
            return record
        current = await self.kv_request(m.KvGet(key))
        if current == record:  # still the stale one (not a new claim meanwhile)
            await self.kv_request(m.KvDelete(key))
        return None

    def _name_record(self, actor_id: bytes, class_name: str, methods: dict[str, int | str], detached: bool,
                     address: str) -> bytes:
        """What the head keeps under an actor's name: the owner to ask, or (detached) where it runs."""
        return packb(m.ActorNameRecord(actor_id, class_name, methods, "" if detached else self.rt.address, address))

    def actor_handle_escaped(self, actor_id: bytes) -> None:
        """A handle without a lifetime ref left the process (through a remote client): the
        actor lives as long as we do."""
        self._actors_escaped.add(actor_id)

    def lifetime_ended(self, actor_id: bytes) -> None:
        """The last handle anywhere is gone (the reference counting freed the actor's lifetime
        object): stop the actor once its calls are done, as Ray does for unnamed actors."""
        if actor_id in self._actors_escaped:
            return
        if self.rt._trio_token is not None and not self.rt._stopped:
            try:
                self.rt.soon(self.rt.spawn, self._release_actor, actor_id)
            except trio.RunFinishedError:
                pass

    async def _release_actor(self, actor_id: bytes) -> None:
        state = self._actors.get(actor_id)
        if state is None or not state.owned:
            return
        while state.state != "dead" and (state.pending or state.in_flight or state.state == "pending"):
            await trio.sleep(0.05)
        if state.state != "dead":
            state.restarts_left = 0
            self._actor_dead(state, "all its handles were dropped")
            if state.lease is not None and not state.lease.node_conn.closed:
                state.lease.node_conn.send(m.ReturnLease(state.lease.lease_id, False))
        self._actors.pop(actor_id, None)

    def kill_actor(self, handle: Any, no_restart: bool) -> None:
        state = self._actors.get(handle._actor_id)
        if handle._owner or (state is not None and state.owned):
            self.rt.call(self._kill_actor, handle._actor_id, handle._owner or self.rt.address, no_restart)
        else:
            self.rt.call_async(self._kill_detached, handle)

    async def _kill_detached(self, handle: Any) -> None:
        """Stop a detached actor we do not own: tell its worker to exit, and forget its name."""
        address = await self._detached_address(handle._name_key, handle._actor_id, wait=False)
        if address:
            try:
                conn = await self.rt._connect(address, "the actor's worker")
                conn.send(m.KillActor(handle._actor_id, True))
            except ClusterConnectionError:
                pass  # already gone
        await self._forget_name(handle._name_key)
        state = self._actors.get(handle._actor_id)
        if state is not None:
            state.restarts_left = 0
            self._actor_dead(state, "it was killed with cluster.kill()")

    async def _detached_address(self, key: str, actor_id: bytes, wait: bool = True) -> str | None:
        """The worker address a detached actor registered under its name (None: not there)."""
        deadline = trio.current_time() + 60
        while True:
            record = await self.kv_request(m.KvGet(key))
            found = None if record is None else unpack_record(record)
            if found is None or found.actor_id != actor_id:
                return None
            address = found.address
            if address or not wait or trio.current_time() > deadline:
                return address or None
            await trio.sleep(0.05)  # its creator is still starting it

    # ------------------------------------------------------------------ trio thread

    async def kv_request(self, msg: Any) -> Any:
        return await self.rt.head_request(msg)

    def _actor_state(self, handle: Any) -> ActorState:
        state = self._actors.get(handle._actor_id)
        if state is None:  # a handle that came from elsewhere: ask the owner where it lives
            state = ActorState(handle._actor_id, handle._class_name, handle._owner, False,
                               name_key=handle._name_key or None, detached=not handle._owner,
                               out_of_order=getattr(handle._methods, "out_of_order", False))
            self._actors[handle._actor_id] = state
            self.rt.spawn(self._locate_actor, state)
        return state

    def enqueue_call(self, task: Any) -> None:
        state = self._actor_state(task.actor)
        task.actor = state
        with state.lock:
            if task.counted:
                state.unsent -= 1
            state.pending.append(task)
            self._pump_actor(state)

    def _pump_actor(self, state: ActorState) -> None:
        with state.lock:
            self._pump_actor_locked(state)

    def _pump_actor_locked(self, state: ActorState) -> None:
        if state.state == "pending":
            return
        if state.state == "dead":
            self._fail_actor_calls(state, list(state.pending))
            state.pending.clear()
            return
        specs = []
        waiting: list[PendingTask] = []  # (out of order: calls passed over, in their order)
        while state.pending:
            task = state.pending[0]
            if task.dep_refs and not self.rt._deps_ready(task):
                if state.out_of_order:
                    waiting.append(state.pending.popleft())
                    if task.task_id not in state.resolving_calls:
                        state.resolving_calls.add(task.task_id)
                        self.rt.spawn(self._resolve_one_call, state, task)
                    continue
                if not state.resolving:
                    state.resolving = True
                    self.rt.spawn(self._resolve_actor_call, state, task)
                break
            state.pending.popleft()
            if task.cancelled:
                self.rt._finish(task, [v.serialize_error(TaskCancelledError(task.name))] * task.num_returns)
                continue
            if task.dep_refs and self.rt._failed_dependency(task):
                continue
            task.lease = state
            state.in_flight[task.task_id] = task
            specs.append(m.TaskSpec(task.task_id, task.name, state.actor_id, None, task.args, task.deps,
                                    task.num_returns, self.rt.address, task.method, task.namespace,
                                    None if task.stream is None else task.stream.spec(), task.group))
        state.pending.extend(waiting)
        if specs and state.conn is not None:
            try:
                state.conn.send(m.PushTasks(specs))
            except ClusterConnectionError:
                pass  # the close callback deals with them

    async def _resolve_one_call(self, state: ActorState, task: Any) -> None:
        for ref in task.dep_refs:
            await self.rt._wait_entry(ref)
        state.resolving_calls.discard(task.task_id)
        self._pump_actor(state)

    async def _resolve_actor_call(self, state: ActorState, task: Any) -> None:
        for ref in task.dep_refs:
            await self.rt._wait_entry(ref)
        state.resolving = False
        self._pump_actor(state)

    async def _start_actor(self, state: ActorState, dep_refs: list[ObjectRef] | None = None) -> None:
        """Lease a worker for the actor and build it there (again, after a restart)."""
        if dep_refs:
            deps = [await self.rt._wait_entry(ref) for ref in dep_refs]
            assert state.create is not None  # (an owner's actor)
            state.create = attrs.evolve(state.create, deps=deps)
            for entry in deps:
                if type(entry) is m.InlineValue and entry.is_error:
                    self._actor_dead(state, "an argument of its constructor failed", entry)
                    return
        queue = ShapeQueue(state.shape, for_actor=True, runtime_env=state.runtime_env,  # (keeps an infeasible shape asking)
                           placement=state.placement)
        try:
            lease = await self.rt._lease_worker(queue, lambda *_: None, detached=state.detached)
        except RuntimeEnvSetupError as exc:
            self._actor_dead(state, str(exc), v.serialize_error(exc))
            return
        except TaskUnschedulableError as exc:
            error = ActorUnschedulableError(f"actor {state.class_name} cannot be placed: {exc}")
            self._actor_dead(state, str(error), v.serialize_error(error))
            return
        except TaskPlacementGroupRemoved as exc:
            removed = ActorPlacementGroupRemoved(f"actor {state.class_name} cannot be placed: {exc}")
            self._actor_dead(state, str(removed), v.serialize_error(removed))
            return
        if state.state == "dead":  # killed while it was being placed
            if lease is not None:
                lease.conn.context = None
                lease.node_conn.send(m.ReturnLease(lease.lease_id, False))
            return
        if lease is None:
            self._actor_dead(state, "no worker could be leased for it")
            return
        lease.conn.context = state
        if self._on_actor_lost not in lease.conn.on_close:
            lease.conn.on_close.append(self._on_actor_lost)
        state.lease, state.conn, state.address = lease, lease.conn, lease.conn.peer
        assert state.create is not None  # (only owners start actors)
        try:
            create = attrs.evolve(state.create, restarted=bool(state.restarts), gpu_ids=list(lease.gpu_ids or ()))
            error = await lease.conn.request(create)
        except (ClusterConnectionError, RemoteCallError) as exc:
            self._actor_lost(state, f"its worker died while building it ({exc})")
            return
        if error is not None:
            lease.node_conn.send(m.ReturnLease(lease.lease_id, False))
            self._actor_dead(state, "its constructor raised", error)
            return
        state.state = "alive"
        state.cause = ""  # (what a fault left for _on_actor_lost to say is spent)
        if state.restarts_left == 0:
            # No restart will need the constructor's arguments again: let go of the refs in
            # them (the worker borrowed what it kept), so that an actor handle passed in does
            # not live as long as this actor does.
            state.held = []
        state.ready.set()
        if state.detached and state.name_key:  # holders find a detached actor's worker through its name
            old = await self.kv_request(m.KvGet(state.name_key))
            found = None if old is None else unpack_record(old)
            if found is not None and found.actor_id == state.actor_id:
                record = self._name_record(state.actor_id, found.class_name, found.methods, True, state.address)
                await self.kv_request(m.KvPut(state.name_key, record, True))
        log.info("actor_started", actor=state.class_name, actor_id=state.actor_id.hex(), worker=state.address)
        self._pump_actor(state)

    async def _locate_actor(self, state: ActorState) -> None:
        """A caller that does not own the actor: find its worker through its owner (or, for a
        detached actor, through its name)."""
        try:
            if state.detached:
                address = await self._detached_address(state.name_key or "", state.actor_id) or ""
                status, cause = ("alive", "") if address else ("dead", "its name is no longer registered")
            else:
                owner = await self.rt._connect(state.owner, "the actor's owner")
                info = await owner.request(m.GetActorInfo(state.actor_id))
                status, address, cause = info.state, info.address, info.cause
            if status == "alive":
                try:
                    conn = await self.rt._connect(address, "the actor's worker")
                except ClusterConnectionError as exc:
                    status, cause = "dead", f"its worker at {address} is unreachable ({exc})"
        except (ClusterConnectionError, RemoteCallError) as exc:
            status, cause = "dead", f"its owner at {state.owner} is unreachable ({exc}), and an actor dies with its owner"
        if status != "alive":
            self._actor_dead(state, cause)
            return
        conn.context = state
        if self._on_actor_lost not in conn.on_close:
            conn.on_close.append(self._on_actor_lost)
        state.conn, state.address, state.state = conn, address, "alive"
        state.ready.set()
        self._pump_actor(state)

    def node_died(self, node_id: str, why: str) -> None:
        """``node_id`` died: our actors leased there are lost (restart, or dead), even where
        the connection to their worker stays open and silent (a partition)."""
        for state in list(self._actors.values()):
            if state.lease is not None and state.lease.node_id == node_id and state.conn is not None:
                state.cause = f"it ran on {why}"
                state.conn.abort()

    def _on_actor_lost(self, conn: Any) -> None:
        state = conn.context
        if isinstance(state, ActorState) and state.conn is conn:
            self._actor_lost(state, state.cause or "its worker process died")

    def _actor_lost(self, state: ActorState, cause: str) -> None:
        """The actor's worker is gone: restart it (owner) or ask again (caller), else it is dead."""
        with state.lock:
            self._actor_lost_locked(state, cause)

    def _actor_lost_locked(self, state: ActorState, cause: str) -> None:
        if state.state == "dead":
            self._fail_actor_calls(state, list(state.in_flight.values()))
            state.in_flight.clear()
            return
        lost = list(state.in_flight.values())
        state.in_flight.clear()
        state.conn = state.lease = None
        can_restart = state.owned and state.restarts_left > 0
        if not state.owned or can_restart:
            retry = [task for task in lost if task.retries_left > 0 or (state.owned and state.task_retries > 0)]
            for task in retry:
                task.retries_left = max(task.retries_left, state.task_retries) - 1
            self._fail_actor_calls(state, [task for task in lost if task not in retry], cause)
            state.pending.extendleft(reversed(retry))
            state.state = "pending"
            state.ready = trio.Event()
            if state.owned:
                state.restarts_left -= 1
                state.restarts += 1
                log.warning("actor_restarting", actor=state.class_name, cause=cause, restarts_left=state.restarts_left)
                self.rt.report_failure("actor_restart", f"{state.class_name} ({state.actor_id.hex()[:12]}): {cause}")
                self.rt.spawn(self._start_actor, state)
            else:
                self.rt.spawn(self._locate_actor, state)
            return
        self._fail_actor_calls(state, lost, cause)
        self._actor_dead(state, cause)

    def _actor_dead(self, state: ActorState, cause: str, error_entry: m.InlineValue | None = None) -> None:
        with state.lock:
            self._actor_dead_locked(state, cause, error_entry)

    def _actor_dead_locked(self, state: ActorState, cause: str, error_entry: m.InlineValue | None = None) -> None:
        if state.state != "dead":
            state.state = "dead"
            state.cause = cause
            state.error_entry = error_entry
            state.held = []
            if state.name_key and state.owned:
                self.rt.spawn(self._forget_name, state.name_key)
            log.info("actor_dead", actor=state.class_name, actor_id=state.actor_id.hex(), cause=cause)
        state.ready.set()
        self._pump_actor(state)

    async def _forget_name(self, key: str) -> None:
        try:
            await self.kv_request(m.KvDelete(key))
        except (ClusterConnectionError, RemoteCallError):
            pass

    def _fail_actor_calls(self, state: ActorState, tasks: list[PendingTask], cause: str | None = None) -> None:
        if not tasks:
            return
        if state.error_entry is not None and cause is None:
            entry = state.error_entry
        else:
            entry = v.serialize_error(ActorDiedError(
                f"actor {state.class_name} ({state.actor_id.hex()[:12]}) is dead: {cause or state.cause}"
            ))
        self.rt._finish_many([(task, [entry] * task.num_returns) for task in tasks])

    def _kill_actor(self, actor_id: bytes, owner: str, no_restart: bool) -> None:
        state = self._actors.get(actor_id)
        if owner != self.rt.address:
            self.rt.spawn(self._send_kill, owner, actor_id, no_restart)
            return
        if state is None or state.state == "dead":
            return
        if no_restart:
            state.restarts_left = 0
            self._actor_dead(state, "it was killed with cluster.kill()")
        else:
            state.cause = "it was killed with cluster.kill(no_restart=False)"
        if state.lease is not None and not state.lease.node_conn.closed:
            state.lease.node_conn.send(m.ReturnLease(state.lease.lease_id, False))  # the node kills it

    async def _send_kill(self, owner: str, actor_id: bytes, no_restart: bool) -> None:
        try:
            conn = await self.rt._connect(owner, "the actor's owner")
            conn.send(m.KillActor(actor_id, no_restart))
        except ClusterConnectionError:
            pass  # the owner is gone, and its actors with it

    async def _serve_actor_info(self, conn: Any, request_id: int, actor_id: bytes) -> None:
        state = self._actors.get(actor_id)
        if state is None or not state.owned:
            conn.reply(request_id, m.ActorInfo("dead", "", "its owner does not know it (it was never created here, or is gone)"))
            return
        while state.state == "pending":
            await state.ready.wait()
        conn.reply(request_id, m.ActorInfo(state.state, state.address, state.cause))

    def handle_message(self, conn: Any, msg: Any, request_id: int) -> bool:
        kind = type(msg)
        if kind is m.GetActorInfo:
            self.rt.spawn(self._serve_actor_info, conn, request_id, msg.actor_id)
        elif kind is m.KillActor:
            state = self._actors.get(msg.actor_id)
            if state is not None and state.owned:
                self._kill_actor(msg.actor_id, self.rt.address, msg.no_restart)
            elif self.rt.executor is not None and self.rt.executor.actor_id == msg.actor_id:
                log.info("actor_killed", actor_id=msg.actor_id.hex())
                os._exit(0)  # a detached actor, told to stop by a handle holder: the node cleans up
        elif kind is m.ActorExited:
            state = self._actors.get(msg.actor_id)
            if state is not None:
                with state.lock:
                    state.restarts_left = 0  # (ended on purpose: its connection closing next is no crash)
                    state.cause = msg.reason
                log.info("actor_exited", actor=state.class_name, reason=msg.reason)
        elif kind is m.ListActors:
            conn.reply(request_id, m.ActorTable(self.actor_table(), self._hosted_actor()))
        elif kind is m.CreateActor and self.rt.executor is not None:
            self.rt.executor.create_actor(conn, request_id, msg)
        else:
            return False
        return True

    def _hosted_actor(self) -> dict[str, Any] | None:
        executor = self.rt.executor
        if executor is None or executor.actor_id is None:
            return None
        return {"actor_id": executor.actor_id.hex(), "class": type(executor._actor).__name__}

    def actor_table(self) -> list[dict[str, Any]]:
        return [
            {"actor_id": s.actor_id.hex(), "class": s.class_name, "state": s.state, "address": s.address,
             "restarts": s.restarts, "cause": s.cause,
             "name": s.name_key.rsplit("/", 1)[-1] if s.name_key else ""}
            for s in self._actors.values() if s.owned
        ]
