"""The generator half of the owner runtime (:class:`Streams`, a member of the Runtime): what a
caller keeps of each generator task it submitted (docs/design/0014).

A generator task's worker sends each value it yields as a ``GeneratorItem`` on the task's
connection, ahead of the task's result; value ``i`` is an object the caller owns, of id
``task_id + (i + 1)`` (``task_id + 0`` is the task's own return, ``completed()``). The items
are handled where they arrive (the connection's reader thread, or the trio thread when it is
behind), in order, so when the task's result is recorded every value it yielded is known: the
stream ends there, after one more item holding the task's error if it failed. ``next()``
hands the values out in order as ObjectRefs; back-pressure credit (``GeneratorConsumed``) goes
back to the worker only when the task asked for it. A stream whose consumer is gone frees the
values nobody took and tells the producer to stop (``GeneratorStop``).

Imports: objects, wire, owner.tasks.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import TYPE_CHECKING, Any

import attrs

from cluster.errors import ClusterConnectionError, GetTimeoutError
from cluster.objects import values as v
from cluster.objects.refs import DynamicObjectRefGenerator, ObjectRef
from cluster.wire import messages as m

if TYPE_CHECKING:
    from cluster.owner.runtime import Runtime
    from cluster.owner.tasks import PendingTask
    from cluster.wire.connection import Connection


def item_id(task_id: bytes, index: int) -> bytes:
    """The object id of value ``index`` a generator task yields (its return is index -1)."""
    return task_id + (index + 1).to_bytes(4, "little")


class EndOfStream(Exception):
    """``next()`` past the last value (the API raises StopIteration or StopAsyncIteration)."""


@attrs.define(slots=True, eq=False)
class StreamState:
    """One generator task, as its caller sees it."""

    task_id: bytes
    backpressure: int = 0  # most values unconsumed before the producer pauses (0: no limit)
    dynamic: bool = False  # Ray's num_returns="dynamic": one ref holding all the values' refs
    received: int = 0  # values known, from 0 (they arrive in order)
    end: int | None = None  # how many values the stream has, once the task finished
    taken: int = 0  # values handed out by next() (the rest are freed if the consumer goes)
    dropped: bool = False  # the consumer is gone
    finished: bool = False  # the task's result is in
    conn: Connection | None = None  # where the producer runs (the items came on it)
    futures: list[tuple[int, concurrent.futures.Future[Any]]] = attrs.Factory(list)  # async next()

    def spec(self) -> m.StreamSpec:
        """What the worker needs to run (or run again: ``resume``) the task."""
        return m.StreamSpec(self.backpressure, self.received, self.dynamic, self.taken)

    def ready(self, index: int) -> bool:
        """``next()`` at ``index`` would not wait: the value is in, or the stream ended."""
        return index < self.received or (self.end is not None and index >= self.end)


class Streams:
    """The generator tasks a runtime owns (see the module's docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self._streams: dict[bytes, StreamState] = {}  # by task id; guarded by the runtime's _cv

    # -------------------------------------------------------------- submitting (user thread)

    def open(self, task: PendingTask, backpressure: int, dynamic: bool) -> StreamState:
        stream = StreamState(task.task_id, backpressure, dynamic)
        with self.rt._cv:
            self._streams[task.task_id] = stream
        task.stream = stream
        return stream

    # ------------------------------------------------ values arriving (reader or trio thread)

    def on_item(self, conn: Connection, msg: m.GeneratorItem) -> None:
        rt = self.rt
        oid = item_id(msg.task_id, msg.index)
        settle: list[tuple[int, concurrent.futures.Future[Any]]] = []
        with rt._cv:
            stream = self._streams.get(msg.task_id)
            keep = stream is not None and not stream.dropped and not stream.finished
            if keep:
                assert stream is not None
                if stream.conn is not conn:  # (a run again, after a worker died: tell it where we are)
                    stream.conn = conn
                    if stream.backpressure and stream.taken:
                        try:
                            conn.send_threadsafe(m.GeneratorConsumed(stream.task_id, stream.taken))
                        except ClusterConnectionError:
                            pass
                if msg.index != stream.received:  # (a retry sends only what we lack: never)
                    keep = False
                else:
                    rt._values[oid] = msg.entry
                    rt._owned.add(oid)
                    stream.received += 1
                    rt._cv.notify_all()
                    settle = self._due_futures(stream)
        if msg.contained:  # the worker made us a borrower of these: hold them with the value
            rt._adopt_contained([oid] if keep else None, msg.contained)
        if not keep or stream is None:
            rt._drop(oid, msg.entry)  # nobody will read it
            return
        for index, future in settle:
            self._settle(stream, index, future)

    def finishing(self, task: PendingTask, entries: list[m.ValueEntry]) -> list[m.ValueEntry]:
        """The task's result is in (runtime's _cv held): the stream ends after what arrived,
        plus an item holding the error if it failed. Returns the entries of its return."""
        stream = task.stream
        assert stream is not None  # (the runtime calls this for generator tasks only)
        rt = self.rt
        first = entries[0]
        stream.finished = True
        count = stream.received
        if first.is_error:
            if stream.dynamic or stream.dropped:
                self._free_from(stream, 0 if stream.dynamic else stream.taken)
            else:
                rt._values[item_id(task.task_id, count)] = first
                rt._owned.add(item_id(task.task_id, count))
                count = stream.received = count + 1
        elif stream.dynamic:  # its value: the refs of what it yielded (which it keeps alive)
            refs = [ObjectRef(item_id(task.task_id, i), rt.address) for i in range(count)]
            ser = v.serialize(DynamicObjectRefGenerator(refs))
            entries = [ser.inline_entry()]
            rt._contained[task.return_ids[0]] = list(ser.refs)
            del refs
        stream.end = count
        if stream.dynamic or stream.dropped:
            self._streams.pop(task.task_id, None)
        else:
            rt._cv.notify_all()
            settle = self._due_futures(stream)
            if settle:
                rt.soon(self._settle_all, stream, settle)
        return entries

    # -------------------------------------------------------------- consuming (user thread)

    def next(self, task_id: bytes, index: int, timeout: float | None) -> ObjectRef:
        """The ref of value ``index`` once it is in (EndOfStream past the last one)."""
        rt = self.rt
        deadline = None if timeout is None else time.monotonic() + timeout
        with rt._cv:
            stream = self._streams.get(task_id)
            if stream is None:
                raise EndOfStream()
            if stream.ready(index):
                return self._take(stream, index)
        blocked = rt.executor is not None and rt.executor.notify_blocked(True)
        try:
            with rt._cv:
                while not stream.ready(index):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise GetTimeoutError(f"no value from the generator within {timeout}s")
                    if rt._crashed is not None:
                        raise rt._crashed_error()
                    rt._cv.wait(remaining if remaining is not None else 1.0)
                return self._take(stream, index)
        finally:
            if blocked:
                rt.executor.notify_blocked(False)

    def next_future(self, task_id: bytes, index: int) -> concurrent.futures.Future[Any]:
        """A future of ``next()`` at ``index``: the ref, or EndOfStream."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self.rt._cv:
            stream = self._streams.get(task_id)
            if stream is not None and not stream.ready(index):
                stream.futures.append((index, future))
                return future
        if stream is None:
            future.set_exception(EndOfStream())
        else:
            self._settle(stream, index, future)
        return future

    def ready(self, task_id: bytes, index: int) -> bool:
        stream = self._streams.get(task_id)
        return stream is None or stream.ready(index)

    def next_ready(self, task_id: bytes, index: int) -> bool:
        stream = self._streams.get(task_id)
        return stream is not None and index < stream.received and (stream.end is None or index < stream.end)

    def finished(self, task_id: bytes, index: int) -> bool:
        stream = self._streams.get(task_id)
        return stream is None or (stream.end is not None and index >= stream.end)

    def drop(self, task_id: bytes) -> None:
        """The consumer is gone (its ObjectRefGenerator was collected): free what it did not
        take, and stop the producer at its next yield (or drop the task if it has not started)."""
        rt = self.rt
        with rt._cv:
            stream = self._streams.get(task_id)
            if stream is None or stream.dropped:
                return
            stream.dropped = True
            freed = self._free_from(stream, stream.taken)
            if stream.finished:
                del self._streams[task_id]
        for oid, entry in freed:
            rt._drop(oid, entry)
        if not stream.finished and not rt._stopped and rt._trio_token is not None:
            try:
                rt.soon(self._stop_producer, task_id)
            except Exception:  # the runtime's loop is gone (interpreter shutdown)
                pass

    # ---------------------------------------------------------------------------- inside

    def _take(self, stream: StreamState, index: int) -> ObjectRef:
        """Value ``index`` goes to the consumer (runtime's _cv held)."""
        if index >= stream.received:
            raise EndOfStream()
        ref = ObjectRef(item_id(stream.task_id, index), self.rt.address)
        if index >= stream.taken:
            stream.taken = index + 1
            if stream.backpressure and not stream.finished and stream.conn is not None:
                try:
                    stream.conn.send_threadsafe(m.GeneratorConsumed(stream.task_id, stream.taken))
                except ClusterConnectionError:
                    pass  # the producer is gone: its task fails or runs again
        return ref

    def _free_from(self, stream: StreamState, start: int) -> list[tuple[bytes, m.ValueEntry]]:
        """Forget the values from ``start`` on, nobody has their refs (runtime's _cv held);
        returns them, to be dropped outside the lock."""
        freed = []
        for index in range(start, stream.received):
            oid = item_id(stream.task_id, index)
            entry = self.rt._values.pop(oid, None)
            self.rt._owned.discard(oid)
            if entry is not None:
                freed.append((oid, entry))
        return freed

    def _due_futures(self, stream: StreamState) -> list[tuple[int, concurrent.futures.Future[Any]]]:
        if not stream.futures:
            return []
        due = [(i, f) for i, f in stream.futures if stream.ready(i)]
        if due:
            stream.futures = [(i, f) for i, f in stream.futures if not stream.ready(i)]
        return due

    def _settle_all(self, stream: StreamState, due: list[tuple[int, concurrent.futures.Future[Any]]]) -> None:
        for index, future in due:
            self._settle(stream, index, future)

    def _settle(self, stream: StreamState, index: int, future: concurrent.futures.Future[Any]) -> None:
        if future.done() or not future.set_running_or_notify_cancel():  # (cancelled: its item stays)
            return
        try:
            with self.rt._cv:
                ref = self._take(stream, index)
        except EndOfStream as exc:
            future.set_exception(exc)
        else:
            future.set_result(ref)

    def _stop_producer(self, task_id: bytes) -> None:
        """On the trio thread: tell the worker running ``task_id`` to stop, or drop the task
        if it has not been sent to one yet."""
        task = self.rt._tasks.get(task_id)
        if task is None:
            return
        lease = task.lease
        conn = getattr(lease, "conn", None)
        if lease is None:
            self.rt._cancel(task_id, False)
        elif conn is not None and not conn.closed:
            try:
                conn.send(m.GeneratorStop(task_id))
            except ClusterConnectionError:
                pass
