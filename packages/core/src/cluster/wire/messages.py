"""Control messages: attrs value types, one tag each.

The wire format (msgpack arrays) lives in :mod:`cluster.wire.codec`; here are only the types.
A field may hold other messages (alone, in lists, in dicts): the codec rebuilds them by tag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import attrs


class Message:
    """The base of every message type: an attrs class, its ``TAG`` set by :func:`message`."""

    __slots__ = ()
    TAG: ClassVar[int]
    __attrs_attrs__: ClassVar[tuple[attrs.Attribute[Any], ...]]  # for attrs.fields(a type)


@attrs.frozen
class UnknownMessage:
    """A message nested in another whose type this process does not know (a plugin that is
    installed on the sender, not here): kept as data, so the receiver can say what is missing
    (e.g. "this daemon runs no service 'jobs'") instead of dropping the connection."""

    tag: int
    fields: list[Any]


_M = TypeVar("_M", bound=Message)

MESSAGE_TYPES: dict[int, type[Message]] = {}
# Tags: 1-199 core, 200-299 cluster-client, 300-399 cluster-autoscaler, 400-499 the providers
# of this repository; third-party plugins declare theirs from 1000 on.


def message(tag: int) -> Callable[[type[_M]], type[_M]]:
    """Declare a message type (a subclass of :class:`Message`) with a unique wire ``tag``."""

    def wrap(cls: type[_M]) -> type[_M]:
        is_attrs = attrs.has(cls)  # apart: in the `if`, its TypeGuard would retype cls
        if not is_attrs:
            raise TypeError(f"{cls.__name__}: put @message above @attrs.frozen")
        if tag in MESSAGE_TYPES:
            raise RuntimeError(f"message tag {tag} used twice")
        cls.TAG = tag
        MESSAGE_TYPES[tag] = cls
        return cls

    return wrap


# --- handshake (the only messages read from a peer that has not authenticated) ----------


@message(1)
@attrs.frozen
class Hello(Message):
    version: int
    role: str
    nonce: bytes


@message(2)
@attrs.frozen
class Auth(Message):
    version: int
    role: str
    nonce: bytes
    mac: bytes


@message(3)
@attrs.frozen
class Welcome(Message):
    mac: bytes


@message(4)
@attrs.frozen
class Refuse(Message):
    code: str
    reason: str


# --- values: what an object's value is, for whoever needs it --------------------------------


# Value entries are made once per put and per task result, the hottest path there is: they are
# attrs classes without ``frozen`` (a frozen __init__ cost 0.98 µs here against 0.41 µs), and
# nothing changes one once made.
@message(80)
@attrs.define(slots=True)
class InlineValue(Message):
    """A small value itself, as pickle-5 parts; ``metadata`` is ``b"E"`` for an exception to
    raise where it is read (see :mod:`cluster.objects.values`)."""

    metadata: bytes
    inband: bytes
    buffers: list[bytes]

    @property
    def is_error(self) -> bool:
        return self.metadata == b"E"


@message(81)
@attrs.define(slots=True)
class StoredValue(Message):
    """A value in a node's shared-memory store: read it there zero-copy, or have the local node
    copy it from ``node_address`` (and tell ``owner``, the owning process, where the copy is)."""

    object_id: bytes
    node_id: str  # the store's id (a node id, or node/pid for a process's private store)
    node_address: str
    size: int
    owner: str = ""

    is_error = False


ValueEntry = InlineValue | StoredValue


# --- answers to RequestLease (or Pending("busy") while it waits) ---------------------------


@message(82)
@attrs.frozen
class LeaseGranted(Message):
    lease_id: int
    worker_address: str
    worker_id: str
    node_id: str
    gpu_ids: list[str] = attrs.Factory(list)  # the devices given to it, when its shape asks for GPUs


@message(83)
@attrs.frozen
class LeaseSpill(Message):
    """Ask the node at ``address`` instead: it has room for the shape."""

    address: str


@message(84)
@attrs.frozen
class LeaseInfeasible(Message):
    """No node of the cluster can ever fit the shape; ``reason`` says why, for the user.
    ``unschedulable``: nor will one ever (a hard affinity to a node that is gone): the work fails."""

    reason: str
    unschedulable: bool = False
    group_removed: bool = False  # it was to run in a placement group since removed


@message(110)
@attrs.frozen
class RuntimeEnvFailed(Message):
    """Answers a RequestLease: the node could not set up the lease's runtime env; ``error``
    says why (the installer's last lines and where its log is), for RuntimeEnvSetupError."""

    error: str


# --- replies of the head, and what nodes report in heartbeats ------------------------------


@message(86)
@attrs.frozen
class NodeRegistered(Message):
    """The head's answer to RegisterNode."""

    session_dir: str
    view: list[dict[str, Any]]  # the resource view: a dict per node (NodeRecord.public)
    version: int
    cluster_id: str = ""  # the same across restarts of the head (cluster.head.tables)
    heartbeat_timeout_s: float = 10.0  # a node silent this long is declared dead


@message(87)
@attrs.frozen
class HeartbeatAck(Message):
    """The head's answer to a Heartbeat; ``view`` is None when the node's view is current."""

    version: int
    view: list[dict[str, Any]] | None


@message(88)
@attrs.frozen
class DriverRegistered(Message):
    """The head's answer to RegisterDriver."""

    nodes: list[dict[str, Any]]  # the resource view
    session_dir: str
    head_pid: int
    cluster_id: str = ""
    job: int = 0  # the driver's job number (Ray's JobID: get_runtime_context().get_job_id())


@message(89)
@attrs.frozen
class StoreStats(Message):
    """A node's object store, in bytes and counts (``cluster memory`` shows them)."""

    used: int = 0
    objects: int = 0
    spilled: int = 0
    spilled_objects: int = 0
    copies: int = 0  # copies of objects whose primary is elsewhere
    copies_bytes: int = 0
    pooled_bytes: int = 0  # freed files kept for reuse
    pulled: int = 0  # objects copied here from other nodes
    pulled_bytes: int = 0
    served_chunks: int = 0  # chunks this node served to others


@message(90)
@attrs.frozen
class DemandItem(Message):
    """``count`` units of work of resource ``shape`` waiting on a node (``infeasible``: no node
    of the cluster could ever fit it): what the autoscaler sizes the cluster by."""

    shape: dict[str, float]
    count: int
    infeasible: bool = False
    labels: list[list[Any]] = attrs.Factory(list)  # the label selector it must run under (wire form)


@message(55)
@attrs.frozen
class Failure(Message):
    """A fault the cluster met: ``kind`` is task_retry, actor_restart, reconstruction or
    node_dead; ``what`` says which and why. (``cluster status`` shows the last ones.)"""

    kind: str
    what: str
    when: float = 0.0  # wall clock; the node that relays it fills it in, and its id
    node_id: str = ""


@message(53)
@attrs.frozen
class ReportFailure(Message):
    """An owner -> its node daemon: a fault it met (relayed to the head with the next heartbeat)."""

    failure: Failure


@message(54)
@attrs.frozen
class ListFailures(Message):
    """Ask the head for the last faults of the cluster (reply: list of Failure, oldest first)."""


# --- actors: what their owners answer -------------------------------------------------------


@message(91)
@attrs.frozen
class ActorInfo(Message):
    """An owner's answer to GetActorInfo."""

    state: str  # "alive" | "dead" (the reply waits while the actor is created or restarted)
    address: str  # its worker, while alive
    cause: str  # why it died


@message(92)
@attrs.frozen
class ActorTable(Message):
    """A process's answer to ListActors: the actors it owns (a row each) and the one it hosts."""

    owned: list[dict[str, Any]]  # a row per actor: column -> value
    hosting: dict[str, Any] | None


@message(93)
@attrs.frozen
class ActorNameRecord(Message):
    """What the head's KV keeps under an actor's name: its owner to ask, or (a detached actor,
    which outlives its owner) the worker it runs on."""

    actor_id: bytes
    class_name: str
    methods: dict[str, int | str]  # its remote methods -> their num_returns ("streaming"...: generators)
    owner: str  # "" for a detached actor
    address: str  # a detached actor's worker, once it runs


# --- the zygote: a node daemon and its fork server, over a pair of pipes ---------------------


@message(94)
@attrs.frozen
class SpawnWorker(Message):
    """Daemon -> zygote: fork a worker that runs with ``config``, its output to ``log_path``."""

    worker_id: str
    config: dict[str, Any]
    log_path: str


@message(95)
@attrs.frozen
class WorkerSpawned(Message):
    """Zygote -> daemon: the worker ``worker_id`` runs as ``pid``."""

    worker_id: str
    pid: int


@message(96)
@attrs.frozen
class WorkerExited(Message):
    """Zygote -> daemon: the worker process ``pid`` exited with ``code``."""

    pid: int
    code: int


# --- generic replies ----------------------------------------------------------------------


@message(10)
@attrs.frozen
class Ok(Message):
    value: Any = None


@message(11)
@attrs.frozen
class Fail(Message):
    kind: str
    message: str


@message(12)
@attrs.frozen
class Pending(Message):
    """Sent with a request's id: the answer will take a while (and why)."""

    reason: str


# --- head ---------------------------------------------------------------------------------


@message(20)
@attrs.frozen
class RegisterNode(Message):
    node_id: str
    address: str
    resources: dict[str, float]
    labels: dict[str, str]
    hostname: str
    pid: int
    store_path: str
    is_head: bool
    store_capacity: int
    spill_dir: str | None
    object_store: str = "shared"
    # A node that comes back (the head restarted, or it lost its connection) registers again
    # under its id with what it has free now, and the cluster it joined ("" the first time).
    available: dict[str, float] | None = None
    cluster_id: str = ""


@message(21)
@attrs.frozen
class Heartbeat(Message):
    node_id: str
    available: dict[str, float]
    view_version: int
    store: StoreStats
    demand: list[DemandItem] = attrs.Factory(list)  # work waiting here
    failures: list[Failure] = attrs.Factory(list)  # what owners here reported since the last one
    resources: dict[str, float] | None = None  # its totals (placement groups' bundles change them)


@message(27)
@attrs.frozen
class ViewUpdate(Message):
    version: int
    view: list[dict[str, Any]]


@message(22)
@attrs.frozen
class RegisterDriver(Message):
    pid: int
    hostname: str
    address: str = ""  # the driver's own listener (it owns objects)
    job: int = 0  # its job number, when it registers again (a new head); 0: give it one


@message(23)
@attrs.frozen
class ListNodes(Message):
    pass


@message(24)
@attrs.frozen
class KvPut(Message):
    key: str
    value: bytes
    overwrite: bool = True


@message(25)
@attrs.frozen
class KvGet(Message):
    key: str


@message(26)
@attrs.frozen
class KvDelete(Message):
    key: str


@message(111)
@attrs.frozen
class KvExists(Message):
    """Whether the head's KV holds ``key`` (without sending its value)."""

    key: str


@message(29)
@attrs.frozen
class ServiceRequest(Message):
    """For a plugin's service in a daemon, by name (see cluster.daemon.Services). ``payload``
    is whatever msgpack carries; the reply is the service's."""

    service: str
    payload: Any


# --- node ---------------------------------------------------------------------------------


@message(40)
@attrs.frozen
class RequestLease(Message):
    shape: dict[str, float]
    owner: str
    spill_count: int
    detached: bool = False  # for a detached actor: the lease outlives its owner's connection
    backlog: int = 0  # how many tasks of this shape the owner has waiting (the demand it stands for)
    # The resolved runtime env its workers must run in (cluster.runtime_env), None: the plain pool.
    runtime_env: dict[str, Any] | None = None
    # Where it may run (cluster.scheduling.Placement.to_wire), None: anywhere, packed.
    placement: dict[str, Any] | None = None


@message(41)
@attrs.frozen
class ReturnLease(Message):
    lease_id: int
    worker_ok: bool


@message(42)
@attrs.frozen
class RegisterWorker(Message):
    worker_id: str
    address: str
    pid: int


@message(43)
@attrs.frozen
class PullObject(Message):
    object_id: bytes


@message(46)
@attrs.frozen
class PullChunk(Message):
    object_id: bytes
    offset: int
    length: int


@message(44)
@attrs.frozen
class DeleteObjects(Message):
    object_ids: list[bytes]


@message(45)
@attrs.frozen
class WorkerBlocked(Message):
    worker_id: str
    blocked: bool


# --- owner <-> worker (the hot path) -------------------------------------------------------


@message(60)
@attrs.frozen
class TaskSpec(Message):
    task_id: bytes
    name: str
    function_id: bytes
    function: bytes | None  # the cloudpickled function, sent once per connection
    args: bytes  # pickle of (args, kwargs); top-level ObjectRefs replaced by Dep markers
    deps: list[ValueEntry]  # one for each of those markers, in order
    num_returns: int
    owner: str
    method: str = ""  # a call of this actor method (the worker holds the actor), else a task
    namespace: str = ""  # of the caller's actor names ("": the default), for code that names actors
    stream: StreamSpec | None = None  # a generator task: its values stream back as they are made
    group: str = ""  # an actor call: the concurrency group its caller named ("": the method's own)
    resources: dict[str, float] | None = None  # a task's (get_assigned_resources); None: {"CPU": 1}
    gpu_ids: list[str] | None = None  # the GPUs its lease was given (CUDA_VISIBLE_DEVICES while it runs)


# --- generators: values streamed back as a task yields them (docs/design/0014) -------------


@message(100)
@attrs.frozen
class StreamSpec(Message):
    """How a generator task streams: ``backpressure`` values at most unconsumed by the caller
    before it pauses (0: no limit); ``resume``: values the owner holds already from an earlier
    attempt (the run yields them again and does not send them); ``dynamic``: Ray's
    ``num_returns="dynamic"``."""

    backpressure: int = 0
    resume: int = 0
    dynamic: bool = False
    consumed: int = 0  # values the caller had taken when this run was sent


@message(101)
@attrs.frozen
class GeneratorItem(Message):
    """Value ``index`` (from 0) a generator task yielded (worker -> its owner, on the task's
    connection, ahead of the task's TaskResult); ``contained``: refs inside it (index 0)."""

    task_id: bytes
    index: int
    entry: ValueEntry
    contained: list[ContainedRef] = attrs.Factory(list)


@message(102)
@attrs.frozen
class GeneratorConsumed(Message):
    """The caller has taken ``consumed`` values of generator task ``task_id`` (owner -> worker,
    only with back-pressure): the producer may run on while fewer are unconsumed than its limit."""

    task_id: bytes
    consumed: int


@message(103)
@attrs.frozen
class GeneratorStop(Message):
    """Nobody consumes generator task ``task_id`` any more (owner -> worker): it stops at its
    next yield."""

    task_id: bytes


@message(61)
@attrs.frozen
class PushTasks(Message):
    tasks: list[TaskSpec]


@message(62)
@attrs.frozen
class TaskResult(Message):
    task_id: bytes
    entries: list[ValueEntry]  # one per return value, or one error entry
    worker_pid: int
    # ObjectRefs found inside the return values (ContainedRef each). The worker registered the
    # task's owner as their borrower, for as long as the value lives.
    contained: list[ContainedRef] = attrs.Factory(list)


@message(85)
@attrs.frozen
class ContainedRef(Message):
    """An ObjectRef inside return value ``index`` of a task."""

    index: int
    object_id: bytes
    owner: str


@message(63)
@attrs.frozen
class TaskResults(Message):
    results: list[TaskResult]


@message(64)
@attrs.frozen
class CancelTask(Message):
    task_id: bytes
    force: bool
    recursive: bool = False  # also the tasks it submitted (its worker owns them), and theirs


@message(65)
@attrs.frozen
class LogLines(Message):
    task_name: str
    pid: int
    stream: str
    text: str


@message(66)
@attrs.frozen
class GetObject(Message):
    object_id: bytes



# --- distributed reference counting (borrower <-> owner) -------------------------------


@message(67)
@attrs.frozen
class AddBorrowers(Message):
    """``borrower`` now holds refs to these objects (request to their owner; reply: list of
    bools, False for an object the owner no longer has)."""

    object_ids: list[bytes]
    borrower: str


@message(68)
@attrs.frozen
class RemoveBorrowers(Message):
    """``borrower`` dropped its refs: undo ``counts[i]`` registrations of ``object_ids[i]``."""

    object_ids: list[bytes]
    borrower: str
    counts: list[int]


# --- transfers between nodes --------------------------------------------------------------


@message(47)
@attrs.frozen
class FetchObject(Message):
    """Ask the local node daemon for a copy of an object held by node ``source`` (request;
    reply ``None`` once the copy is sealed in the local store). Concurrent asks share a pull."""

    object_id: bytes
    source: str
    owner: str


@message(48)
@attrs.frozen
class AddObjectLocation(Message):
    """A node tells an object's owner that it holds a secondary copy (reply: False when the
    owner has freed the object meanwhile, so the copy must go)."""

    object_id: bytes
    node_address: str


@message(49)
@attrs.frozen
class ListObjects(Message):
    """Ask an owner (driver or worker) for the objects it owns (reply: list of dicts)."""

    limit: int


@message(28)
@attrs.frozen
class ListDrivers(Message):
    """Ask the head for the drivers attached to the cluster (reply: list of dicts)."""


@message(50)
@attrs.frozen
class ListWorkers(Message):
    """Ask a node for its live workers (reply: list of dicts)."""


@message(51)
@attrs.frozen
class WatchNodes(Message):
    """An owner -> its node daemon: tell me when a node of the cluster dies (``NodeDied``)."""


@message(52)
@attrs.frozen
class NodeDied(Message):
    """A node daemon -> the owners watching: the head declared node ``node_id`` dead. Its
    workers' tasks and its store's objects are gone (a node that comes back rejoins as new)."""

    node_id: str
    address: str
    reason: str
    live: list[list[str]] = attrs.Factory(list)  # [node id, address] of the nodes still alive


@message(74)
@attrs.frozen
class RecoverObject(Message):
    """A borrower -> an object's owner: no copy of it could be read (request; the reply is the
    object's value entry once rebuilt, or an error entry saying why it cannot be)."""

    object_id: bytes
    node_id: str  # where the reader looked (the owner rebuilds only if that is still where it lives)
    reason: str


# --- actors ---------------------------------------------------------------------------------


@message(75)
@attrs.frozen
class ActorExited(Message):
    """An actor's worker -> its owner, on the owner's connection: the actor ended itself
    (``exit_actor()``); it is dead for good (no restart), and the worker exits next."""

    actor_id: bytes
    reason: str


@message(69)
@attrs.frozen
class CreateActor(Message):
    """Owner -> its leased worker: become this actor (request; reply None, or an error entry
    when the constructor raised)."""

    actor_id: bytes
    class_name: str
    class_blob: bytes  # pack_function of the class
    args: bytes
    deps: list[ValueEntry]
    owner: str
    max_concurrency: int | None  # None: 1000 for async actors, else 1
    concurrency_groups: dict[str, int] = attrs.Factory(dict)  # Ray's: group name -> its max concurrency
    resources: dict[str, float] = attrs.Factory(dict)  # what it holds for its life (get_assigned_resources)
    gpu_ids: list[str] = attrs.Factory(list)  # the GPUs its lease was given (CUDA_VISIBLE_DEVICES for its life)
    restarted: bool = False  # it replaces an instance that died (max_restarts)
    handle_owner: str = ""  # its handles' owner ("": detached, found by name_key) for current_actor
    name_key: str = ""


@message(70)
@attrs.frozen
class GetActorInfo(Message):
    """A caller holding a handle -> the actor's owner (request; reply ActorInfo; the reply
    waits while the actor is being created or restarted)."""

    actor_id: bytes


@message(71)
@attrs.frozen
class KillActor(Message):
    """A handle holder -> the actor's owner: stop it (and don't restart it if no_restart)."""

    actor_id: bytes
    no_restart: bool


@message(73)
@attrs.frozen
class StealTasks(Message):
    """An owner -> a worker it leased: give back up to ``max_tasks`` of my tasks you have not
    started (the newest first), for an idle worker of mine to run (request; reply: their ids)."""

    max_tasks: int


@message(72)
@attrs.frozen
class ListActors(Message):
    """Ask a driver or worker for the actors it owns and the one it hosts (reply: ActorTable)."""


# --- placement groups (docs/design/0018) ---------------------------------------------------


@message(120)
@attrs.frozen
class CreatePlacementGroup(Message):
    """A driver or worker -> the head: reserve these bundles (reply None; ConfigError-like
    errors for a taken name)."""

    pg_id: str
    name: str
    namespace: str
    strategy: str  # PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    bundles: list[dict[str, float]]
    bundle_labels: list[list[list[Any]]] = attrs.Factory(list)  # per bundle: label expressions (wire form)
    detached: bool = False  # outlives its creator


@message(121)
@attrs.frozen
class WaitPlacementGroup(Message):
    """-> the head: answer with the group's record once it is created or removed (or after
    ``timeout_s``, as it is then)."""

    pg_id: str
    timeout_s: float | None = None


@message(122)
@attrs.frozen
class RemovePlacementGroup(Message):
    pg_id: str


@message(123)
@attrs.frozen
class GetPlacementGroup(Message):
    """-> the head: the record of a group by id, or by name (in a namespace); None if none."""

    pg_id: str = ""
    name: str = ""
    namespace: str = ""


@message(124)
@attrs.frozen
class ListPlacementGroups(Message):
    pass


@message(125)
@attrs.frozen
class PrepareBundles(Message):
    """The head -> a node: set these bundles' resources aside (all, or none: reply True or the
    reason it cannot)."""

    pg_id: str
    indexes: list[int]  # which bundles of the group
    shapes: list[dict[str, float]]  # and their resources, in that order
    commit: bool = False  # and offer them at once (the group's only node: no second phase)


@message(126)
@attrs.frozen
class CommitBundles(Message):
    """The head -> a node: the bundles it prepared are the group's now: offer their resources
    under the group's names (``CPU_group_<id>``, ``CPU_group_<i>_<id>``, ...)."""

    pg_id: str


@message(127)
@attrs.frozen
class ReturnBundles(Message):
    """The head -> a node: give the group's bundles back (``indexes``: only those, set aside
    in a try that failed), stopping the workers that use them."""

    pg_id: str
    indexes: list[int] | None = None

