"""Where an actor's calls run: its concurrency groups (Ray's), each an event loop or a thread pool.

An actor whose class has an ``async def`` method runs its calls as coroutines; other actors run
them in threads when they allow more than one at a time (``max_concurrency > 1``) or name
concurrency groups, else one at a time on the worker's main thread (no groups object at all).
Each group is a *lane* of its own: for an async actor an event loop on a thread of its own with
a limit of calls in flight, for a threaded one a pool of that many threads. The default group
takes the methods no ``@cluster.method(concurrency_group=...)`` placed elsewhere; a call's
``.options(concurrency_group=...)`` overrides both.

Owns: :class:`ConcurrencyGroups`. Imports: api.actors (whether a class is async, which methods it placed in groups).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from cluster.api.actors import is_async_actor, method_groups

DEFAULT_ASYNC_CONCURRENCY = 1000  # Ray's default for the default group of an async actor


class _EventLoopLane:
    """A group of an async actor: an event loop on its own thread, ``limit`` calls in flight."""

    def __init__(self, name: str, limit: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.semaphore: asyncio.Semaphore | None = None
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.semaphore = asyncio.Semaphore(limit)
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, name=f"actor-loop-{name}", daemon=True).start()
        ready.wait()

    def start(self, make_coroutine: Callable[[asyncio.Semaphore], Coroutine[Any, Any, None]]) -> None:
        assert self.semaphore is not None
        asyncio.run_coroutine_threadsafe(make_coroutine(self.semaphore), self.loop)


class _ThreadLane:
    """A group of a threaded actor: a pool of ``limit`` threads."""

    def __init__(self, name: str, limit: int) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(limit, thread_name_prefix=f"actor-{name}")

    def start(self, run: Callable[[], None]) -> None:
        self.pool.submit(run)


class ConcurrencyGroups:
    """The lanes of one actor, by group name ("" is the default group)."""

    def __init__(self, is_async: bool, lanes: dict[str, Any], placed: dict[str, str]) -> None:
        self.is_async = is_async
        self._lanes = lanes
        self._placed = placed  # method -> its group, from @cluster.method

    @classmethod
    def for_actor(cls, actor_class: type, max_concurrency: int | None,
                  groups: Mapping[str, int] | None) -> ConcurrencyGroups | None:
        """The lanes ``actor_class`` needs, or None when its calls run one at a time on the
        worker's main thread (a sync actor with neither max_concurrency > 1 nor groups)."""
        is_async = is_async_actor(actor_class)
        if not is_async and (max_concurrency or 1) == 1 and not groups:
            return None
        lane_type = _EventLoopLane if is_async else _ThreadLane
        default = max_concurrency or (DEFAULT_ASYNC_CONCURRENCY if is_async else 1)
        lanes = {"": lane_type("default", default)}
        for name, limit in (groups or {}).items():
            lanes[name] = lane_type(name, limit)
        return cls(is_async, lanes, method_groups(actor_class))

    def lane(self, method: str, override: str = "") -> Any:
        """The lane a call of ``method`` runs on; ``override``: the call's own concurrency_group."""
        group = override or self._placed.get(method, "")
        lane = self._lanes.get(group)
        if lane is None:
            if group == "default":
                return self._lanes[""]
            known = ", ".join(repr(name) for name in self._lanes if name) or "none besides the default"
            raise ValueError(f"this actor has no concurrency group {group!r} (its groups: {known})")
        return lane
