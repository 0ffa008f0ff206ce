"""ObjectRef: a reference to a value in the cluster, owned by the process that made it."""

from __future__ import annotations

from typing import Any

_runtime: Any = None  # the process's Runtime, set by cluster.runtime while one is running


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

    def __repr__(self) -> str:
        return f"ObjectRef({self._id.hex()})"

    def __hash__(self) -> int:
        return hash(self._id)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectRef) and other._id == self._id

    def __reduce__(self) -> Any:
        if _runtime is not None:
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
    return ObjectRef(object_id, owner)
