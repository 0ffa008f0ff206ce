"""An in-process object store with :class:`~cluster_store.ObjectStore`'s API.

For processes that do not need to share objects with others on the node, or
cannot (a container whose /dev/shm is a few megabytes): each object is a block
of this process's memory (a ``bytearray``, or a private anonymous mapping for
large ones) holding the same bytes as the shared store's object file, starting
64-byte aligned, so ``open_raw``/``create_raw`` transfers work between the two
kinds of store.  Reads are zero-copy read-only memoryviews into it.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import mmap
import os
import pathlib
import pickle
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, ClassVar

from cluster_store._common import (
    RawWriter,
    StoredObject,
    StoreStats,
    check_capacity,
    check_raw_size,
    object_name,
    split_object,
    write_plan,
)
from cluster_store._format import BUFFER_ALIGNMENT, HeaderError, parse_header
from cluster_store.errors import CorruptObjectError, ObjectStoreFullError, StoreError
from cluster_store.spill import (
    DirectorySpillTarget,
    SpillTarget,
    corrupt_spilled_copy,
    spill_target_from,
)

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

__all__ = ["MemoryStore"]


#: Objects at least this big get a private anonymous mapping of their own instead of a
#: bytearray: a bytearray is zero-filled page by page up front, while a mapping's pages
#: arrive zeroed on first write, with transparent huge pages where the kernel allows
#: (over 4x faster to fill a 100 MiB object here).  Smaller ones stay in bytearrays so
#: that many small objects do not use up the process's limit of mappings.
_MAPPED_MIN_BYTES = 1 << 20
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


def _new_memory(size: int) -> memoryview:
    """Return ``size`` writable zeroed bytes, starting at a BUFFER_ALIGNMENT boundary.

    The object format aligns each buffer to BUFFER_ALIGNMENT within the object,
    so the object itself must start aligned for numpy arrays read from it to be.
    """
    if size >= _MAPPED_MIN_BYTES and hasattr(mmap, "MAP_PRIVATE"):
        mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)  # page aligned
        if _MADV_HUGEPAGE is not None:
            with contextlib.suppress(OSError):
                mapping.madvise(_MADV_HUGEPAGE)
        return memoryview(mapping)
    raw = bytearray(size + BUFFER_ALIGNMENT - 1)
    address = ctypes.addressof(ctypes.c_char.from_buffer(raw))
    start = -address % BUFFER_ALIGNMENT
    return memoryview(raw)[start : start + size]


class _MemoryFile(io.RawIOBase, BinaryIO):
    """A binary file over one object's memory: how a spill target sees an in-process object.

    Readable (to spill it) or writable (to restore it into freshly allocated
    memory, which it cannot grow past).  ``getbuffer()`` returns the memory
    itself, as ``io.BytesIO``'s does, so a target can copy straight from or into
    it; the store's own :class:`~cluster_store.DirectorySpillTarget` does.
    """

    def __init__(self, data: memoryview, *, writable: bool) -> None:
        super().__init__()
        self._data = data if writable else data.toreadonly()
        self._writable = writable
        self._position = 0

    def readable(self) -> bool:
        return not self._writable

    def writable(self) -> bool:
        return self._writable

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._data.nbytes}
        if whence not in base or base[whence] + offset < 0:
            raise ValueError(f"invalid seek to {offset} from {whence}")
        self._position = base[whence] + offset
        return self._position

    def getbuffer(self) -> memoryview:
        return self._data[:]

    def readinto(self, buffer: WriteableBuffer) -> int:
        if self._writable:
            raise io.UnsupportedOperation("this object file is open for writing")
        start = min(self._position, self._data.nbytes)
        with memoryview(buffer).cast("B") as into:
            count = min(into.nbytes, self._data.nbytes - start)
            into[:count] = self._data[start : start + count]
        self._position = start + count
        return count

    def write(self, data: ReadableBuffer) -> int:
        if not self._writable:
            raise io.UnsupportedOperation("this object file is open for reading")
        with memoryview(data).cast("B") as chunk:
            end = self._position + chunk.nbytes
            if end > self._data.nbytes:
                raise ValueError(
                    f"the spill target returned more than the {self._data.nbytes} bytes "
                    "that were spilled for this object"
                )
            self._data[self._position : end] = chunk
        written, self._position = end - self._position, end
        return written


@dataclass(slots=True)
class _Object:
    data: memoryview  # writable, exactly the object file's bytes (in a bytearray or a mapping)
    secondary: bool


class MemoryStore:
    """Sealed, immutable objects in this process's own memory; thread-safe.

    Same API and semantics as :class:`~cluster_store.ObjectStore` (capacity,
    secondary copies evicted first, LRU spilling to a spill target,
    :class:`~cluster_store.ObjectStoreFullError`), except that no other process
    sees the objects (``shared`` is False).
    """

    #: Objects live in this process only; other processes of the node do not see them.
    shared: ClassVar[bool] = False
    #: There is no store directory.
    path: ClassVar[None] = None

    capacity_bytes: int | None
    #: Where objects spill when room is needed; None: spilling is off.
    spill_target: SpillTarget | None
    #: The directory of a :class:`DirectorySpillTarget` (what ``spill_dir=`` builds), else None.
    spill_dir: pathlib.Path | None

    def __init__(
        self,
        *,
        capacity_bytes: int | None = None,
        spill_dir: str | os.PathLike[str] | None = None,
        spill_target: SpillTarget | None = None,
    ) -> None:
        """Create an empty store holding at most ``capacity_bytes`` (None: only RAM limits it).

        With a ``spill_target`` of its own (no other store may use it), a write
        that would overflow the capacity first moves the least recently used
        objects there; reading a spilled object brings it back.
        ``spill_dir=path`` (a directory of its own, on disk) is short for
        ``spill_target=DirectorySpillTarget(path)``; pass one or the other.
        Writers in different threads reserve their room before copying, so the
        capacity is never overshot.
        """
        check_capacity(capacity_bytes)
        self.capacity_bytes = capacity_bytes
        self.spill_target = spill_target_from(spill_dir, spill_target, create=True)
        self.spill_dir = (
            self.spill_target.path if isinstance(self.spill_target, DirectorySpillTarget) else None
        )
        self._lock = threading.Lock()
        self._objects: OrderedDict[bytes, _Object] = OrderedDict()  # least recently used first
        self._spilled: dict[bytes, int] = {}  # object id -> size, of objects in the spill target
        self._used = 0  # bytes of the objects in memory
        self._reserved = 0  # bytes promised to writers that are still copying
        self._destroyed = False

    def __repr__(self) -> str:
        return (
            f"MemoryStore(capacity_bytes={self.capacity_bytes!r}, "
            f"spill_target={self.spill_target!r})"
        )

    def __contains__(self, object_id: bytes) -> bool:
        return self.contains(object_id)

    # ------------------------------------------------------------------ writing

    def put(
        self,
        object_id: bytes,
        metadata: bytes,
        inband: bytes | memoryview,
        buffers: Sequence[bytes | memoryview | pickle.PickleBuffer] = (),
    ) -> int:
        """Copy and seal an object; return its size (existing objects are left as they are).

        Each buffer is copied exactly once into the object's memory.  Raises
        :class:`ObjectStoreFullError` if the object does not fit.  A put over a
        secondary copy of the object makes it primary.
        """
        object_name(object_id)
        with self._lock:
            found = self._objects.get(object_id)
            if found is not None:
                found.secondary = False  # same bytes, now a primary copy
                return len(found.data)
            if object_id in self._spilled:
                return self._spilled[object_id]
        size, chunks = write_plan(metadata, inband, buffers)
        data = self._allocate(object_id, size)
        try:
            position = 0
            for chunk in chunks:
                data[position : position + chunk.nbytes] = chunk
                position += chunk.nbytes
        except BaseException:
            with self._lock:
                self._reserved -= size
            raise
        return self._seal(object_id, data, secondary=False)

    def create_raw(self, object_id: bytes, size: int, *, secondary: bool = False) -> RawWriter:
        """Start receiving a complete object file of ``size`` bytes (e.g. from another node).

        Fill all of ``writer.view`` with the exact bytes of a sealed object file
        (as :meth:`open_raw` of either kind of store returns them), then call
        ``writer.seal()``.  ``secondary=True`` marks a cache copy of an object
        whose primary copy lives elsewhere, as in
        :meth:`ObjectStore.create_raw <cluster_store.ObjectStore.create_raw>`.
        """
        object_name(object_id)
        check_raw_size(size)
        data = self._allocate(object_id, size)
        # The writer gets a view of its own: it releases it on seal, the store keeps ``data``.
        return RawWriter(object_id, memoryview(data), _MemorySink(self, object_id, data, secondary))

    # ------------------------------------------------------------------ reading

    def get(self, object_id: bytes) -> StoredObject | None:
        """Return the sealed object as zero-copy read-only views, or None if absent."""
        view = self._view(object_id)
        if view is None:
            return None
        try:
            return split_object(object_id, view)
        except HeaderError as exc:
            raise self._corrupt(object_id, str(exc))

    def open_raw(self, object_id: bytes) -> memoryview | None:
        """Return the whole object file as a read-only memoryview (None if absent), for streaming."""
        view = self._view(object_id)
        if view is None:
            return None
        try:
            parse_header(view, view.nbytes)
        except HeaderError as exc:
            raise self._corrupt(object_id, str(exc))
        return view

    def contains(self, object_id: bytes) -> bool:
        """Return True if the object is sealed in this store (in memory or spilled)."""
        return self.size_of(object_id) is not None

    def size_of(self, object_id: bytes) -> int | None:
        """Return the size of a sealed object, or None if absent."""
        object_name(object_id)
        with self._lock:
            found = self._objects.get(object_id)
            if found is not None:
                return len(found.data)
            return self._spilled.get(object_id)

    def is_secondary(self, object_id: bytes) -> bool:
        """Return True if the object is held here as a secondary copy (False if primary or absent)."""
        object_name(object_id)
        with self._lock:
            found = self._objects.get(object_id)
            return found is not None and found.secondary

    def object_ids(self) -> list[bytes]:
        """Return the ids of all sealed objects in memory (spilled ones excluded)."""
        with self._lock:
            return list(self._objects)

    def used_bytes(self) -> int:
        """Return the total size of the sealed objects in memory."""
        with self._lock:
            return self._used

    def usage(self) -> tuple[int, int]:
        """(number of objects, bytes) sealed in memory."""
        with self._lock:
            return len(self._objects), self._used

    def spilled(self) -> tuple[int, int]:
        """(number of objects, bytes) currently spilled to the spill target."""
        with self._lock:
            return len(self._spilled), sum(self._spilled.values())

    def stats(self) -> StoreStats:
        """Objects and bytes held: all, secondary copies, and spilled."""
        with self._lock:
            secondary = [len(found.data) for found in self._objects.values() if found.secondary]
            return StoreStats(
                objects=len(self._objects),
                bytes=self._used,
                secondary_objects=len(secondary),
                secondary_bytes=sum(secondary),
                spilled_objects=len(self._spilled),
                spilled_bytes=sum(self._spilled.values()),
                pooled_files=0,
                pooled_bytes=0,
                capacity_bytes=self.capacity_bytes,
            )

    # ------------------------------------------------------------------ removal

    def delete(self, object_id: bytes) -> bool:
        """Remove an object; return True if it existed. Existing views stay readable."""
        name = object_name(object_id)
        with self._lock:
            found = self._objects.pop(object_id, None)
            if found is not None:
                self._used -= len(found.data)
            spilled = self._spilled.pop(object_id, None)
            if spilled is not None and self.spill_target is not None:
                self.spill_target.delete(name)
        return found is not None or spilled is not None

    def destroy(self) -> None:
        """Drop every object, spilled ones too; later writes raise :class:`StoreError`."""
        with self._lock:
            self._destroyed = True
            self._objects.clear()
            self._spilled.clear()
            self._used = 0
            if self.spill_target is not None:
                self.spill_target.destroy()

    def remove_stale_temp_files(self) -> int:
        """Nothing to do: no other process writes into this store. Returns 0."""
        return 0

    # ------------------------------------------------------------------ internals

    def _allocate(self, object_id: bytes, size: int) -> memoryview:
        """Reserve room for ``size`` bytes and return the zeroed memory for them."""
        with self._lock:
            self._check_open()
            self._make_room(object_id, size)
            self._reserved += size
        try:
            return _new_memory(size)
        except BaseException:
            with self._lock:
                self._reserved -= size
            raise

    def _seal(self, object_id: bytes, data: memoryview, *, secondary: bool) -> int:
        """Publish a fully written object, unless a copy that outranks it is there; return its size."""
        size = len(data)
        with self._lock:
            self._reserved -= size
            self._check_open()
            found = self._objects.get(object_id)
            if found is not None:
                if not secondary:
                    found.secondary = False  # same bytes: a primary copy now
                return len(found.data)
            if object_id in self._spilled:
                return self._spilled[object_id]
            self._objects[object_id] = _Object(data, secondary)
            self._used += size
        return size

    def _view(self, object_id: bytes) -> memoryview | None:
        """A read-only view of the object's memory, restoring it from disk if spilled; None if absent."""
        object_name(object_id)
        with self._lock:
            found = self._objects.get(object_id)
            if found is not None:
                self._objects.move_to_end(object_id)  # most recently used
            elif object_id in self._spilled:
                found = self._restore(object_id)
            if found is None:
                return None
            data = found.data
        return memoryview(data).toreadonly()

    def _make_room(self, object_id: bytes, size: int) -> None:
        """Ensure ``size`` more bytes fit (lock held): drop LRU secondary copies, then spill LRU objects."""
        capacity = self.capacity_bytes
        if capacity is None:
            return
        used = self._used + self._reserved
        if used + size <= capacity:
            return
        if size <= capacity:
            # Secondary copies are dropped, least recently used first (views keep their bytes).
            for victim in [oid for oid, found in self._objects.items() if found.secondary]:
                if used + size <= capacity:
                    break
                freed = len(self._objects.pop(victim).data)
                self._used -= freed
                used -= freed
            if self.spill_target is not None:
                for victim in list(self._objects):
                    if used + size <= capacity:
                        break
                    used -= self._spill_one(victim)
        if used + size <= capacity:
            return
        if size > capacity:
            reason = "the object alone is larger than the capacity"
        elif self.spill_target is None:
            reason = "spilling is off"
        else:
            reason = f"nothing more could be spilled to the {self.spill_target.description}"
        raise ObjectStoreFullError(
            f"In-process object store is full: object {object_id.hex()} needs {size} bytes "
            f"but {used} of its {capacity} bytes capacity are in use "
            f"({max(capacity - used, 0)} free; {reason}). Give the MemoryStore a larger "
            "capacity_bytes, or free space by dropping references to objects that are no "
            "longer needed.",
            object_id=object_id,
            object_size=size,
            used_bytes=used,
            capacity_bytes=capacity,
        )

    def _spill_one(self, object_id: bytes) -> int:
        """Write a primary object to the spill target and drop it from memory (lock held); return its size."""
        target = self.spill_target
        assert target is not None
        data = self._objects[object_id].data
        try:
            with _MemoryFile(data, writable=False) as source:
                target.write(object_id.hex(), source, len(data))
        except BaseException as exc:
            exc.add_note(f"(while spilling object {object_id.hex()} to the {target.description})")
            raise
        del self._objects[object_id]
        self._used -= len(data)
        self._spilled[object_id] = len(data)
        return len(data)

    def _restore(self, object_id: bytes) -> _Object | None:
        """Bring a spilled object back into memory (lock held); None if its spilled copy vanished."""
        target = self.spill_target
        assert target is not None
        name = object_id.hex()
        size = self._spilled[object_id]
        self._make_room(object_id, size)
        data = _new_memory(size)
        try:
            with _MemoryFile(data, writable=True) as dest:
                found = target.read_into(name, dest)
                read = dest.tell()
        except BaseException as exc:
            exc.add_note(f"(while restoring object {name} from the {target.description})")
            raise
        if not found:
            del self._spilled[object_id]
            return None
        try:
            if read != size:
                raise HeaderError(f"it has {read} bytes, not {size}")
            parse_header(data, size)
        except HeaderError as exc:
            raise corrupt_spilled_copy(name, target, str(exc), f"<memory>/{name}")
        target.delete(name)
        del self._spilled[object_id]
        restored = self._objects[object_id] = _Object(data, secondary=False)
        self._used += size
        return restored

    def _check_open(self) -> None:
        if self._destroyed:
            raise StoreError(
                "This MemoryStore was destroyed; create a new MemoryStore to store objects again."
            )

    def _corrupt(self, object_id: bytes, reason: str) -> CorruptObjectError:
        return CorruptObjectError(
            f"In-process object {object_id.hex()} is corrupt: {reason}. Delete the object "
            "(MemoryStore.delete) and store it again; nothing but a RawWriter view kept after "
            "seal() can change an object's memory, so check for one.",
            path=f"<memory>/{object_id.hex()}",
        )


class _MemorySink:
    """Where a :class:`MemoryStore` raw writer's bytes go: reserved memory of the store."""

    def __init__(
        self, store: MemoryStore, object_id: bytes, data: memoryview, secondary: bool
    ) -> None:
        self.location = f"<memory>/{object_id.hex()}"
        self._store = store
        self._object_id = object_id
        self._data: memoryview | None = data
        self._secondary = secondary

    def publish(self) -> None:
        data, self._data = self._data, None
        if data is not None:
            self._store._seal(self._object_id, data, secondary=self._secondary)

    def discard(self) -> None:
        data, self._data = self._data, None
        if data is not None:
            with self._store._lock:
                self._store._reserved -= len(data)
