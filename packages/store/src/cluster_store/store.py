"""Per-node shared-memory object store: one immutable file per object, zero-copy reads.

Writers build each object in a private temporary file inside the store
directory and publish it atomically with a hard link (``link(2)`` refuses to
replace an existing name, so the first writer of an object id wins and a sealed
file never changes).  Readers ``mmap`` the sealed file read-only and hand out
memoryviews into the mapping, so no byte is copied on the read path.

Many processes may share one directory without a daemon or cross-process
locks: temporary names are created with ``O_EXCL`` and objects appear only
through the atomic link (or ``rename`` on filesystems without hard links).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import pathlib
import pickle
import re
import secrets
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from cluster_store._format import FIXED_HEADER_SIZE, HeaderError, parse_header, plan_layout
from cluster_store.errors import CorruptObjectError, ObjectStoreFullError, StoreError

__all__ = ["ObjectStore", "RawWriter", "StoredObject", "default_store_root"]

MAX_OBJECT_ID_BYTES = 64

_TEMP_PREFIX = ".tmp-"
_SPILL_PREFIX = ".spilling-"
# Sealed object files are named by the lowercase hex of the object id and
# nothing else; temporary files start with a dot so they can never match.
_OBJECT_NAME = re.compile(rf"(?:[0-9a-f]{{2}}){{1,{MAX_OBJECT_ID_BYTES}}}")
_TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]+-(\d+)-[0-9a-f]+")

_ZEROS = memoryview(bytes(64))
try:
    _IOV_MAX = max(1, min(os.sysconf("SC_IOV_MAX"), 1024))
except (AttributeError, ValueError, OSError):
    _IOV_MAX = 16
_OPEN_FLAGS_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_OPEN_FLAGS_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
# Before Python 3.13 every mmap object keeps a dup() of the file descriptor
# open for its whole life; from 3.13 on we can ask it not to.
_MMAP_KWARGS: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}
# errno values of link(2) meaning "this filesystem does not do hard links".
_NO_HARDLINK_ERRNOS = frozenset(
    code
    for code in (
        errno.EPERM,
        errno.EMLINK,
        getattr(errno, "ENOTSUP", None),
        getattr(errno, "EOPNOTSUPP", None),
        getattr(errno, "ENOSYS", None),
    )
    if code is not None
)


def default_store_root() -> pathlib.Path:
    """Return the directory under which stores should live: /dev/shm if usable, else the temp dir."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return pathlib.Path(shm)
    return pathlib.Path(tempfile.gettempdir())


def _object_name(object_id: bytes) -> str:
    """Validate an object id and return the file name it is stored under."""
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


def _byte_view(obj: Any, what: str) -> memoryview:
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


def _pwrite_all(fd: int, chunks: list[memoryview]) -> None:
    """Write ``chunks`` back to back from offset 0, copying each byte exactly once."""
    pending = [chunk for chunk in chunks if chunk.nbytes]
    offset = 0
    index = 0
    while index < len(pending):
        written = os.pwritev(fd, pending[index : index + _IOV_MAX], offset)
        if written <= 0:
            raise OSError(errno.EIO, "pwritev wrote nothing to the object file")
        offset += written
        while written:
            length = pending[index].nbytes
            if written >= length:
                written -= length
                index += 1
            else:
                pending[index] = pending[index][written:]
                written = 0


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to someone else
        return True
    return True


_nofile_raised = False


def _raise_nofile_limit() -> bool:
    """Raise the soft open-file limit to the hard limit once; return True if it grew."""
    global _nofile_raised
    if _nofile_raised:
        return False
    _nofile_raised = True
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return False
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return False
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return False
    return target > soft


def _map_readonly(path: str) -> memoryview | None:
    """Map a whole file read-only; None if it does not exist."""
    try:
        return _map_readonly_once(path)
    except OSError as exc:
        if exc.errno != errno.EMFILE:
            raise
        error = exc
    if _raise_nofile_limit():
        try:
            return _map_readonly_once(path)
        except OSError as exc:
            if exc.errno != errno.EMFILE:
                raise
            error = exc
    raise StoreError(
        f"Cannot map {path}: this process has too many open files. Each object read from "
        "the store keeps a file descriptor open while its data is referenced (Python < 3.13); "
        "drop references to objects you no longer need or raise the limit with `ulimit -n`."
    ) from error


