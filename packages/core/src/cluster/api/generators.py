"""Generator tasks, the caller's side: :class:`ObjectRefGenerator` (Ray's), what
``f.remote()`` returns for a function that yields (docs/design/0014).

Imports: lifecycle (the runtime), objects (ObjectRef, DynamicObjectRefGenerator), owner (the
stream's end).
"""

from __future__ import annotations

import asyncio
from typing import Any

from cluster.objects.refs import DynamicObjectRefGenerator, ObjectRef
from cluster.owner.generators import EndOfStream

__all__ = ["DynamicObjectRefGenerator", "ObjectRefGenerator"]


def streams_of(runtime: Any) -> Any:
    """The runtime's generator half; a clear error where there is none (a remote client)."""
    streams = getattr(runtime, "streams", None)
    if streams is None:
        raise NotImplementedError(
            "generator tasks do not run through a remote client (cluster://) yet: run the driver on "
            "a machine of the cluster (cluster.init(\"HOST:PORT\")), or return a list instead of yielding")
    return streams


class ObjectRefGenerator:
    """The values a generator task yields, as ObjectRefs, in order, as soon as each is made.

    ``next(gen)`` / ``for ref in gen`` (blocking), ``await gen.__anext__()`` / ``async for``,
    ``cluster.wait([gen])`` (ready when the next value is), ``cluster.cancel(gen)``. If the task
    fails, the ref after its last value raises the error on ``get``; then the iteration ends.
    Dropping it frees the values not taken yet and stops the task at its next yield.
    Not thread-safe, and it cannot be passed to other tasks (as in Ray).
    """

    __slots__ = ("__weakref__", "_completed", "_index", "_runtime", "_task_id")

    def __init__(self, runtime: Any, task_id: bytes, completed: ObjectRef) -> None:
        self._runtime = runtime
        self._task_id = task_id
        self._completed = completed  # the task's own return: ready once the task has finished
        self._index = 0  # the next value's

    # -- the generator interfaces

    def __iter__(self) -> ObjectRefGenerator:
        return self

    def __next__(self) -> ObjectRef:
        return self._next_sync()

    def _next_sync(self, timeout_s: float | None = None) -> ObjectRef:
        try:
            ref: ObjectRef = self._runtime.streams.next(self._task_id, self._index, timeout_s)
        except EndOfStream:
            raise StopIteration from None
        self._index += 1
        return ref

    def __aiter__(self) -> ObjectRefGenerator:
        return self

    async def __anext__(self) -> ObjectRef:
        future = self._runtime.streams.next_future(self._task_id, self._index)
        try:
            ref: ObjectRef = await asyncio.wrap_future(future)
        except EndOfStream:
            raise StopAsyncIteration from None
        self._index += 1
        return ref

    def send(self, value: Any) -> Any:
        raise NotImplementedError("ObjectRefGenerator.send() is not supported (as in Ray)")

    def throw(self, *args: Any) -> Any:
        raise NotImplementedError("ObjectRefGenerator.throw() is not supported (as in Ray)")

    def close(self) -> None:
        raise NotImplementedError("ObjectRefGenerator.close() is not supported (as in Ray); "
                                  "drop the generator (del gen) or cluster.cancel(gen) to stop the task")

    async def asend(self, value: Any) -> Any:
        raise NotImplementedError("ObjectRefGenerator.asend() is not supported (as in Ray)")

    async def athrow(self, *args: Any) -> Any:
        raise NotImplementedError("ObjectRefGenerator.athrow() is not supported (as in Ray)")

    async def aclose(self) -> None:
        raise NotImplementedError("ObjectRefGenerator.aclose() is not supported (as in Ray)")

    # -- Ray's methods

    def completed(self) -> ObjectRef:
        """A ref ready when the task has finished; its ``get`` raises the task's error if it failed."""
        return self._completed

    def next_ready(self) -> bool:
        """Whether ``next(gen)`` returns at once with a value (False at the end: see is_finished)."""
        with self._runtime._cv:
            return bool(self._runtime.streams.next_ready(self._task_id, self._index))

    def is_finished(self) -> bool:
        """Whether every value has been taken: ``next(gen)`` would raise StopIteration."""
        with self._runtime._cv:
            return bool(self._runtime.streams.finished(self._task_id, self._index))

    def _ready(self) -> bool:
        """For ``wait``: ``next`` would not block (runtime's lock held)."""
        return bool(self._runtime.streams.ready(self._task_id, self._index))

    def task_id(self) -> bytes:
        """The generator task's id."""
        return self._task_id

    def __repr__(self) -> str:
        return f"ObjectRefGenerator({self._task_id.hex()}, next={self._index})"

    def __reduce__(self) -> Any:
        raise TypeError(
            "an ObjectRefGenerator cannot be pickled or passed to another task or actor (as in "
            "Ray); pass the ObjectRefs it yields instead, e.g. [ref for ref in gen]")

    def __del__(self) -> None:
        runtime = self._runtime
        try:
            if not runtime._stopped:
                # On the runtime's thread: a collection may run this where the runtime's lock
                # is held (drop takes it).
                runtime.soon(runtime.streams.drop, self._task_id)
        except Exception:  # the runtime's loop is gone (interpreter shutdown)
            pass
