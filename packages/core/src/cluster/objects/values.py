"""How values travel: serialization, value entries, and argument markers.

A *value entry* describes one object's value to whoever needs it; it is a wire message:

- :class:`~cluster.wire.messages.InlineValue` — the pickled value itself, for small objects;
- :class:`~cluster.wire.messages.StoredValue` — the value sits in a node's shared-memory
  store; read it zero-copy on that node, or have the local node daemon copy it.

``metadata`` is ``b""`` for an ordinary value and ``b"E"`` for an exception to raise on get.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

import cloudpickle

from cluster.errors import TaskError
from cluster.objects.refs import collect_outgoing
from cluster.wire.messages import InlineValue

ERROR = b"E"
INLINE_LIMIT = 100 * 1024  # values larger than this go to the shared-memory store


class Serialized:
    """A value split into pickle-5 parts."""

    __slots__ = ("buffers", "inband", "metadata", "refs", "size")

    def __init__(
        self, metadata: bytes, inband: bytes, buffers: list[pickle.PickleBuffer], refs: list = ()
    ) -> None:
        self.metadata = metadata
        self.inband = inband
        self.buffers = buffers
        self.refs = refs  # ObjectRefs pickled inside the value
        self.size = len(inband) + sum(memoryview(b).nbytes for b in buffers)

    def inline_entry(self) -> InlineValue:
        buffers = [memoryview(b).tobytes() for b in self.buffers] if self.buffers else []
        return InlineValue(self.metadata, self.inband, buffers)


def serialize(value: Any, metadata: bytes = b"") -> Serialized:
    buffers: list[pickle.PickleBuffer] = []
    if type(value) in _PLAIN_TYPES:
        # Several times faster than cloudpickle, and these types pickle the same everywhere.
        return Serialized(metadata, pickle.dumps(value, protocol=5), buffers)
    try:
        with collect_outgoing() as refs:
            inband = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        raise _unserializable(value, exc) from exc
    return Serialized(metadata, inband, buffers, refs)


_PLAIN_TYPES = frozenset({type(None), bool, int, float, complex, str, bytes})


def _unserializable(value: Any, exc: Exception, what: str = "a value") -> TypeError:
    return TypeError(
        f"could not serialize {what} of type {type(value).__name__} to send it to the "
        f"cluster: {exc}{where_unpicklable(value)}. Values that hold locks, open files or sockets cannot travel."
    )


def where_unpicklable(value: Any, name: str = "it") -> str:
    """``"; the part that cannot be pickled: it[2].conn (a socket)"``, or "" if none is found.
    Walks containers, object attributes and a function's globals and closure; only called once
    pickling has failed, so its cost does not matter."""
    found = _first_unpicklable(value, name, 0, set())
    if found is None or found[0] == name:
        return ""
    return f"; the part that cannot be pickled: {found[0]} (a {found[1]})"


def captures(fn: Any) -> list[tuple[str, str, Any]]:
    """What function ``fn`` refers to beyond its arguments: ("global" | "captured", name, value)."""
    code, globals_ = fn.__code__, getattr(fn, "__globals__", {})
    found = [("global", name, globals_[name]) for name in code.co_names if name in globals_]
    cells = getattr(fn, "__closure__", None) or ()
    found += [("captured", var, cell.cell_contents) for var, cell in zip(code.co_freevars, cells, strict=False)]
    return found


def _picklable(value: Any) -> bool:
    try:
        cloudpickle.dumps(value, protocol=5)
    except Exception:
        return False
    return True


def _first_unpicklable(value: Any, name: str, depth: int, seen: set[int]) -> tuple[str, str] | None:
    if id(value) in seen or _picklable(value):
        return None
    seen.add(id(value))
    children: list[tuple[str, Any]] = []
    if depth < 8:
        if isinstance(value, dict):
            children = [(f"{name}[{key!r}]", item) for key, item in value.items()]
        elif isinstance(value, list | tuple | set | frozenset):
            children = [(f"{name}[{i}]", item) for i, item in enumerate(value)]
        elif callable(value) and hasattr(value, "__code__"):
            children = [(f"{name}'s {how} {var}", item) for how, var, item in captures(value)]
        elif hasattr(value, "__dict__") and not isinstance(value, type):
            children = [(f"{name}.{attr}", item) for attr, item in vars(value).items()]
    for child_name, child in children:
        found = _first_unpicklable(child, child_name, depth + 1, seen)
        if found is not None:
            return found
    return name, type(value).__qualname__


def serialize_error(exc: BaseException) -> InlineValue:
    """An inline error entry for ``exc`` (which must be picklable, or is replaced)."""
    try:
        return serialize(exc, ERROR).inline_entry()
    except TypeError as problem:

        # A TaskError whose cause cannot travel: keep its traceback (which names the cause's
        # type and message), say why the cause itself is missing, and drop it.
        unpicklable = exc.cause if isinstance(exc, TaskError) and exc.cause is not None else exc
        if isinstance(exc, TaskError):
            text = exc.traceback_str.rstrip()
        else:
            text = f"{type(exc).__name__}: {exc}"
        reason = problem.__cause__ or problem
        text += (f"\n({type(unpicklable).__name__} could not be pickled to reach the caller, so it is "
                 f"raised as a TaskError: {reason})")
        fallback = TaskError(getattr(exc, "function_name", "task"), text, None)
        return serialize(fallback, ERROR).inline_entry()


def loads(metadata: bytes, inband: Any, buffers: Sequence[Any]) -> Any:
    value = pickle.loads(inband, buffers=buffers)
    if metadata == ERROR:
        raise value
    return value


class Dep:
    """Marks where a top-level ObjectRef argument goes; replaced by its value on the worker."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> Any:
        return (Dep, (self.index,))


def fill_deps(args: tuple, kwargs: dict, values: list) -> tuple[tuple, dict]:
    if values:
        args = tuple(values[a.index] if type(a) is Dep else a for a in args)
        kwargs = {k: values[v.index] if type(v) is Dep else v for k, v in kwargs.items()}
    return args, kwargs


EMPTY_ARGS = cloudpickle.dumps(((), {}), protocol=5)
