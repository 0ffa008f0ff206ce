"""``ActorPool``: hand values to a fixed set of actors, each busy with one call at a time.

``fn(actor, value)`` makes the call and returns its ObjectRef (or a list of them); the pool
gives each value the next idle actor, keeps the rest waiting until one is free, and hands the
results back in submission order (``get_next``, ``map``) or as they finish
(``get_next_unordered``, ``map_unordered``), as Ray's ``ray.util.ActorPool`` does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from cluster.api.actors import ActorHandle
from cluster.api.objects import get, wait
from cluster.objects.refs import ObjectRef

V = TypeVar("V")
Call = Callable[[ActorHandle, Any], Any]  # (actor, value) -> the ObjectRef of the call it makes

TIMED_OUT = "Timed out waiting for result"


class ActorPool:
    """A fixed pool of actors: ``ActorPool([a1, a2]).map(lambda a, v: a.double.remote(v), values)``."""

    def __init__(self, actors: Iterable[ActorHandle]) -> None:
        self._idle: list[ActorHandle] = list(actors)
        # Submitted calls not yet returned, oldest first: index -> (its refs, the actor on it).
        self._running: dict[int, tuple[ObjectRef | list[ObjectRef], ActorHandle]] = {}
        self._waiting: deque[tuple[Call, Any]] = deque()  # submitted while no actor was idle
        self._next_index = 0

    # ----------------------------------------------------------------- many values at once

    def map(self, fn: Callable[[ActorHandle, V], Any], values: Iterable[V]) -> Iterator[Any]:
        """Apply ``fn(actor, value)`` to every value; an iterator over the results, in order.

        The work starts when iteration does; results of earlier submissions that were never
        fetched are dropped first.
        """
        self._drop_unreturned()
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next()

    def map_unordered(self, fn: Callable[[ActorHandle, V], Any], values: Iterable[V]) -> Iterator[Any]:
        """Like :meth:`map`, but each result comes as soon as it is ready."""
        self._drop_unreturned()
        for value in values:
            self.submit(fn, value)
        while self.has_next():
            yield self.get_next_unordered()

    # ------------------------------------------------------------------ one value at a time

    def submit(self, fn: Call, value: Any) -> None:
        """Run ``fn(actor, value)`` on an idle actor, or once one is free; fetch the result with
        :meth:`get_next` or :meth:`get_next_unordered`."""
        if not self._idle:
            self._waiting.append((fn, value))
            return
        actor = self._idle.pop()
        try:
            refs = fn(actor, value)
            if not (isinstance(refs, ObjectRef) or
                    (isinstance(refs, list) and refs and all(isinstance(r, ObjectRef) for r in refs))):
                raise TypeError("the function given to ActorPool must return the ObjectRef of the actor "
                                f"call it makes (or a list of them), got {type(refs).__name__}")
        except BaseException:
            self._idle.append(actor)
            raise
        self._running[self._next_index] = (refs, actor)
        self._next_index += 1

    def has_next(self) -> bool:
        """Whether a submitted call's result is still to be returned."""
        return bool(self._running)

    def get_next(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The result of the oldest call not returned yet, waiting up to ``timeout`` seconds.

        Raises TimeoutError when it is not ready in time: the call stays in the pool, unless
        ``ignore_if_timedout``, which drops it (its actor goes back to work). Raises
        StopIteration when nothing is pending.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        index = next(iter(self._running))
        refs = self._running[index][0]
        if timeout is not None:
            wanted = refs if isinstance(refs, list) else [refs]
            ready, _ = wait(wanted, num_returns=len(wanted), timeout=timeout)
            if len(ready) < len(wanted):
                if ignore_if_timedout:
                    self._release(index)
                    raise TimeoutError(f"{TIMED_OUT}; call {index} of the pool was dropped")
                raise TimeoutError(TIMED_OUT)
        self._release(index)
        return get(refs)

    def get_next_unordered(self, timeout: float | None = None, ignore_if_timedout: bool = False) -> Any:
        """The result of any finished call, waiting up to ``timeout`` seconds for one.

        Raises TimeoutError when none finished in time (with ``ignore_if_timedout``, the oldest
        call is dropped), StopIteration when nothing is pending.
        """
        if not self.has_next():
            raise StopIteration("No more results to get")
        first_ref = {_first(refs): index for index, (refs, _) in self._running.items()}
        ready, _ = wait(list(first_ref), num_returns=1, timeout=timeout)
        if not ready:
            if ignore_if_timedout:
                dropped = next(iter(self._running))
                self._release(dropped)
                raise TimeoutError(f"{TIMED_OUT}; call {dropped} of the pool was dropped")
            raise TimeoutError(TIMED_OUT)
        return get(self._release(first_ref[ready[0]]))

    # ----------------------------------------------------------------------------- actors

    def has_free(self) -> bool:
        """Whether an actor is idle (and no submission waits for one)."""
        return bool(self._idle) and not self._waiting

    def pop_idle(self) -> ActorHandle | None:
        """Take an idle actor out of the pool; None if no actor is free."""
        return self._idle.pop() if self.has_free() else None

    def push(self, actor: ActorHandle) -> None:
        """Add an actor to the pool, idle (it takes a waiting submission at once, if any)."""
        if actor in self._idle or any(actor == busy for _, busy in self._running.values()):
            raise ValueError("Actor already belongs to current ActorPool")
        self._return_actor(actor)

    # --------------------------------------------------------------------------- internals

    def _release(self, index: int) -> ObjectRef | list[ObjectRef]:
        refs, actor = self._running.pop(index)
        self._return_actor(actor)
        return refs

    def _return_actor(self, actor: ActorHandle) -> None:
        self._idle.append(actor)
        if self._waiting:
            self.submit(*self._waiting.popleft())

    def _drop_unreturned(self) -> None:
        while self._running:  # each release may start a waiting submission: drop those too
            self._release(next(iter(self._running)))
        self._waiting.clear()


def _first(refs: ObjectRef | list[ObjectRef]) -> ObjectRef:
    """The ref to wait on: every return of one call is ready at the same time."""
    return refs[0] if isinstance(refs, list) else refs