def _map_readonly_once(path: str) -> memoryview | None:
    try:
        fd = os.open(path, _OPEN_FLAGS_READ)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            # Cannot mmap an empty file; an empty file is never a valid object
            # and the header check reports it as corrupt.
            return memoryview(b"")
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ, **_MMAP_KWARGS)
    finally:
        os.close(fd)
    return memoryview(mapping)


@dataclass(frozen=True, slots=True, eq=False)
class StoredObject:
    """A sealed object read from the store; its views point straight into shared memory.

    ``inband`` and ``buffers`` are read-only memoryviews over the mapped file.
    The mapping stays alive for as long as any of these views (or anything
    built on them, such as a numpy array from ``pickle.loads``) is alive, even
    if the object is deleted from the store meanwhile.
    """

    object_id: bytes
    metadata: bytes
    inband: memoryview
    buffers: list[memoryview]
    size: int


class ObjectStore:
    """A directory of sealed, immutable objects shared by the processes of one node."""

    path: pathlib.Path
    capacity_bytes: int | None

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        capacity_bytes: int | None = None,
        create: bool = True,
        spill_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Open the store in directory ``path``, creating it (mode 0o700) if ``create``.

        With a ``spill_dir`` (on disk), a write that would overflow ``capacity_bytes`` first
        moves the least recently used objects there; reading a spilled object brings it back.

        ``capacity_bytes`` bounds the total size of sealed objects in the
        directory (``None`` means only the filesystem limits it).  The bound is
        checked by each writer against what is sealed when it starts writing,
        so concurrent writers in different processes may overshoot it by up to
        the objects they write at the same time.
        """
        if capacity_bytes is not None and (
            isinstance(capacity_bytes, bool)
            or not isinstance(capacity_bytes, int)
            or capacity_bytes < 0
        ):
            raise ValueError(
                f"capacity_bytes must be a non-negative int or None, got {capacity_bytes!r}"
            )
        self.path = pathlib.Path(os.path.abspath(os.fspath(path)))
        self.capacity_bytes = capacity_bytes
        self._dir = str(self.path)
        self.spill_dir = None if spill_dir is None else pathlib.Path(os.path.abspath(os.fspath(spill_dir)))
        self._spill = None if spill_dir is None else str(self.spill_dir)
        if self._spill is not None and create:
            os.makedirs(self._spill, mode=0o700, exist_ok=True)
        # (file name, inode) -> size of sealed files seen by used_bytes().
        self._size_cache: dict[tuple[str, int], int] = {}
        if create:
            try:
                os.makedirs(self._dir, mode=0o700, exist_ok=True)
            except FileExistsError:
                raise StoreError(
                    f"Cannot create object store at {self._dir}: a file with that name exists. "
                    "Remove it or choose another store path."
                )
        elif not os.path.isdir(self._dir):
            raise StoreError(
                f"Object store directory {self._dir} does not exist. "
                "Pass create=True to create it, or check the path."
            )

    def __repr__(self) -> str:
        return f"ObjectStore({self._dir!r}, capacity_bytes={self.capacity_bytes!r})"

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
        """Write and seal an object; return its file size (existing objects are left as they are).

        ``buffers`` are the out-of-band buffers of a pickle protocol 5 dump;
        each is copied exactly once, straight from its memory into the file,
        and starts at a 64-byte aligned offset.  Raises
        :class:`ObjectStoreFullError` if the object does not fit; no partial
        file is ever left behind.
        """
        name = _object_name(object_id)
        final = os.path.join(self._dir, name)
        try:
            return os.stat(final).st_size
        except FileNotFoundError:
            pass

        metadata_view = _byte_view(metadata, "metadata")
        inband_view = _byte_view(inband, "inband")
        buffer_views = [_byte_view(buf, f"buffer {i}") for i, buf in enumerate(buffers)]
        layout = plan_layout(
            metadata_view.nbytes, inband_view.nbytes, [view.nbytes for view in buffer_views]
        )
        size = layout.total_size
        self._make_room(object_id, size)

        chunks = [memoryview(layout.pack_header()), metadata_view, inband_view]
        position = layout.inband_offset + layout.inband_length
        for (offset, length), view in zip(layout.buffers, buffer_views, strict=True):
            if offset > position:
                chunks.append(_ZEROS[: offset - position])
            chunks.append(view)
            position = offset + length

        temp, fd = self._create_temp(name)
        try:
            try:
                _pwrite_all(fd, chunks)
            finally:
                os.close(fd)
        except BaseException as exc:
            _unlink_quiet(temp)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise self._filesystem_full(object_id, size) from exc
            raise
        return self._publish(temp, final, size)

    def create_raw(self, object_id: bytes, size: int) -> RawWriter:
        """Start receiving a complete object file of ``size`` bytes (e.g. from another node).

        Fill ``writer.view`` with the exact bytes of a sealed object file (as
        returned by :meth:`open_raw` on the sending side), then call
        ``writer.seal()``.  Use the writer as a context manager so that it is
        aborted if anything goes wrong.
        """
        name = _object_name(object_id)
        if isinstance(size, bool) or not isinstance(size, int) or size < FIXED_HEADER_SIZE:
            raise ValueError(
                f"size must be the byte size of a sealed object file (at least "
                f"{FIXED_HEADER_SIZE} bytes), got {size!r}"
            )
        self._make_room(object_id, size)
        temp, fd = self._create_temp(name)
        try:
            try:
                self._reserve(fd, size)
                mapping = mmap.mmap(fd, size, **_MMAP_KWARGS)
            finally:
                os.close(fd)
        except BaseException as exc:
            _unlink_quiet(temp)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise self._filesystem_full(object_id, size) from exc
            raise
        return RawWriter(self, object_id, temp, os.path.join(self._dir, name), mapping)

    # ------------------------------------------------------------------ reading

    def get(self, object_id: bytes) -> StoredObject | None:
        """Return the sealed object as zero-copy views into shared memory, or None if absent."""
        path = os.path.join(self._dir, _object_name(object_id))
        view = self._map(path)
        if view is None:
            return None
        size = view.nbytes
        try:
            layout = parse_header(view, size)
        except HeaderError as exc:
            raise self._corrupt(path, str(exc))
        moff, mlen = layout.metadata_offset, layout.metadata_length
        ioff, ilen = layout.inband_offset, layout.inband_length
        return StoredObject(
            object_id=object_id,
            metadata=bytes(view[moff : moff + mlen]),
            inband=view[ioff : ioff + ilen],
            buffers=[view[offset : offset + length] for offset, length in layout.buffers],
            size=size,
        )

    def open_raw(self, object_id: bytes) -> memoryview | None:
        """Return the whole sealed file as a read-only memoryview (None if absent), for streaming."""
        path = os.path.join(self._dir, _object_name(object_id))
        view = self._map(path)
        if view is None:
            return None
        try:
            parse_header(view, view.nbytes)
        except HeaderError as exc:
            raise self._corrupt(path, str(exc))
        return view

    def contains(self, object_id: bytes) -> bool:
        """Return True if the object is sealed in this store."""
        return self.size_of(object_id) is not None

    def size_of(self, object_id: bytes) -> int | None:
        """Return the file size of a sealed object, or None if absent."""
        name = _object_name(object_id)
        try:
            return os.stat(os.path.join(self._dir, name)).st_size
        except FileNotFoundError:
            if self._spill is not None:
                with contextlib.suppress(FileNotFoundError):
                    return os.stat(os.path.join(self._spill, name)).st_size
            return None

    def object_ids(self) -> list[bytes]:
        """Return the ids of all sealed objects in the directory (temporary files excluded)."""
        return [bytes.fromhex(name) for name, _, _ in self._scan()]

    def used_bytes(self) -> int:
        """Return the total size of the sealed objects in the directory."""
        return sum(size for _, _, size in self._scan())

    def usage(self) -> tuple[int, int]:
        """(number of objects, bytes) sealed in shared memory, from one directory scan."""
        objects = self._scan()
        return len(objects), sum(size for _, _, size in objects)

    def spilled(self) -> tuple[int, int]:
        """(number of objects, bytes) currently spilled to disk."""
        if self._spill is None:
            return 0, 0
        count = total = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self._spill) as entries:
            for entry in entries:
                if _OBJECT_NAME.fullmatch(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        total += entry.stat().st_size
                        count += 1
        return count, total

    # ------------------------------------------------------------------ removal

    def delete(self, object_id: bytes) -> bool:
        """Remove an object; return True if it existed. Existing views stay readable."""
        name = _object_name(object_id)
        found = False
        for folder in (self._dir, self._spill):
            if folder is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
                    found = True
        if self._spill is not None and self._spill_in_flight(name):
            # Another process is spilling it right now: remove its copy once it lands.
            deadline = time.monotonic() + 5
            while self._spill_in_flight(name) and time.monotonic() < deadline:
                time.sleep(0.005)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._spill, name))
                found = True
        return found

    def destroy(self) -> None:
        """Delete the store directory and everything in it."""
        for folder in (self._dir, self._spill):
            if folder is not None:
                with contextlib.suppress(FileNotFoundError):
                    shutil.rmtree(folder)
        self._size_cache = {}

    def remove_stale_temp_files(self) -> int:
        """Remove temporary files left by writer processes that died; return how many."""
        removed = 0
        try:
            entries = os.listdir(self._dir)
        except FileNotFoundError:
            return 0
        for name in entries:
            match = _TEMP_NAME.fullmatch(name)
            if match is None or _pid_alive(int(match.group(1))):
                continue
            try:
                os.unlink(os.path.join(self._dir, name))
            except FileNotFoundError:
                continue
            removed += 1
        return removed

    # ------------------------------------------------------------------ internals

    def _scan(self) -> list[tuple[str, int, int]]:
        """List sealed objects as (name, inode, size), statting only files not seen before."""
        cache = self._size_cache
        fresh: dict[tuple[str, int], int] = {}
        found: list[tuple[str, int, int]] = []
        try:
            iterator = os.scandir(self._dir)
        except FileNotFoundError:
            self._size_cache = {}
            return []
        with iterator:
            for entry in iterator:
                name = entry.name
                if _OBJECT_NAME.fullmatch(name) is None:
                    continue
                key = (name, entry.inode())
                size = cache.get(key)
                if size is None:
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        size = entry.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        continue
                fresh[key] = size
                found.append((name, key[1], size))
        self._size_cache = fresh
        return found

    def _create_temp(self, name: str) -> tuple[str, int]:
        """Create a new private temporary file for object ``name``; return (path, fd)."""
        pid = os.getpid()
        for _ in range(16):
            temp = os.path.join(self._dir, f"{_TEMP_PREFIX}{name}-{pid}-{secrets.token_hex(4)}")
            try:
                return temp, os.open(temp, _OPEN_FLAGS_NEW, 0o600)
            except FileExistsError:
                continue
            except FileNotFoundError:
                raise StoreError(
                    f"Object store directory {self._dir} does not exist (was the store "
                    "destroyed?). Create a new ObjectStore for that path to recreate it."
                )
        raise StoreError(  # pragma: no cover - 16 random collisions in a row
            f"Could not create a unique temporary file in {self._dir}; "
            "remove stray '.tmp-*' files there and retry."
        )

    @staticmethod
    def _reserve(fd: int, size: int) -> None:
        """Size a temp file, allocating its pages up front where the platform allows.

        Allocating now turns a full tmpfs into ENOSPC here instead of a SIGBUS
        later when the mapping is written.
        """
        fallocate = getattr(os, "posix_fallocate", None)
        if fallocate is not None:
            try:
                fallocate(fd, 0, size)
                return
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", -1)):
                    raise
        os.ftruncate(fd, size)

    def _publish(self, temp: str, final: str, size: int) -> int:
        """Atomically make a fully written temp file visible as ``final``; return the object size.

        The first writer of an object id wins; later writers discard their copy.
        """
        try:
            try:
                os.link(temp, final)
            except FileExistsError:
                with contextlib.suppress(FileNotFoundError):
                    return os.stat(final).st_size
                return size
            except OSError as exc:
                if exc.errno not in _NO_HARDLINK_ERRNOS:
                    raise
                # No hard links on this filesystem: rename instead.  A racing
                # writer may then replace the file, but with identical bytes.
                os.rename(temp, final)
                return size
            return size
        finally:
            _unlink_quiet(temp)

    def _make_room(self, object_id: bytes, size: int) -> None:
        """Ensure ``size`` more bytes fit under the capacity, spilling LRU objects if allowed."""
        capacity = self.capacity_bytes
        if capacity is None:
            return
        objects = self._scan()
        used = sum(found_size for _, _, found_size in objects)
        if used + size <= capacity:
            return
        if self._spill is not None and size <= capacity:
            # Least recently used first: reads touch an object's mtime (see _map).
            aged = []
            for name, _, found_size in objects:
                with contextlib.suppress(FileNotFoundError):
                    aged.append((os.stat(os.path.join(self._dir, name)).st_mtime_ns, name, found_size))
            aged.sort()
            for _, name, found_size in aged:
                if used + size <= capacity:
                    break
                if self._spill_one(name):
                    used -= found_size
            if used + size <= capacity:
                return
        spilling = "spilling is off" if self._spill is None else "nothing more could be spilled"
        raise ObjectStoreFullError(
            f"Object store {self._dir} is full: object {object_id.hex()} needs {size} bytes "
            f"but {used} of its {capacity} bytes capacity are in use "
            f"({max(capacity - used, 0)} free; {spilling}). Give the store a larger "
            "capacity_bytes, or free space by dropping references to objects that are no "
            "longer needed.",
            object_id=object_id,
            object_size=size,
            used_bytes=used,
            capacity_bytes=capacity,
        )

    def _spill_one(self, name: str) -> bool:
        """Move sealed object ``name`` to the spill directory; False if another process took it."""
        assert self._spill is not None
        source = os.path.join(self._dir, name)
        claimed = os.path.join(self._dir, f"{_SPILL_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(source, claimed)  # atomic: exactly one process spills it
        except FileNotFoundError:
            return False
        temp = os.path.join(self._spill, f"{_TEMP_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            shutil.copyfile(claimed, temp)
            os.replace(temp, os.path.join(self._spill, name))
        except BaseException:
            _unlink_quiet(temp)
            with contextlib.suppress(OSError):
                os.rename(claimed, source)  # put it back rather than lose it
            raise
        _unlink_quiet(claimed)
        return True

    def _map(self, path: str) -> memoryview | None:
        """Map a sealed object, bringing it back from the spill directory if it is there."""
        view = _map_readonly(path)
        if self._spill is None:
            return view
        if view is None:
            view = self._restore(os.path.basename(path))
        if view is not None:
            with contextlib.suppress(OSError):
                os.utime(path)  # mark it recently used, for the spiller's LRU order
        return view

    def _restore(self, name: str) -> memoryview | None:
        assert self._spill is not None
        path = os.path.join(self._dir, name)
        spilled = os.path.join(self._spill, name)
        for _ in range(200):  # a spill of this very object may be in flight in another process
            try:
                size = os.stat(spilled).st_size
            except FileNotFoundError:
                view = _map_readonly(path)
                if view is not None or not self._spill_in_flight(name):
                    return view
                time.sleep(0.005)
                continue
            self._make_room(bytes.fromhex(name), size)
            temp, fd = self._create_temp(name)
            try:
                os.close(fd)
                shutil.copyfile(spilled, temp)
            except FileNotFoundError:
                _unlink_quiet(temp)  # restored (and maybe freed) by another process meanwhile
                continue
            except BaseException as exc:
                _unlink_quiet(temp)
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    raise self._filesystem_full(bytes.fromhex(name), size) from exc
                raise
            self._publish(temp, path, size)
            _unlink_quiet(spilled)
            return _map_readonly(path)
        return _map_readonly(path)

    def _spill_in_flight(self, name: str) -> bool:
        prefix = f"{_SPILL_PREFIX}{name}-"
        with contextlib.suppress(FileNotFoundError):
            return any(entry.startswith(prefix) for entry in os.listdir(self._dir))
        return False

    def _filesystem_full(self, object_id: bytes, size: int) -> ObjectStoreFullError:
        used = self.used_bytes()
        return ObjectStoreFullError(
            f"The filesystem holding object store {self._dir} ran out of space while writing "
            f"object {object_id.hex()} ({size} bytes; sealed objects in this store use "
            f"{used} bytes). Free space by dropping references to objects that are no longer "
            "needed, enlarge the filesystem (e.g. remount /dev/shm with a bigger size=), or "
            "set capacity_bytes below the filesystem size.",
            object_id=object_id,
            object_size=size,
            used_bytes=used,
            capacity_bytes=self.capacity_bytes,
        )

    @staticmethod
    def _corrupt(path: str, reason: str) -> CorruptObjectError:
        return CorruptObjectError(
            f"Object file {path} is corrupt: {reason}. Delete the object "
            "(ObjectStore.delete) and store it again; if this keeps happening, check that "
            "every process on this node runs the same cluster-store version and that "
            "nothing else writes into the store directory.",
            path=path,
        )


class RawWriter:
    """Receives the bytes of a whole object file into shared memory, then seals it.

    ``view`` is a writable memoryview of exactly ``size`` bytes backed by a
    temporary file in the store directory; fill it (e.g. with
    ``sock.recv_into(writer.view[offset:])``) and call :meth:`seal`.  Used as a
    context manager the writer is aborted when the block raises or ends
    without :meth:`seal` having been called.
    """

    view: memoryview

    def __init__(
        self,
        store: ObjectStore,
        object_id: bytes,
        temp_path: str,
        final_path: str,
        mapping: mmap.mmap,
    ) -> None:
        """Wrap a mapped temp file; use :meth:`ObjectStore.create_raw` instead of calling this."""
        self.object_id = object_id
        self.size = len(mapping)
        self.view = memoryview(mapping)
        self._store = store
        self._temp = temp_path
        self._final = final_path
        self._mapping: mmap.mmap | None = mapping
        self._state = "open"
        # If the writer is dropped without seal()/abort(), still remove the temp file.
        self._cleanup = weakref.finalize(self, _unlink_quiet, temp_path)

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
                "create a new writer with ObjectStore.create_raw to receive it again."
            )
        assert self._mapping is not None
        try:
            parse_header(self._mapping, self.size)
        except HeaderError as exc:
            self.abort()
            raise CorruptObjectError(
                f"The {self.size} bytes received for object {self.object_id.hex()} do not form "
                f"a valid object file: {exc}. The data was discarded; transfer the object "
                "again from a node that holds it (send the bytes of ObjectStore.open_raw).",
                path=self._final,
            )
        self._unmap()
        self._store._publish(self._temp, self._final, self.size)
        self._cleanup.detach()
        self._state = "sealed"

    def abort(self) -> None:
        """Discard the received data. Does nothing if already sealed or aborted."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._unmap()
        _unlink_quiet(self._temp)
        self._cleanup.detach()

    def _unmap(self) -> None:
        with contextlib.suppress(BufferError):
            self.view.release()
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            # Slices of ``view`` that the caller still holds keep the mapping
            # exported; it is then unmapped when the last of them goes away.
            with contextlib.suppress(BufferError):
                mapping.close()

    def __enter__(self) -> RawWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()
