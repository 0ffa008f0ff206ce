"""Exceptions raised by the shared-memory object store."""

from __future__ import annotations

__all__ = [
    "CorruptObjectError",
    "ObjectNotFoundError",
    "ObjectStoreFullError",
    "StoreError",
]


class StoreError(Exception):
    """Base class for every error raised by ``cluster_store``."""


class ObjectStoreFullError(StoreError):
    """Raised when storing an object would exceed the store's capacity.

    Attributes carry the numbers so callers can decide to evict and retry:
    ``capacity_bytes`` (``None`` when the limit is the filesystem itself),
    ``object_size`` and ``used_bytes``.
    """

    def __init__(
        self,
        message: str,
        *,
        object_id: bytes,
        object_size: int,
        used_bytes: int,
        capacity_bytes: int | None,
    ) -> None:
        super().__init__(message)
        self.object_id = object_id
        self.object_size = object_size
        self.used_bytes = used_bytes
        self.capacity_bytes = capacity_bytes


class ObjectNotFoundError(StoreError, LookupError):
    """Raised when an object that must exist is not in the store."""

    def __init__(self, message: str, *, object_id: bytes) -> None:
        super().__init__(message)
        self.object_id = object_id


class CorruptObjectError(StoreError):
    """Raised when an object file does not parse as a valid sealed object."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path
