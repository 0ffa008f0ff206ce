"""``Queue``: a first-in, first-out queue held by an actor, as Ray's ``ray.util.queue``.

The queue object is a handle: pass it to tasks and actors and they put and get on the same
actor. Blocking calls wait inside the actor (an asyncio queue), so one blocked ``get`` does not
hold up other callers. ``Empty`` and ``Full`` are subclasses of the standard library's
``queue.Empty`` and ``queue.Full``.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterable, Mapping
from typing import Any

from cluster.api.actors import ActorHandle, kill
from cluster.api.objects import get, wait
from cluster.api.tasks import remote

__all__ = ["Empty", "Full", "Queue"]


class Empty(queue.Empty):
    """The queue had no item: at once for a non-blocking get, after the timeout for a blocking one."""


class Full(queue.Full):
    """The queue had no room: at once for a non-blocking put, after the timeout for a blocking one."""


class _QueueActor:
    """The actor behind a Queue. Its methods answer what happened (True/False, or (found,
    value)) rather than raising, so the caller raises Empty/Full without a remote traceback."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: asyncio.Queue[Any] = asyncio.Queue(maxsize)

    def qsize(self) -> int:
        return self.items.qsize()

    def empty(self) -> bool:
        return self.items.empty()

    def full(self) -> bool:
        return self.items.full()

    async def put(self, item: Any, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(self.items.put(item), timeout)
        except TimeoutError:
            return False
        return True

    async def get(self, timeout: float | None) -> tuple[bool, Any]:
        try:
            return True, await asyncio.wait_for(self.items.get(), timeout)
        except TimeoutError:
            return False, None

    def put_nowait(self, item: Any) -> bool:
        try:
            self.items.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    def put_nowait_batch(self, items: list[Any]) -> bool:
        if self.maxsize > 0 and len(items) + self.items.qsize() > self.maxsize:
            return False
        for item in items:
            self.items.put_nowait(item)
        return True

    def get_nowait(self) -> tuple[bool, Any]:
        try:
            return True, self.items.get_nowait()
        except asyncio.QueueEmpty:
            return False, None

    def get_nowait_batch(self, num_items: int) -> tuple[bool, list[Any]]:
        if num_items > self.items.qsize():
            return False, []
        return True, [self.items.get_nowait() for _ in range(num_items)]


_QueueActorClass = remote(_QueueActor)


class Queue:
    """A FIFO queue on the cluster: ``Queue(maxsize=0, actor_options=None)``.

    ``maxsize`` 0 (or less) means unbounded. ``actor_options`` go to the actor's
    ``.options(...)`` (``{"num_cpus": 1}``, ``{"resources": ...}``, ``{"name": ...}``).
    """

    def __init__(self, maxsize: int = 0, actor_options: Mapping[str, Any] | None = None) -> None:
        if isinstance(maxsize, bool) or not isinstance(maxsize, int):
            raise TypeError(f"maxsize must be an int, got {type(maxsize).__name__}")
        self.maxsize = maxsize
        self.actor: ActorHandle | None = _QueueActorClass.options(**dict(actor_options or {})).remote(maxsize)

    def __len__(self) -> int:
        return self.size()

    def size(self) -> int:
        """How many items the queue holds."""
        return int(get(self._actor().qsize.remote()))

    def qsize(self) -> int:
        """How many items the queue holds (``size()``)."""
        return self.size()

    def empty(self) -> bool:
        """Whether the queue holds no item."""
        return bool(get(self._actor().empty.remote()))

    def full(self) -> bool:
        """Whether the queue holds ``maxsize`` items (never, if unbounded)."""
        return bool(get(self._actor().full.remote()))

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; if the queue is full, wait for room (at most ``timeout`` seconds) or,
        with ``block=False``, raise Full at once."""
        if not block:
            if not get(self._actor().put_nowait.remote(item)):
                raise Full
            return
        _check_timeout(timeout)
        if not get(self._actor().put.remote(item, timeout)):
            raise Full

    async def put_async(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """:meth:`put` for a coroutine: waits without blocking the event loop."""
        await asyncio.to_thread(self.put, item, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item; if the queue is empty, wait for one (at most
        ``timeout`` seconds) or, with ``block=False``, raise Empty at once."""
        if not block:
            found, item = get(self._actor().get_nowait.remote())
        else:
            _check_timeout(timeout)
            found, item = get(self._actor().get.remote(timeout))
        if not found:
            raise Empty
        return item

    async def get_async(self, block: bool = True, timeout: float | None = None) -> Any:
        """:meth:`get` for a coroutine: waits without blocking the event loop."""
        return await asyncio.to_thread(self.get, block, timeout)

    def put_nowait(self, item: Any) -> None:
        """``put(item, block=False)``."""
        self.put(item, block=False)

    def put_nowait_batch(self, items: Iterable[Any]) -> None:
        """Add every item, in order, or none: Full if they do not all fit."""
        if not isinstance(items, Iterable):
            raise TypeError("Argument 'items' must be an Iterable")
        batch = list(items)
        if not get(self._actor().put_nowait_batch.remote(batch)):
            raise Full(f"cannot add {len(batch)} items to a queue of maxsize {self.maxsize} "
                       f"that holds {self.size()}")

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(block=False)

    def get_nowait_batch(self, num_items: int) -> list[Any]:
        """Remove and return the ``num_items`` oldest items, in order, or none: Empty if the
        queue holds fewer."""
        if isinstance(num_items, bool) or not isinstance(num_items, int):
            raise TypeError("Argument 'num_items' must be an int")
        if num_items < 0:
            raise ValueError("'num_items' must be nonnegative")
        found, items = get(self._actor().get_nowait_batch.remote(num_items))
        if not found:
            raise Empty(f"cannot get {num_items} items from a queue that holds {self.size()}")
        return list(items)

    def shutdown(self, force: bool = False, grace_period_s: float = 5) -> None:
        """Stop the queue's actor and release what it holds.

        ``force=True`` kills it at once. Otherwise the calls sent to it before are first given
        up to ``grace_period_s`` seconds to be taken up, then it is stopped; a caller still
        blocked in ``get`` or ``put`` gets ActorDiedError.
        """
        actor, self.actor = self.actor, None
        if actor is None:
            return
        if not force:
            wait([actor.qsize.remote()], timeout=grace_period_s)
        kill(actor)

    def _actor(self) -> ActorHandle:
        if self.actor is None:
            raise RuntimeError("this queue was shut down (Queue.shutdown())")
        return self.actor


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and timeout < 0:
        raise ValueError("'timeout' must be a non-negative number")
