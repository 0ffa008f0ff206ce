"""The actor half of the owner runtime (mixed into :class:`cluster.runtime.Runtime`).

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
import pickle
from typing import Any

import attrs
import structlog
import trio

from cluster import messages as m
from cluster import values as v
from cluster.errors import (
    ActorDiedError,
    ClusterConnectionError,
    ConfigError,
    RemoteCallError,
    TaskCancelledError,
)
from cluster.object_ref import ObjectRef

log = structlog.get_logger("cluster.actors")

UNLIMITED = 1 << 30


@attrs.define(slots=True, eq=False)
class ActorState:
    actor_id: bytes
    class_name: str
    owner: str
    owned: bool
    create: m.CreateActor | None = None  # owner only: how to build it (again)
    shape: tuple = ()
    name_key: str | None = None
    state: str = "pending"  # pending | alive | dead
    cause: str = ""
    address: str = ""
    conn: Any = None
    lease: Any = None
    pending: collections.deque = attrs.Factory(collections.deque)
    in_flight: dict = attrs.Factory(dict)
    resolving: bool = False
    restarts_left: int = 0
    restarts: int = 0
    task_retries: int = 0
    ready: trio.Event = attrs.Factory(trio.Event)
    error_entry: list | None = None  # the constructor's error, answered to every call
    held: list = attrs.Factory(list)  # refs in the constructor's arguments

    @property
    def name(self) -> str:
        return self.class_name


class ActorRuntime:
    """Actor creation, calls, failures and kills; needs the rest of Runtime."""

    _actors: dict[bytes, ActorState]

    # ------------------------------------------------------------------ user thread

    def create_actor(self, actor_class: Any, blob: bytes, payload: bytes, dep_refs: list, held: list) -> Any:
        from cluster.actor import DEFAULT_NAMESPACE, ActorHandle

        opts = actor_class._options
        actor_id = self.new_task_id()
        handle = ActorHandle(actor_id, actor_class.__name__, actor_class._methods, self.address)
        name_key = None
        if opts["name"]:
            name_key = f"actor/{opts['namespace'] or DEFAULT_NAMESPACE}/{opts['name']}"
            record = pickle.dumps((actor_id, actor_class.__name__, actor_class._methods, self.address))
            if not self.call_async(self._kv_request, m.KvPut(name_key, record, False)):
                if opts["get_if_exists"]:
                    existing = self.named_actor(opts["name"], opts["namespace"])
                    if existing is not None:
                        return existing
                raise ConfigError(
                    f"an actor named {opts['name']!r} already exists in namespace "
                    f"{opts['namespace'] or DEFAULT_NAMESPACE!r}; pick another name, kill that actor, "
                    "or pass get_if_exists=True to get its handle"
                )
        shape = {"CPU": float(opts["num_cpus"]), "GPU": float(opts["num_gpus"]), **(opts["resources"] or {})}
        restarts = opts["max_restarts"]
        retries = opts["max_task_retries"]
        state = ActorState(
            actor_id, actor_class.__name__, self.address, True,
            create=m.CreateActor(actor_id, actor_class.__name__, blob, payload, [], self.address,
                                 opts["max_concurrency"]),
            shape=tuple(sorted((k, float(x)) for k, x in shape.items() if x)),
            name_key=name_key,
            restarts_left=UNLIMITED if restarts == -1 else restarts,
            task_retries=UNLIMITED if retries == -1 else retries,
            held=[*dep_refs, *held],
        )
        self._actors[actor_id] = state
        self.soon(self._nursery.start_soon, self._start_actor, state, dep_refs)
        return handle

    def submit_actor_call(self, handle: Any, method: str, num_returns: int, payload: bytes,
                          dep_refs: list, held: list) -> list[ObjectRef]:
        from cluster.runtime import PendingTask

        task_id = self.new_task_id()
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
        )
        task.method = method
        task.actor = handle
        return self.submit(task)

    def named_actor(self, name: str, namespace: str | None) -> Any:
        from cluster.actor import DEFAULT_NAMESPACE, ActorHandle

        record = self.call_async(self._kv_request, m.KvGet(f"actor/{namespace or DEFAULT_NAMESPACE}/{name}"))
        if record is None:
            return None
        actor_id, class_name, methods, owner = pickle.loads(record)
        return ActorHandle(actor_id, class_name, methods, owner)

    def kill_actor(self, handle: Any, no_restart: bool) -> None:
        self.call(self._kill_actor, handle._actor_id, handle._owner, no_restart)

    # ------------------------------------------------------------------ trio thread

    async def _kv_request(self, msg: Any) -> Any:
        head = await self._connect(self.head_address, "the cluster")
        return await head.request(msg)

    def _actor_state(self, handle: Any) -> ActorState:
        state = self._actors.get(handle._actor_id)
        if state is None:  # a handle that came from elsewhere: ask the owner where it lives
            state = ActorState(handle._actor_id, handle._class_name, handle._owner, False)
            self._actors[handle._actor_id] = state
            self._nursery.start_soon(self._locate_actor, state)
        return state

    def _enqueue_actor_call(self, task: Any) -> None:
        state = self._actor_state(task.actor)
        task.actor = state
        state.pending.append(task)
        self._pump_actor(state)

    def _pump_actor(self, state: ActorState) -> None:
        if state.state == "pending":
            return
        if state.state == "dead":
            self._fail_actor_calls(state, list(state.pending))
            state.pending.clear()
            return
        specs = []
        while state.pending:
            task = state.pending[0]
            if task.dep_refs and not self._deps_ready(task):
                if not state.resolving:
                    state.resolving = True
                    self._nursery.start_soon(self._resolve_actor_call, state, task)
                break
            state.pending.popleft()
            if task.cancelled:
                self._finish(task, [v.serialize_error(TaskCancelledError(task.name))] * task.num_returns)
                continue
            if task.dep_refs and self._failed_dependency(task):
                continue
            task.lease = state
            state.in_flight[task.task_id] = task
            specs.append(m.TaskSpec(task.task_id, task.name, state.actor_id, None, task.args, task.deps,
                                    task.num_returns, self.address, task.method))
        if specs:
            try:
                state.conn.send(m.PushTasks(specs))
            except ClusterConnectionError:
                pass  # the close callback deals with them

    async def _resolve_actor_call(self, state: ActorState, task: Any) -> None:
        for ref in task.dep_refs:
            await self._wait_entry(ref)
        state.resolving = False
        self._pump_actor(state)

    async def _start_actor(self, state: ActorState, dep_refs: list | None = None) -> None:
        """Lease a worker for the actor and build it there (again, after a restart)."""
        from cluster.runtime import ShapeQueue

        if dep_refs:
            deps = [await self._wait_entry(ref) for ref in dep_refs]
            state.create = attrs.evolve(state.create, deps=deps)
            for entry in deps:
                if entry[0] == v.INLINE and entry[1] == v.ERROR:
                    self._actor_dead(state, "an argument of its constructor failed", entry)
                    return
        queue = ShapeQueue(state.shape)
        queue.pending.append(state)  # keeps an infeasible shape asking
        lease = await self._lease_worker(queue, lambda *_: None)
        if state.state == "dead":  # killed while it was being placed
            if lease is not None:
                lease.node_conn.send(m.ReturnLease(lease.lease_id, False))
            return
        if lease is None:
            self._actor_dead(state, "no worker could be leased for it")
            return
        lease.conn.context = state
        if self._on_actor_lost not in lease.conn.on_close:
            lease.conn.on_close.append(self._on_actor_lost)
        state.lease, state.conn, state.address = lease, lease.conn, lease.conn.peer
        try:
            error = await lease.conn.request(state.create)
        except (ClusterConnectionError, RemoteCallError) as exc:
            self._actor_lost(state, f"its worker died while building it ({exc})")
            return
        if error is not None:
            lease.node_conn.send(m.ReturnLease(lease.lease_id, False))
            self._actor_dead(state, "its constructor raised", error)
            return
        state.state = "alive"
        state.ready.set()
        log.info("actor_started", actor=state.class_name, actor_id=state.actor_id.hex(), worker=state.address)
        self._pump_actor(state)

    async def _locate_actor(self, state: ActorState) -> None:
        """A caller that does not own the actor: find its worker through its owner."""
        try:
            owner = await self._connect(state.owner, "the actor's owner")
            status, address, cause = await owner.request(m.GetActorInfo(state.actor_id))
            if status == "alive":
                conn = await self._connect(address, "the actor's worker")
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

    def _on_actor_lost(self, conn: Any) -> None:
        state = conn.context
        if isinstance(state, ActorState) and state.conn is conn:
            self._actor_lost(state, state.cause or "its worker process died")

    def _actor_lost(self, state: ActorState, cause: str) -> None:
        """The actor's worker is gone: restart it (owner) or ask again (caller), else it is dead."""
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
                self._nursery.start_soon(self._start_actor, state)
            else:
                self._nursery.start_soon(self._locate_actor, state)
            return
        self._fail_actor_calls(state, lost, cause)
        self._actor_dead(state, cause)

    def _actor_dead(self, state: ActorState, cause: str, error_entry: list | None = None) -> None:
        if state.state != "dead":
            state.state = "dead"
            state.cause = cause
            state.error_entry = error_entry
            state.held = []
            if state.name_key and state.owned:
                self._nursery.start_soon(self._forget_name, state.name_key)
            log.info("actor_dead", actor=state.class_name, actor_id=state.actor_id.hex(), cause=cause)
        state.ready.set()
        self._pump_actor(state)

    async def _forget_name(self, key: str) -> None:
        try:
            await self._kv_request(m.KvDelete(key))
        except (ClusterConnectionError, RemoteCallError):
            pass

    def _fail_actor_calls(self, state: ActorState, tasks: list, cause: str | None = None) -> None:
        if not tasks:
            return
        if state.error_entry is not None and cause is None:
            entry = state.error_entry
        else:
            entry = v.serialize_error(ActorDiedError(
                f"actor {state.class_name} ({state.actor_id.hex()[:12]}) is dead: {cause or state.cause}"
            ))
        self._finish_many([(task, [entry] * task.num_returns) for task in tasks])

    def _kill_actor(self, actor_id: bytes, owner: str, no_restart: bool) -> None:
        state = self._actors.get(actor_id)
        if owner != self.address:
            self._nursery.start_soon(self._send_kill, owner, actor_id, no_restart)
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
            conn = await self._connect(owner, "the actor's owner")
            conn.send(m.KillActor(actor_id, no_restart))
        except ClusterConnectionError:
            pass  # the owner is gone, and its actors with it

    async def _serve_actor_info(self, conn: Any, request_id: int, actor_id: bytes) -> None:
        state = self._actors.get(actor_id)
        if state is None or not state.owned:
            conn.reply(request_id, ["dead", "", "its owner does not know it (it was never created here, or is gone)"])
            return
        while state.state == "pending":
            await state.ready.wait()
        conn.reply(request_id, [state.state, state.address, state.cause])

    def _actor_messages(self, conn: Any, msg: Any, request_id: int) -> bool:
        kind = type(msg)
        if kind is m.GetActorInfo:
            self._nursery.start_soon(self._serve_actor_info, conn, request_id, msg.actor_id)
        elif kind is m.KillActor:
            self._kill_actor(msg.actor_id, self.address, msg.no_restart)
        elif kind is m.CreateActor and self.executor is not None:
            self.executor.create_actor(conn, request_id, msg)
        else:
            return False
        return True

    def actor_table(self) -> list[dict]:
        return [
            {"actor_id": s.actor_id.hex(), "class": s.class_name, "state": s.state, "address": s.address,
             "restarts": s.restarts, "cause": s.cause, "owner_pid": os.getpid(),
             "name": s.name_key.rsplit("/", 1)[-1] if s.name_key else ""}
            for s in self._actors.values() if s.owned
        ]
