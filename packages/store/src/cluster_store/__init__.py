"""Object stores for cluster: sealed immutable objects, zero-copy reads.

:class:`ObjectStore` is a directory (normally under /dev/shm) holding one file
per object, which any process on the node can read through ``mmap`` without
copying it.  :class:`MemoryStore` has the same API but keeps the objects in the
process's own memory, for processes that need not share them.  The class
attribute ``shared`` tells the two apart.  Either spills its least recently
used objects to a :class:`SpillTarget` when full (:class:`DirectorySpillTarget`
for a directory on disk) and brings them back when they are read.
"""

from cluster_store._common import StoreStats
from cluster_store.errors import (
    CorruptObjectError,
    ObjectNotFoundError,
    ObjectStoreFullError,
    StoreError,
)
from cluster_store.memory import MemoryStore
from cluster_store.spill import DirectorySpillTarget, SpillTarget
from cluster_store.store import ObjectStore, RawWriter, StoredObject, default_store_root

__all__ = [
    "CorruptObjectError",
    "DirectorySpillTarget",
    "MemoryStore",
    "ObjectNotFoundError",
    "ObjectStore",
    "ObjectStoreFullError",
    "RawWriter",
    "SpillTarget",
    "StoreError",
    "StoreStats",
    "StoredObject",
    "default_store_root",
]
