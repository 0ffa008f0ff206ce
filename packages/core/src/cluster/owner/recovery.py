"""What an owner does when a node dies (:class:`Recovery`, a member of :class:`cluster.owner.runtime.Runtime`).

The head declares a node dead (its heartbeat deadline passed, or its connection closed) and
every node daemon tells the owners watching it (``NodeDied``). The owner then:

- drops its connections to that node's workers, so the tasks it had pushed there run again
  (within each task's ``max_retries``) and its actors there restart (``max_restarts``); a
  partitioned node's sockets would otherwise stay open and silent;
- takes every stored object of its own whose primary copy lived there: a copy on another node
  becomes the primary, else the object is rebuilt by running the task that made it again
  (its *lineage*), recursively through arguments that are gone too, each task within its own
  retry budget, as Ray does. What cannot be rebuilt (``put`` objects, results of actor calls,
  tasks out of retries) gets an ``ObjectLostError`` that names the object, its node and why.

A reader that finds no copy of a stored object (``load_entry``) asks the object's owner to
recover it (``recover``; a borrower sends ``RecoverObject``): the same rebuild, without a
node death, for a store that lost it.

Lineage is kept for finished tasks with a stored result while that result is alive, and for as
long as a kept task takes it as an argument (the argument's *value* is freed as usual; only the
task that made it is kept). Tasks whose arguments hold ObjectRefs inside other values keep no
lineage. Imports: tasks, refs, values, messages.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import TYPE_CHECKING, Any

import structlog

from cluster.errors import (
    ClusterConnectionError,
    ObjectLostError,
    ObjectReconstructionFailedError,
    ObjectReconstructionFailedLineageEvictedError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
    OwnerDiedError,
    RemoteCallError,
)
from cluster.objects import values as v
from cluster.objects.refs import ObjectRef
from cluster.owner.tasks import PendingTask
from cluster.wire import messages as m
from cluster.wire.streams import parse_address

if TYPE_CHECKING:
    from cluster.owner.runtime import Runtime
    from cluster.wire.connection import Connection

log = structlog.get_logger("cluster.recovery")

PUT_SUFFIX = b"\xff\xff\xff\xff"  # the last bytes of a put object's id (Runtime.put)
# Bytes of task arguments lineage may keep per process before the oldest go (Ray's
# max_lineage_bytes, 1 GB by default there too); an object whose lineage went cannot be rebuilt.
MAX_LINEAGE_BYTES = int(os.environ.get("CLUSTER_MAX_LINEAGE_BYTES", str(1 << 30)))


class Lineage:
    """Finished tasks kept to rebuild their stored results; thread-safe (its own lock)."""

    def __init__(self, max_bytes: int = MAX_LINEAGE_BYTES) -> None:
        self.lock = threading.Lock()
        self.tasks: dict[bytes, PendingTask] = {}  # oldest first
        self.pins: collections.Counter[bytes] = collections.Counter()  # object id -> kept tasks taking it
        self.max_bytes = max_bytes
        self.bytes = 0  # of the kept tasks' arguments
        self.evicted = 0  # tasks dropped to stay under max_bytes

    def keep(self, task: PendingTask, alive: Any, owner: str) -> None:
        """Keep ``task`` (finished, with a stored result) to run again if that result is lost;
        ``alive`` holds the ids of our live objects."""
        with self.lock:
            if task.task_id in self.tasks:
                return  # (a rebuild finished: kept already, its arguments pinned already)
            task.lineage_deps = [(ref._id, ref._owner) for ref in task.dep_refs]
            self.tasks[task.task_id] = task
            self.bytes += len(task.args)
            if task.retries_left > 0:
                for object_id, dep_owner in task.lineage_deps:
                    if dep_owner == owner:
                        self.pins[object_id] += 1
            todo: list[bytes] = []
            while self.bytes > self.max_bytes and len(self.tasks) > 1:
                oldest = next(iter(self.tasks.values()))
                if oldest.rebuilding:
                    break
                self.evicted += 1
                self._drop(oldest, owner, todo)
            self._sweep(todo, alive, owner)

    def task_of(self, object_id: bytes) -> PendingTask | None:
        return self.tasks.get(object_id[:16])

    def release(self, object_id: bytes, alive: Any, owner: str) -> None:
        """``object_id`` was freed: drop the tasks no live object or kept task needs any more."""
        with self.lock:
            self._sweep([object_id[:16]], alive, owner)

    def _sweep(self, todo: list[bytes], alive: Any, owner: str) -> None:
        """Drop the tasks on ``todo`` (by id) that nothing needs, and so on through their
        arguments (lock held)."""
        while todo:
            task = self.tasks.get(todo.pop())
            if task is None or task.rebuilding:
                continue
            if any(rid in alive or self.pins.get(rid) for rid in task.return_ids):
                continue
            self._drop(task, owner, todo)

    def _drop(self, task: PendingTask, owner: str, todo: list[bytes]) -> None:
        """Forget ``task``; the tasks of arguments no longer pinned go on ``todo`` (lock held)."""
        del self.tasks[task.task_id]
        self.bytes -= len(task.args)
        if task.retries_left > 0:
            for dep_id, dep_owner in task.lineage_deps or ():
                if dep_owner != owner:
                    continue
                self.pins[dep_id] -= 1
                if self.pins[dep_id] <= 0:
                    del self.pins[dep_id]
                    todo.append(dep_id[:16])


class Recovery:
    """Node deaths and lost objects, for one runtime (see the module's docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.lineage = Lineage()
        self.dead_nodes: dict[str, tuple[str, str]] = {}  # node id -> (its address, why it died)
        self.live: dict[str, str] = {}  # address -> node id of the live nodes, as of the last NodeDied

    # ------------------------------------------------------------------ node death (trio)

    def node_died(self, msg: m.NodeDied) -> None:
        rt = self.rt
        if msg.node_id in self.dead_nodes:
            return
        self.dead_nodes[msg.node_id] = (msg.address, msg.reason)
        self.live = {address: node_id for node_id, address in msg.live}
        why = f"node {msg.node_id} at {msg.address} died ({msg.reason})"  # (for tasks and actors there)
        log.warning("node_died", node_id=msg.node_id, address=msg.address, reason=msg.reason)
        for queue in list(rt._queues.values()):
            for lease in list(queue.leases):
                if lease.node_id == msg.node_id:
                    lease.lost_reason = why
                    lease.conn.abort()  # its close requeues the tasks pushed there
        rt.actors.node_died(msg.node_id, why)
        self._drop_connections_to(msg.address)
        with rt._cv:
            on_it = [(oid, entry) for oid, entry in rt._values.items()
                     if type(entry) is m.StoredValue and self.on_node(entry, msg.node_id)]
        for object_id, entry in on_it:
            self.object_lost(object_id, entry, f"which died ({msg.reason})")

    @staticmethod
    def on_node(entry: m.StoredValue, node_id: str) -> bool:
        """Whether ``entry``'s primary copy is in ``node_id``'s store (or a process's private store there)."""
        return entry.node_id == node_id or entry.node_id.startswith(node_id + "/")

    def _drop_connections_to(self, address: str) -> None:
        """Drop connections to the dead node and, where its host has an address no live node
        shares (a separate machine), to every process there (a partition keeps them silent)."""
        rt = self.rt
        dialer = rt._dialer
        conn = dialer.open(address)
        if conn is not None:
            conn.abort()
        host = parse_address(address)[0]
        if any(parse_address(live)[0] == host for live in self.live):
            return
        for other in list(dialer.conns.values()):
            if not other.closed and parse_address(other.peer)[0] == host:
                other.abort()

    # ------------------------------------------------------------------ lost objects (trio)

    def object_lost(self, object_id: bytes, entry: m.StoredValue, cause: str) -> None:
        """The primary copy of ``object_id`` (on ``entry``'s node) is gone; ``cause`` says why,
        as a clause about that node ("which died (...)")."""
        rt = self.rt
        with rt._cv:
            if rt._values.get(object_id) is not entry:
                return  # freed, or handled already (a copy promoted, a rebuild under way)
            if object_id not in rt._owned:
                del rt._values[object_id]  # a borrowed entry: the next read asks the owner
                return
            copy = self._live_copy(object_id)
            if copy is not None:
                rt._values[object_id] = copy
                log.info("object_copy_promoted", object_id=object_id.hex(), node=copy.node_address)
                return
            del rt._values[object_id]
        why = self.rebuild(object_id)
        if why is not None:
            kind, reason = why
            self.fail(object_id, f"object {object_id.hex()} is lost: it lived on node {entry.node_id} at "
                                 f"{entry.node_address}, {cause}, and it cannot be rebuilt: {reason}", kind)

    def _live_copy(self, object_id: bytes) -> m.StoredValue | None:
        """A secondary copy of ours on a live node, as a primary entry (caller holds rt._cv)."""
        rt = self.rt
        entry = rt._values[object_id]
        assert type(entry) is m.StoredValue
        for address in sorted(rt._locations.get(object_id, ())):
            node_id = self.live.get(address)
            if node_id is not None and node_id not in self.dead_nodes:
                rt._locations[object_id].discard(address)
                return m.StoredValue(object_id, node_id, address, entry.size, entry.owner)
        return None

    def fail(self, object_id: bytes, message: str, kind: type[ObjectLostError] = ObjectLostError) -> None:
        """Settle ``object_id`` with an ObjectLostError, or the subclass ``kind`` Ray would raise
        (waiters wake and raise it)."""
        rt = self.rt
        log.warning("object_lost", object_id=object_id.hex(), reason=message)
        rt.settle(object_id, v.serialize_error(kind(message)))

    def rebuild(self, object_id: bytes) -> tuple[type[ObjectLostError], str] | None:
        """Run the task that made ``object_id`` again (and, first, those of its lost
        arguments). None: under way; else why it cannot be rebuilt, and the error Ray raises."""
        rt = self.rt
        task = self.lineage.task_of(object_id)
        if task is None:
            if object_id.endswith(PUT_SUFFIX):
                return ObjectLostError, "it was stored with cluster.put, and a put object has no task to rebuild it from"
            evicted = (f", or its lineage was dropped to keep under {self.lineage.max_bytes} bytes "
                       "(CLUSTER_MAX_LINEAGE_BYTES)") if self.lineage.evicted else ""
            kind = ObjectReconstructionFailedLineageEvictedError if evicted else ObjectReconstructionFailedError
            return kind, ("no lineage was kept for it (it is the result of an actor call, or of a task whose "
                          f"arguments held ObjectRefs inside other values{evicted})")
        if task.rebuilding:
            return None
        if task.retries_left <= 0:
            if task.max_retries == 0:
                return ObjectReconstructionFailedMaxAttemptsExceededError, \
                    f"the task that made it, {task.name}, has max_retries=0"
            return ObjectReconstructionFailedMaxAttemptsExceededError, \
                f"the task that made it, {task.name}, has no retries left (max_retries={task.max_retries})"
        for dep_id, dep_owner in task.lineage_deps or ():
            if dep_owner != rt.address:
                continue  # a borrowed argument: the task's worker asks its owner when it reads it
            with rt._cv:
                entry = rt._values.get(dep_id)
            if type(entry) is m.StoredValue and any(self.on_node(entry, node) for node in self.dead_nodes):
                self.object_lost(dep_id, entry, "which died")
                with rt._cv:
                    entry = rt._values.get(dep_id)
            if entry is not None and entry.is_error:
                return ObjectReconstructionFailedError, f"its argument {dep_id.hex()} is lost too: {_lost_reason(entry)}"
            if entry is None and dep_id not in rt._owned:  # freed since: make it again too
                why = self.rebuild(dep_id)
                if why is not None:
                    return ObjectReconstructionFailedError, f"its argument {dep_id.hex()} is gone and cannot be rebuilt: {why[1]}"
        task.retries_left -= 1
        task.rebuilding = True
        log.info("object_rebuild", object_id=object_id.hex(), task=task.name, retries_left=task.retries_left)
        rt.report_failure("reconstruction", f"{task.name}: run again to rebuild object {object_id.hex()}")
        task.dep_refs = [ObjectRef(dep_id, dep_owner) for dep_id, dep_owner in task.lineage_deps or ()]
        task.deps = []
        task.lease = None
        task.cancelled = False
        rt.resubmit(task)
        return None

    # ---------------------------------------------------------- a reader found no copy

    async def recover(self, entry: m.StoredValue, reason: str) -> m.ValueEntry:
        """No copy of ``entry``'s object could be read here (``reason``): have its owner
        recover it, and return the entry to read next (maybe an error entry)."""
        rt = self.rt
        object_id = entry.object_id
        if entry.owner == rt.address:
            self.object_lost(object_id, entry, f"where no copy of it could be read ({reason})")
            return await rt._wait_entry_of(object_id, rt.address)
        try:
            owner = await rt._connect(entry.owner, "the object's owner")
            found: m.ValueEntry = await owner.request(m.RecoverObject(object_id, entry.node_id, reason))
        except (ClusterConnectionError, RemoteCallError) as exc:
            found = v.serialize_error(OwnerDiedError(
                f"object {object_id.hex()} is lost: no copy of it could be read ({reason}), and its owner "
                f"at {entry.owner} is unreachable ({exc}); an object's metadata lives with the process "
                "that created it, so it is gone with that process"))
        with rt._cv:
            if object_id in rt._values:
                rt._values[object_id] = found  # (our cached entry of a borrowed object)
        return found

    async def serve_recover(self, conn: Connection, request_id: int, msg: m.RecoverObject) -> None:
        rt = self.rt
        with rt._cv:
            entry = rt._values.get(msg.object_id)
        if entry is None and msg.object_id not in rt._owned:
            conn.reply(request_id, v.serialize_error(ObjectLostError(
                f"object {msg.object_id.hex()} is not known to its owner (it was freed)")))
            return
        if type(entry) is m.StoredValue and entry.node_id == msg.node_id:
            self.object_lost(msg.object_id, entry, f"where no copy of it could be read ({msg.reason})")
        conn.reply(request_id, await rt._wait_entry_of(msg.object_id, rt.address))


def _lost_reason(entry: m.ValueEntry) -> str:
    try:
        v.loads(entry.metadata, entry.inband, entry.buffers)  # type: ignore[union-attr]
    except Exception as exc:  # the error the entry holds
        return str(exc)
    return "it failed"
