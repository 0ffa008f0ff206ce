"""Pieces both stores share: object ids, write plans, the object view, raw writers, stats."""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from cluster_store._format import FIXED_HEADER_SIZE, HeaderError, parse_header, plan_layout
from cluster_store.errors import CorruptObjectError, StoreError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

MAX_OBJECT_ID_BYTES = 64
#: What object ids are stored under: their lowercase hex and nothing else (files that
#: are being written or are claimed start with a dot, so they can never match).
OBJECT_NAME = re.compile(rf"(?:[0-9a-f]{{2}}){{1,{MAX_OBJECT_ID_BYTES}}}")

_ZEROS = memoryview(bytes(64))


def object_name(object_id: bytes) -> str:
    """Validate an object id and return the name it is stored under (its lowercase hex)."""
    if not isinstance(object_id, bytes):
        raise TypeError(
            f"object_id must be bytes, got {type(object_id).__name__}; "
            "convert it with bytes(...) first"
        )
    if not 0 < len(object_id) <= MAX_OBJECT_ID_BYTES:
        raise ValueError(
            f"object_id must be between 1 and {MAX_OBJECT_ID_BYTES} bytes long, "
            f"got {len(object_id)} bytes"
        )
    return object_id.hex()


def pid_alive(pid: int) -> bool:
    """Return True if process ``pid`` exists (whoever it belongs to)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to someone else
        return True
    return True


def make_private_dir(path: str, cannot: str, instead: str) -> None:
    """Create ``path`` (mode 0o700) unless it exists; a file in the way is a clear StoreError."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except FileExistsError:
        raise StoreError(f"{cannot} {path}: a file with that name exists. Remove it or choose {instead}.") from None


def check_raw_size(size: int) -> None:
    """Reject a ``create_raw`` size that cannot be a sealed object file."""
    if isinstance(size, bool) or not isinstance(size, int) or size < FIXED_HEADER_SIZE:
        raise ValueError(
            f"size must be the byte size of a sealed object file (at least "
            f"{FIXED_HEADER_SIZE} bytes), got {size!r}"
        )


def check_capacity(capacity_bytes: int | None) -> None:
    """Reject a capacity that is neither None nor a non-negative int."""
    if capacity_bytes is not None and (
        isinstance(capacity_bytes, bool)
        or not isinstance(capacity_bytes, int)
        or capacity_bytes < 0
    ):
        raise ValueError(
            f"capacity_bytes must be a non-negative int or None, got {capacity_bytes!r}"
        )


def byte_view(obj: ReadableBuffer, what: str) -> memoryview:
    """Return a flat unsigned-byte memoryview over ``obj`` without copying it."""
    try:
        pickle_buffer = obj if isinstance(obj, pickle.PickleBuffer) else pickle.PickleBuffer(obj)
        return pickle_buffer.raw()
    except TypeError:
        raise TypeError(
            f"{what} must be a bytes-like object (bytes, memoryview, pickle.PickleBuffer, ...), "
            f"got {type(obj).__name__}"
        )
    except BufferError:
        raise ValueError(
            f"{what} is not a contiguous buffer; make it contiguous first "
            "(e.g. numpy.ascontiguousarray) before storing it"
        )


def write_plan(
    metadata: ReadableBuffer, inband: ReadableBuffer, buffers: Sequence[ReadableBuffer]
) -> tuple[int, list[memoryview]]:
    """Return the size of the object file for these parts and the chunks that fill it, in order.

    The chunks (header, metadata, inband, then each buffer preceded by its
    alignment padding) laid back to back from offset 0 cover every byte of the
    file exactly once.
    """
    metadata_view = byte_view(metadata, "metadata")
    inband_view = byte_view(inband, "inband")
    buffer_views = [byte_view(buf, f"buffer {i}") for i, buf in enumerate(buffers)]
    layout = plan_layout(
        metadata_view.nbytes, inband_view.nbytes, [view.nbytes for view in buffer_views]
    )
    chunks = [memoryview(layout.pack_header()), metadata_view, inband_view]
    position = layout.inband_offset + layout.inband_length
    for (offset, length), view in zip(layout.buffers, buffer_views, strict=True):
        if offset > position:
            chunks.append(_ZEROS[: offset - position])
        chunks.append(view)
        position = offset + length
    return layout.total_size, chunks


@dataclass(frozen=True, slots=True, eq=False)
class StoredObject:
    """A sealed object read from the store; its views point straight into the store's memory.

    ``inband`` and ``buffers`` are read-only memoryviews over the object's
    memory (a shared mapping for :class:`~cluster_store.ObjectStore`, the
    process's own memory for :class:`~cluster_store.MemoryStore`).  That memory
    stays alive for as long as any of these views (or anything built on them,
    such as a numpy array from ``pickle.loads``) is alive, even if the object is
    deleted from the store meanwhile.
    """

    object_id: bytes
    metadata: bytes
    inband: memoryview
    buffers: list[memoryview]
    size: int


