"""What an owner keeps about its work: task records, worker leases, queues by resource shape.

Plain values with no I/O (the runtime drives them). Imports: nothing of ours at run time.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from cluster.wire.connection import Connection

DEFAULT_NAMESPACE = "default"  # of actor names, when none is given


@attrs.define(slots=True, eq=False)
class PendingTask:
    task_id: bytes
    name: str
    function_id: bytes
    function: bytes
    args: bytes
    dep_refs: list
    num_returns: int
    return_ids: list
    shape: tuple
    retries_left: int
    retry_exceptions: bool
    held: list = attrs.Factory(list)  # ObjectRefs pickled inside the arguments
    deps: list = attrs.Factory(list)
    method: str = ""  # an actor call: the method's name
    counted: bool = False  # an actor call counted in its ActorState.unsent
    actor: Any = None  # an actor call: the ActorHandle, then (on the trio thread) its ActorState
    lease: Lease | None = None
    cancelled: bool = False


@attrs.define(slots=True, eq=False)
class Lease:
    lease_id: int
    node_conn: Connection
    conn: Connection
    shape: tuple
    in_flight: dict = attrs.Factory(dict)
    idle_since: float | None = None
    returned: bool = False
    stealing: bool = False  # a StealTasks request to its worker is out
    # Guards in_flight where a reader thread (_on_results_fast) and the trio thread both
    # take tasks out of it.
    lock: threading.Lock = attrs.Factory(threading.Lock)
    blocked: bool = False  # its worker's running task waits in get/wait: send it nothing more


@attrs.define(slots=True, eq=False)
class ShapeQueue:
    shape: tuple
    pending: collections.deque = attrs.Factory(collections.deque)
    leases: list = attrs.Factory(list)
    requesting: int = 0
    fresh_requests: int = 0
