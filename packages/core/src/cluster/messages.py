"""Control messages: attrs value types, one tag each.

The wire format (msgpack arrays) lives in ``cluster.protocol``; here are only the types.
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
        cls = attrs.frozen(cls, slots=True)
        if tag in MESSAGE_TYPES:
            raise RuntimeError(f"message tag {tag} used twice")
        cls.TAG = tag
        cls.NESTED = nested
        MESSAGE_TYPES[tag] = cls
        return cls

    return wrap


# --- handshake (the only messages read from a peer that has not authenticated) ----------


@message(1)
class Hello:
    version: int
    role: str
    nonce: bytes


@message(2)
class Auth:
    version: int
    role: str
    nonce: bytes
    mac: bytes


@message(3)
class Welcome:
    mac: bytes


@message(4)
class Refuse:
    code: str
    reason: str


# --- generic replies ----------------------------------------------------------------------


@message(10)
class Ok:
    value: Any = None


@message(11)
class Fail:
    kind: str
    message: str


# --- head ---------------------------------------------------------------------------------


@message(20)
class RegisterNode:
    node_id: str
    address: str
    resources: dict
    labels: dict
    hostname: str
    pid: int
    store_path: str
    is_head: bool


@message(21)
class Heartbeat:
    node_id: str
    available: dict
    view_version: int


@message(22)
class RegisterDriver:
    pid: int
    hostname: str


@message(23)
class ListNodes:
    pass


@message(24)
class KvPut:
    key: str
    value: bytes
    overwrite: bool = True


@message(25)
class KvGet:
    key: str


@message(26)
class KvDelete:
    key: str


# --- node ---------------------------------------------------------------------------------


@message(40)
class RequestLease:
    shape: dict
    owner: str
    spill_count: int


@message(41)
class ReturnLease:
    lease_id: int
    worker_ok: bool


@message(42)
class RegisterWorker:
    worker_id: str
    address: str
    pid: int


@message(43)
class PullObject:
    object_id: bytes


@message(46)
class PullChunk:
    object_id: bytes
    offset: int
    length: int


@message(44)
class DeleteObjects:
    object_ids: list


@message(45)
class WorkerBlocked:
    worker_id: str
    blocked: bool


# --- owner <-> worker (the hot path) -------------------------------------------------------


@message(60)
class TaskSpec:
    task_id: bytes
    name: str
    function_id: bytes
    function: bytes | None  # the cloudpickled function, sent once per connection
    args: bytes  # pickle of (args, kwargs); top-level ObjectRefs replaced by Dep markers
    deps: list  # value entries for those markers, in order (see cluster.values)
    num_returns: int
    owner: str


@message(61, tasks=TaskSpec)
class PushTasks:
    tasks: list


@message(62)
class TaskResult:
    task_id: bytes
    entries: list  # one value entry per return value, or one error entry
    worker_pid: int


@message(63, results=TaskResult)
class TaskResults:
    results: list


@message(64)
class CancelTask:
    task_id: bytes
    force: bool


@message(65)
class LogLines:
    task_name: str
    pid: int
    stream: str
    text: str


@message(66)
class GetObject:
    object_id: bytes

