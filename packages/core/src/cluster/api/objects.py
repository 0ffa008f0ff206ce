"""Objects: ``get``, ``put``, ``wait`` and ``cancel`` (Ray's names, arguments and errors).

Imports: lifecycle (the process's runtime), objects (ObjectRef), errors.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Iterable
from typing import Any

from cluster.api.generators import ObjectRefGenerator
from cluster.api.lifecycle import current_runtime
from cluster.errors import ClusterError, ConfigError
from cluster.objects.refs import ObjectRef


def get(refs: ObjectRef | Iterable[ObjectRef], *, timeout: float | None = None) -> Any:
    """The value(s) of ObjectRef(s), waiting up to ``timeout`` seconds (None: forever).

    Raises the task's error (a :class:`cluster.TaskError`, also an instance of the original
    exception's type) if it failed, and :class:`cluster.exceptions.GetTimeoutError` on timeout.
    """
    single = isinstance(refs, ObjectRef)
    ref_list = [refs] if single else _ref_list(refs, "get")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise ConfigError(f"timeout must be a non-negative number of seconds or None, got {timeout!r}")
    runtime = current_runtime()
    if _watch_blocking_get:
        _warn_if_blocking_an_event_loop(runtime)
    try:
        values = runtime.get(ref_list, timeout)
    except ClusterError as exc:
        # The remote traceback is in the message; our own frames would only be noise.
        raise exc.with_traceback(None) from None
    return values[0] if single else values


_watch_blocking_get = True  # until warned once, or known to be a driver (no executor: never an actor)


def _warn_if_blocking_an_event_loop(runtime: Any) -> None:
    """Once per worker, the warning Ray gives for a blocking ``get`` in an async actor's call."""
    global _watch_blocking_get
    executor = getattr(runtime, "executor", None)
    if executor is None:
        _watch_blocking_get = False
        return
    if not executor.is_async_actor:
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # (a thread of its own, not the event loop)
    _watch_blocking_get = False
    warnings.warn("Using blocking cluster.get inside async actor. This blocks the event loop. Please use `await` "
                  "on object ref with asyncio.gather if you want to yield execution to the event loop instead.",
                  RuntimeWarning, stacklevel=3)


def put(value: Any) -> ObjectRef:
    """Store ``value`` in the cluster and return a reference to it."""
    if isinstance(value, ObjectRef):
        raise TypeError("put() of an ObjectRef is not allowed; pass the ObjectRef itself instead")
    return current_runtime().put(value)


def wait(
    refs: Iterable[ObjectRef | ObjectRefGenerator], *, num_returns: int = 1, timeout: float | None = None,
    fetch_local: bool = True
) -> tuple[list[Any], list[Any]]:
    """Wait until ``num_returns`` of ``refs`` are ready or ``timeout`` passes: (ready, not_ready).

    An ObjectRefGenerator among them is ready when ``next()`` on it would not wait (its next
    value is in, or it has ended), as in Ray. No refs: two empty lists, at once (as Ray).
    ``fetch_local`` is Ray's: objects are read where they are when fetched, so it changes
    nothing here."""
    ref_list = _ref_list(refs, "wait", generators=True)
    if not ref_list:
        return [], []
    if len({id(ref) if type(ref) is ObjectRefGenerator else ref._id for ref in ref_list}) != len(ref_list):
        raise ValueError("wait() got the same ObjectRef more than once")
    if not isinstance(num_returns, int) or not 0 <= num_returns <= len(ref_list):
        raise ValueError(f"num_returns must be between 0 and len(refs)={len(ref_list)}, got {num_returns!r}")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise ConfigError(f"timeout must be a non-negative number of seconds or None, got {timeout!r}")
    runtime = current_runtime()
    if any(type(ref) is ObjectRefGenerator for ref in ref_list):
        values = runtime._values
        return runtime.wait_any(
            ref_list, num_returns, timeout,
            lambda item: item._ready() if type(item) is ObjectRefGenerator else item._id in values)
    return runtime.wait(ref_list, num_returns, timeout)


def cancel(ref: ObjectRef | ObjectRefGenerator, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that produces ``ref`` (or generator); ``get`` then raises TaskCancelledError.

    A queued task is dropped; a running one is interrupted (``force=True`` kills its worker); a
    generator task stops at once if it runs as a task, else at its next yield, and its
    generator's next ref raises TaskCancelledError. With ``recursive`` (the default, as Ray's)
    the tasks it submitted that have not finished are cancelled too, and theirs. Tasks that take
    its result as an argument fail with the same TaskCancelledError without running; other work
    goes on.
    """
    if type(ref) is ObjectRefGenerator:
        ref = ref.completed()
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef or an ObjectRefGenerator, got {type(ref).__name__}")
    current_runtime().cancel(ref, force, recursive)


def _ref_list(refs: Any, what: str, generators: bool = False) -> list[Any]:
    if type(refs) is ObjectRefGenerator and not generators:
        raise TypeError(f"{what}() of an ObjectRefGenerator is not allowed (as in Ray): take its refs with "
                        "next(gen) or `for ref in gen`, or wait for the task's end with gen.completed()")
    if isinstance(refs, str | bytes | ObjectRefGenerator) or not isinstance(refs, Iterable):
        raise TypeError(f"{what}() takes an ObjectRef or a list of ObjectRefs, got {type(refs).__name__}")
    out = list(refs)
    if not all(type(ref) is ObjectRef for ref in out):
        for ref in out:
            if generators and type(ref) is ObjectRefGenerator:
                continue
            if type(ref) is ObjectRefGenerator:
                raise TypeError(f"{what}() of an ObjectRefGenerator is not allowed (as in Ray): take its refs "
                                "with next(gen), or wait for the task's end with gen.completed()")
            if not isinstance(ref, ObjectRef):
                raise TypeError(f"{what}() takes ObjectRefs, got an item of type {type(ref).__name__}")
    return out

