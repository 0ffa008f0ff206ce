"""Control messages: attrs value types, one tag each.

The wire format (msgpack arrays) lives in :mod:`cluster.wire.codec`; here are only the types.
A field whose type is another message type, or a list of one, is declared in ``NESTED`` so the
codec can rebuild it.
"""

from __future__ import annotations

from typing import Any

import attrs

MESSAGE_TYPES: dict[int, type] = {}


def message(tag: int, **nested: type) -> Any:
    """Declare a message type with a unique wire ``tag``; ``nested`` maps field -> element type."""

    def wrap(cls: type) -> type:
        if not attrs.has(cls):
            raise TypeError(f"{cls.__name__}: put @message above @attrs.frozen")
        if tag in MESSAGE_TYPES:
            raise RuntimeError(f"message tag {tag} used twice")
        cls.TAG = tag  # type: ignore[attr-defined]
        cls.NESTED = nested  # type: ignore[attr-defined]
        MESSAGE_TYPES[tag] = cls
        return cls

    return wrap


# --- handshake (the only messages read from a peer that has not authenticated) ----------


@message(1)
@attrs.frozen
class Hello:
    version: int
    role: str
    nonce: bytes


@message(2)
@attrs.frozen
class Auth:
    version: int
    role: str
    nonce: bytes
    mac: bytes


@message(3)
@attrs.frozen
class Welcome:
    mac: bytes


@message(4)
@attrs.frozen
class Refuse:
    code: str
    reason: str


# --- generic replies ----------------------------------------------------------------------


@message(10)
@attrs.frozen
class Ok:
    value: Any = None


@message(11)
@attrs.frozen
class Fail:
    kind: str
    message: str


@message(12)
@attrs.frozen
class Pending:
    """Sent with a request's id: the answer will take a while (and why)."""

    reason: str


# --- head ---------------------------------------------------------------------------------


@message(20)
@attrs.frozen
class RegisterNode:
    node_id: str
    address: str
    resources: dict
    labels: dict
    hostname: str
    pid: int
    store_path: str
    is_head: bool
    store_capacity: int
    spill_dir: str | None
    object_store: str = "shared"


@message(21)
@attrs.frozen
class Heartbeat:
    node_id: str
    available: dict
    view_version: int
    store: dict  # {"used", "objects", "spilled", "copies", "pulled", ...}: bytes and counts
    demand: list = attrs.Factory(list)  # [{"shape", "count", "infeasible"}]: work waiting here


@message(27)
@attrs.frozen
class ViewUpdate:
    version: int
    view: list


@message(22)
@attrs.frozen
class RegisterDriver:
    pid: int
    hostname: str
    address: str = ""  # the driver's own listener (it owns objects)


@message(23)
@attrs.frozen
class ListNodes:
    pass


@message(24)
@attrs.frozen
class KvPut:
    key: str
    value: bytes
    overwrite: bool = True


@message(25)
@attrs.frozen
class KvGet:
    key: str


@message(26)
@attrs.frozen
class KvDelete:
    key: str


@message(29)
@attrs.frozen
class ServiceRequest:
    """For a plugin's service in a daemon, by name (see cluster.daemon.Services). ``payload``
    is whatever msgpack carries; the reply is the service's."""

    service: str
    payload: Any


# --- node ---------------------------------------------------------------------------------


@message(40)
@attrs.frozen
class RequestLease:
    shape: dict
    owner: str
    spill_count: int
    detached: bool = False  # for a detached actor: the lease outlives its owner's connection
    backlog: int = 0  # how many tasks of this shape the owner has waiting (the demand it stands for)


@message(41)
@attrs.frozen
class ReturnLease:
    lease_id: int
    worker_ok: bool


@message(42)
@attrs.frozen
class RegisterWorker:
    worker_id: str
    address: str
    pid: int


@message(43)
@attrs.frozen
class PullObject:
    object_id: bytes


@message(46)
@attrs.frozen
class PullChunk:
    object_id: bytes
    offset: int
    length: int


@message(44)
@attrs.frozen
class DeleteObjects:
    object_ids: list


@message(45)
@attrs.frozen
class WorkerBlocked:
    worker_id: str
    blocked: bool