def split_object(object_id: bytes, view: memoryview) -> StoredObject:
    """Cut a whole object file into its parts (views, no copies).

    Raises :class:`HeaderError` if the bytes are not a valid object file;
    callers turn that into a :class:`CorruptObjectError` that names the object.
    """
    size = view.nbytes
    layout = parse_header(view, size)
    moff, mlen = layout.metadata_offset, layout.metadata_length
    ioff, ilen = layout.inband_offset, layout.inband_length
    return StoredObject(
        object_id=object_id,
        metadata=bytes(view[moff : moff + mlen]),
        inband=view[ioff : ioff + ilen],
        buffers=[view[offset : offset + length] for offset, length in layout.buffers],
        size=size,
    )


@dataclass(frozen=True, slots=True)
class StoreStats:
    """What a store holds, from one look at it.

    ``objects``/``bytes`` count every sealed object in memory, primary and
    secondary copies alike (the figures :meth:`~cluster_store.ObjectStore.usage`
    returns); ``secondary_objects``/``secondary_bytes`` are the part of them
    that are evictable copies of objects whose primary copy lives elsewhere.
    ``spilled_*`` are objects moved to the spill directory.  ``pooled_*`` are
    freed files kept for reuse by later writes: they take memory and count
    toward the capacity, but are the first thing dropped when room is needed.
    """

    objects: int
    bytes: int
    secondary_objects: int
    secondary_bytes: int
    spilled_objects: int
    spilled_bytes: int
    pooled_files: int
    pooled_bytes: int
    capacity_bytes: int | None


class RawSink(Protocol):
    """Where a :class:`RawWriter`'s bytes go: a store-specific back end."""

    #: Names the destination in error messages (a file path, or a pseudo-path).
    location: str

    def publish(self) -> None:
        """Make the fully written object visible in the store."""

    def discard(self) -> None:
        """Drop the data; must be safe to call more than once."""


class RawWriter:
    """Receives the bytes of a whole object file into the store's memory, then seals it.

    ``view`` is a writable memoryview of exactly ``size`` bytes; fill all of it
    (e.g. with ``sock.recv_into(writer.view[offset:])``) and call :meth:`seal`.
    Its initial contents are unspecified (the store may reuse a freed file), so
    every byte must be written.  Used as a context manager the writer is aborted
    when the block raises or ends without :meth:`seal` having been called.
    """

    view: memoryview

    def __init__(self, object_id: bytes, view: memoryview, sink: RawSink) -> None:
        """Wrap a writable view; use the store's ``create_raw`` instead of calling this."""
        self.object_id = object_id
        self.size = view.nbytes
        self.view = view
        self._sink = sink
        self._state = "open"
        # If the writer is dropped without seal()/abort(), still release its memory.
        self._cleanup = weakref.finalize(self, sink.discard)

    def __repr__(self) -> str:
        return f"<RawWriter {self.object_id.hex()} size={self.size} {self._state}>"

    @property
    def sealed(self) -> bool:
        """True once :meth:`seal` has published the object."""
        return self._state == "sealed"

    def seal(self) -> None:
        """Validate the received header and atomically publish the object.

        Raises :class:`CorruptObjectError` (and discards the data) if the bytes
        do not form a valid object file of this size.  If the object already
        exists in the store, the received copy is discarded.
        """
        if self._state != "open":
            raise StoreError(
                f"RawWriter for object {self.object_id.hex()} is already {self._state}; "
                "create a new writer with the store's create_raw to receive it again."
            )
        try:
            parse_header(self.view, self.size)
        except HeaderError as exc:
            self.abort()
            raise CorruptObjectError(
                f"The {self.size} bytes received for object {self.object_id.hex()} do not form "
                f"a valid object file: {exc}. The data was discarded; transfer the object "
                "again from a node that holds it (send the bytes of the store's open_raw).",
                path=self._sink.location,
            )
        self._release_view()
        try:
            self._sink.publish()
        except BaseException:
            self._state = "aborted"
            self._sink.discard()
            self._cleanup.detach()
            raise
        self._cleanup.detach()
        self._state = "sealed"

    def abort(self) -> None:
        """Discard the received data. Does nothing if already sealed or aborted."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._release_view()
        self._sink.discard()
        self._cleanup.detach()

    def _release_view(self) -> None:
        # Slices of ``view`` that the caller still holds keep the memory
        # exported; it is then freed when the last of them goes away.
        with contextlib.suppress(BufferError):
            self.view.release()

    def __enter__(self) -> RawWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()
