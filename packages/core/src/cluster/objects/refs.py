"""ObjectRef: a reference to a value in the cluster, owned by the process that made it.

Reference counting (DESIGN.md §5): each process counts its live ``ObjectRef`` instances per
object. An ObjectRef that is pickled into a task's arguments, a ``put`` value or a return value
is *collected* on the way out, so the runtime can keep the object alive for as long as the
container lives; one unpickled in another process makes that process a *borrower*, which
registers with the owner before it uses the ref and tells the owner when it drops it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

_runtime: Any = None  # the process's Runtime, set by cluster.owner.runtime while one is running
_local = threading.local()  # .outgoing / .incoming: lists of refs (de)serialized in a scope


class ObjectRef:
    """A reference to an object: a task's return value or a ``cluster.put`` value.

    Pass it to other tasks (it is resolved to its value when it is a direct argument) or
    fetch its value with ``cluster.get``. It is cheap to copy and hashable.
    """

    __slots__ = ("__weakref__", "_id", "_owner")

    def __init__(self, object_id: bytes, owner: str) -> None:
        self._id = object_id
        self._owner = owner
        if _runtime is not None:
            _runtime.add_local_ref(object_id)

    @property
    def id(self) -> bytes:
        return self._id

    @property
    def owner(self) -> str:
        """Address of the process that owns the object."""
        return self._owner

    def hex(self) -> str:
        return self._id.hex()

    def binary(self) -> bytes:
        """The object id's bytes (Ray's ``ObjectRef.binary()``)."""
        return self._id

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def future(self) -> concurrent.futures.Future:
        """A ``concurrent.futures.Future`` of the value (Ray's ``ObjectRef.future()``): it
        completes, or raises the task's error, as ``get`` would; nothing blocks meanwhile."""
        if _runtime is None:
            raise RuntimeError("ObjectRef.future() needs cluster.init() first")
        future: concurrent.futures.Future = _runtime.future(self)
        return future

    def __await__(self) -> Any:
        """``await ref`` in async code (a driver's, an async actor's): the value, as ``get``."""
        return asyncio.wrap_future(self.future()).__await__()

    def __copy__(self) -> ObjectRef:
        return ObjectRef(self._id, self._owner)

    def __deepcopy__(self, memo: dict) -> ObjectRef:
        return ObjectRef(self._id, self._owner)

    def __reduce__(self) -> Any:
        outgoing = getattr(_local, "outgoing", None)
        if outgoing is not None:
            outgoing.append(self)  # the runtime keeps it alive with its container
        elif _runtime is not None:
            # Pickled by someone else, to somewhere we cannot follow: never free it.
            _runtime.mark_escaped(self._id, self._owner)
        return (_rebuild_ref, (self._id, self._owner))

    def __del__(self) -> None:
        runtime = _runtime
        if runtime is not None:
            try:
                runtime.remove_local_ref(self._id)
            except Exception:  # interpreter shutdown
                pass


def _rebuild_ref(object_id: bytes, owner: str) -> ObjectRef:
    ref = ObjectRef(object_id, owner)
    runtime = _runtime
    if runtime is not None and owner != runtime.address:
        incoming = getattr(_local, "incoming", None)
        if incoming is not None:
            incoming.append(ref)  # registered with its owner when the whole value is loaded
        else:
            runtime.register_borrowed([ref])
    return ref


class _Collect:
    """``with collect_outgoing() as refs:`` / ``with collect_incoming() as refs:`` — the
    ObjectRefs pickled out of (borrowed refs unpickled into) this thread inside the block."""

    __slots__ = ("direction", "previous", "refs")

    def __init__(self, direction: str) -> None:
        self.direction = direction

    def __enter__(self) -> list:
        self.previous = getattr(_local, self.direction, None)
        self.refs: list = []
        setattr(_local, self.direction, self.refs)
        return self.refs

    def __exit__(self, *exc: object) -> None:
        setattr(_local, self.direction, self.previous)


def collect_outgoing() -> _Collect:
    return _Collect("outgoing")


def collect_incoming() -> _Collect:
    return _Collect("incoming")


class DynamicObjectRefGenerator:
    """The value of a ``num_returns="dynamic"`` task (Ray's): the refs of the values it yielded,
    in order. Iterate over it (or ``len()`` it); it travels like any value holding refs."""

    __slots__ = ("_refs",)

    def __init__(self, refs: list[ObjectRef]) -> None:
        self._refs = list(refs)

    def __iter__(self) -> Any:
        return iter(self._refs)

    def __len__(self) -> int:
        return len(self._refs)

    def __repr__(self) -> str:
        return f"DynamicObjectRefGenerator({len(self._refs)} refs)"

    def __reduce__(self) -> Any:
        return (DynamicObjectRefGenerator, (self._refs,))
