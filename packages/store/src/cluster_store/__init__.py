"""Shared-memory object store for cluster: sealed immutable objects, zero-copy reads.

One store is a directory (normally under /dev/shm) holding one file per
object.  Any process on the node can read an object through ``mmap`` without
copying it; see :class:`ObjectStore`.
"""

from cluster_store.errors import (
    CorruptObjectError,
    ObjectNotFoundError,
    ObjectStoreFullError,
    StoreError,
)
from cluster_store.store import ObjectStore, RawWriter, StoredObject, default_store_root

__all__ = [
    "CorruptObjectError",
    "ObjectNotFoundError",
    "ObjectStore",
    "ObjectStoreFullError",
    "RawWriter",
    "StoreError",
    "StoredObject",
    "default_store_root",
]
