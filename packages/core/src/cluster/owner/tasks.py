"""What an owner keeps about its work: task records, worker leases, queues by resource shape.

Plain values with no I/O (the runtime drives them). Imports: cluster.scheduling only, at run time.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any

import attrs

from cluster.scheduling import DEFAULT_PLACEMENT, Placement

if TYPE_CHECKING:
    from cluster.objects.refs import ObjectRef
    from cluster.owner.actors import ActorState
    from cluster.owner.generators import StreamState
    from cluster.wire.connection import Connection
    from cluster.wire.messages import ValueEntry

DEFAULT_NAMESPACE = "default"  # of actor names, when none is given

Shape = tuple[tuple[str, float], ...]  # a resource shape: sorted (name, amount) pairs, no zeros
DEFAULT_SHAPE: Shape = (("CPU", 1.0),)  # a task's when it asks for nothing else (as Ray's)


@attrs.define(slots=True, eq=False)
class PendingTask:
    task_id: bytes
    name: str
    function_id: bytes
    function: bytes
    args: bytes
    dep_refs: list[ObjectRef]  # the top-level ObjectRef arguments
    num_returns: int
    return_ids: list[bytes]
    shape: Shape
    retries_left: int
    # Retry when the task raises: False, True (any exception), or a tuple of exception types.
    retry_exceptions: bool | tuple[type[BaseException], ...]
    held: list[ObjectRef] = attrs.Factory(list)  # ObjectRefs pickled inside the arguments
    deps: list[ValueEntry] = attrs.Factory(list)  # the values of dep_refs, once known
    method: str = ""  # an actor call: the method's name
    group: str = ""  # an actor call: the concurrency group its caller named ("": the method's own)
    counted: bool = False  # an actor call counted in its ActorState.unsent
    # An actor call: the caller's ActorHandle (an api type: owner cannot name it), then, on
    # the trio thread, its ActorState.
    actor: Any = None
    lease: Lease | ActorState | None = None
    cancelled: bool = False
    max_retries: int = 0  # as asked (retries_left counts down from it), for messages
    # Lineage, kept while a stored result may need rebuilding: its ObjectRef arguments as
    # (object id, owner), once the task has finished and let go of dep_refs.
    lineage_deps: list[tuple[bytes, str]] | None = None
    rebuilding: bool = False  # running again, to rebuild a lost result
    namespace: str = ""  # its caller's, for the actor names it uses ("": the default)
    parent: bytes | None = None  # in a worker: the task that submitted it (for recursive cancel)
    stream: StreamState | None = None  # a generator task: what its caller holds of its values
    runtime_env: dict[str, Any] | None = None  # resolved (cluster.runtime_env); its id is in the shape
    placement: Placement = DEFAULT_PLACEMENT  # where it may run; named in the shape unless the default


@attrs.define(slots=True, eq=False)
class Lease:
    lease_id: int
    node_conn: Connection
    conn: Connection
    shape: Shape
    in_flight: dict[bytes, PendingTask] = attrs.Factory(dict)  # by task id
    idle_since: float | None = None
    returned: bool = False
    stealing: bool = False  # a StealTasks request to its worker is out
    # Guards in_flight where a reader thread (_on_results_fast) and the trio thread both
    # take tasks out of it.
    lock: threading.Lock = attrs.Factory(threading.Lock)
    blocked: bool = False  # its worker's running task waits in get/wait: send it nothing more
    node_id: str = ""  # the node whose worker it is
    lost_reason: str = ""  # set when its node died: why its tasks must run again
    gpu_ids: list[str] | None = None  # the GPUs its node gave it (None: none)


@attrs.define(slots=True, eq=False)
class ShapeQueue:
    shape: Shape
    pending: collections.deque[PendingTask] = attrs.Factory(collections.deque)
    leases: list[Lease] = attrs.Factory(list)
    requesting: int = 0
    fresh_requests: int = 0
    for_actor: bool = False  # the queue of one actor's lifetime lease: it wants one worker
    # Since when tasks have waited behind a running one on its worker (pipelined) with none
    # pending here: past a linger, another worker is asked for, to take them (see _linger_loop).
    backlog_since: float | None = None
    runtime_env: dict[str, Any] | None = None  # its tasks' (resolved), sent with its lease requests
    placement: Placement = DEFAULT_PLACEMENT  # its tasks', sent with its lease requests
    spread: dict[str, int] = attrs.Factory(dict)  # SPREAD: tasks sent to each node so far (dispatch evens them out)

    def wanted(self) -> int:
        """How many workers this queue's work wants (what a lease request reports as backlog)."""
        return len(self.pending) or int(self.for_actor)