# --- owner <-> worker (the hot path) -------------------------------------------------------


@message(60)
@attrs.frozen
class TaskSpec:
    task_id: bytes
    name: str
    function_id: bytes
    function: bytes | None  # the cloudpickled function, sent once per connection
    args: bytes  # pickle of (args, kwargs); top-level ObjectRefs replaced by Dep markers
    deps: list  # value entries for those markers, in order (see cluster.objects.values)
    num_returns: int
    owner: str
    method: str = ""  # a call of this actor method (the worker holds the actor), else a task


@message(61, tasks=TaskSpec)
@attrs.frozen
class PushTasks:
    tasks: list


@message(62)
@attrs.frozen
class TaskResult:
    task_id: bytes
    entries: list  # one value entry per return value, or one error entry
    worker_pid: int
    # ObjectRefs found inside the return values: [index, object_id, owner] each. The worker
    # registered the task's owner as their borrower, for as long as the value lives.
    contained: list = attrs.Factory(list)


@message(63, results=TaskResult)
@attrs.frozen
class TaskResults:
    results: list


@message(64)
@attrs.frozen
class CancelTask:
    task_id: bytes
    force: bool


@message(65)
@attrs.frozen
class LogLines:
    task_name: str
    pid: int
    stream: str
    text: str


@message(66)
@attrs.frozen
class GetObject:
    object_id: bytes



# --- distributed reference counting (borrower <-> owner) -------------------------------


@message(67)
@attrs.frozen
class AddBorrowers:
    """``borrower`` now holds refs to these objects (request to their owner; reply: list of
    bools, False for an object the owner no longer has)."""

    object_ids: list
    borrower: str


@message(68)
@attrs.frozen
class RemoveBorrowers:
    """``borrower`` dropped its refs: undo ``counts[i]`` registrations of ``object_ids[i]``."""

    object_ids: list
    borrower: str
    counts: list


# --- transfers between nodes --------------------------------------------------------------


@message(47)
@attrs.frozen
class FetchObject:
    """Ask the local node daemon for a copy of an object held by node ``source`` (request;
    reply ``None`` once the copy is sealed in the local store). Concurrent asks share a pull."""

    object_id: bytes
    source: str
    owner: str


@message(48)
@attrs.frozen
class AddObjectLocation:
    """A node tells an object's owner that it holds a secondary copy (reply: False when the
    owner has freed the object meanwhile, so the copy must go)."""

    object_id: bytes
    node_address: str


@message(49)
@attrs.frozen
class ListObjects:
    """Ask an owner (driver or worker) for the objects it owns (reply: list of dicts)."""

    limit: int


@message(28)
@attrs.frozen
class ListDrivers:
    """Ask the head for the drivers attached to the cluster (reply: list of dicts)."""


@message(50)
@attrs.frozen
class ListWorkers:
    """Ask a node for its live workers (reply: list of dicts)."""


# --- actors ---------------------------------------------------------------------------------


@message(69)
@attrs.frozen
class CreateActor:
    """Owner -> its leased worker: become this actor (request; reply None, or an error entry
    when the constructor raised)."""

    actor_id: bytes
    class_name: str
    class_blob: bytes  # pack_function of the class
    args: bytes
    deps: list
    owner: str
    max_concurrency: int | None  # None: 1000 for async actors, else 1


@message(70)
@attrs.frozen
class GetActorInfo:
    """A caller holding a handle -> the actor's owner (request; reply [state, worker address,
    cause]; the reply waits while the actor is being created or restarted)."""

    actor_id: bytes


@message(71)
@attrs.frozen
class KillActor:
    """A handle holder -> the actor's owner: stop it (and don't restart it if no_restart)."""

    actor_id: bytes
    no_restart: bool


@message(73)
@attrs.frozen
class StealTasks:
    """An owner -> a worker it leased: give back up to ``max_tasks`` of my tasks you have not
    started (the newest first), for an idle worker of mine to run (request; reply: their ids)."""

    max_tasks: int


@message(72)
@attrs.frozen
class ListActors:
    """Ask a driver or worker for the actors it owns and the one it hosts (reply: dict)."""
