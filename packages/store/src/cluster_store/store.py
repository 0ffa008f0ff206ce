"""Per-node shared-memory object store: one immutable file per object, zero-copy reads.

Writers build each object in a private temporary file inside the store
directory and publish it atomically with a hard link (``link(2)`` refuses to
replace an existing name, so the first writer of an object id wins and a sealed
file never changes).  Readers ``mmap`` the sealed file read-only and hand out
memoryviews into the mapping, so no byte is copied on the read path.

Many processes share one directory without a daemon: temporary names are
created with ``O_EXCL``, objects appear only through the atomic link, every
claim on a file (to spill, restore or evict it, or reuse a freed one) is an atomic
``rename``, and readers pin the files they map with a shared ``flock`` so that
a freed file is rewritten only once nobody maps it (see ``_pool``).

A *secondary* copy (``create_raw(..., secondary=True)``: a copy of an object
whose primary copy lives on another node) is a cache entry: making room deletes
the least recently used ones before any primary object is spilled.  It is
marked by the owner-execute permission bit of its file, fixed when the file is
published: a reader learns it from the ``fstat`` it does anyway, and the name
stays the same so no lookup tries two names.

Spilled objects go to a :class:`~cluster_store.SpillTarget` (``spill.py``).  A
restore copies the object into a temp file, renames it to a ``.restoring-``
claim, removes the spilled copy and only then publishes the object: once it is
published another process may spill it again at once, and the old copy must be
gone by then.  Readers that find an object nowhere wait while a ``.spilling-``
or ``.restoring-`` claim on it exists.
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
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple, TypeVar

from cluster_store._common import (
    OBJECT_NAME,
    RawWriter,
    StoredObject,
    StoreStats,
    check_capacity,
    check_raw_size,
    make_private_dir,
    object_name,
    pid_alive,
    split_object,
    write_plan,
)
from cluster_store._format import FIXED_HEADER_SIZE, HeaderError, parse_header
from cluster_store._pool import (
    MIN_POOLED_BYTES,
    PIN_MIN_BYTES,
    PINNING,
    FreePool,
    pin,
    unpinned,
)
from cluster_store.errors import CorruptObjectError, ObjectStoreFullError, StoreError
from cluster_store.spill import (
    DirectorySpillTarget,
    SpillTarget,
    corrupt_spilled_copy,
    spill_target_from,
)

__all__ = ["ObjectStore", "RawWriter", "StoredObject", "default_store_root"]

_T = TypeVar("_T")

_TEMP_PREFIX = ".tmp-"
_SPILL_PREFIX = ".spilling-"
_RESTORE_PREFIX = ".restoring-"
_EVICT_PREFIX = ".evicting-"
# Files a process owns while it works on them: <prefix><object name>-<pid>-<random>.
_CLAIM_NAME = re.compile(r"\.(tmp|spilling|restoring|evicting)-([0-9a-f]+)-(\d+)-[0-9a-f]+")

# Permission bits of sealed files.  The owner-execute bit marks a secondary
# copy: it is meaningless for a data file, settable by the owner on any POSIX
# filesystem (noexec mounts included), survives writes (unlike setuid/setgid,
# which the kernel clears), and does not change who may open the file.
_PRIMARY_MODE = 0o600
_SECONDARY_MODE = 0o700
_SECONDARY_BIT = stat.S_IXUSR

try:
    _IOV_MAX = max(1, min(os.sysconf("SC_IOV_MAX"), 1024))
except (AttributeError, ValueError, OSError):
    _IOV_MAX = 16
_OPEN_FLAGS_NEW = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_OPEN_FLAGS_READ = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
# Before Python 3.13 every mmap object keeps a dup() of the file descriptor
# open for its whole life; from 3.13 on we can ask it not to.  Either way the
# mapping keeps the open file, and so a reader's pin, alive (see _pool).
_MMAP_KWARGS: dict[str, bool] = {"trackfd": False} if sys.version_info >= (3, 13) else {}
# Reads mark an object used by touching its mtime, unless it is more recent than this:
# LRU order finer than a tenth of a second is not worth a syscall on every read.
_TOUCH_INTERVAL_NS = 100_000_000
# How often a reader reopens an object whose file was replaced under it.
_REOPEN_ATTEMPTS = 8
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


def _link_back(claimed: str, path: str) -> None:
    """Give a claimed file its object name again, unless a copy was published there meanwhile."""
    try:
        os.link(claimed, path)
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in _NO_HARDLINK_ERRNOS:
            raise
        os.rename(claimed, path)
        return
    _unlink_quiet(claimed)


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


class _Mapped(NamedTuple):
    view: memoryview
    stat: os.stat_result


def _map_readonly(path: str) -> _Mapped | None:
    """Map a whole file read-only, pinned; None if it does not exist."""
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


def _map_readonly_once(path: str) -> _Mapped | None:
    for _ in range(_REOPEN_ATTEMPTS):
        try:
            fd = os.open(path, _OPEN_FLAGS_READ)
        except FileNotFoundError:
            return None
        try:
            status = os.fstat(fd)
            if PINNING and status.st_size >= PIN_MIN_BYTES:
                pin(fd)
                # The file may have been freed, and even reused for another
                # object, between our open and our pin: only the file that the
                # path names now, pinned, is the object.  (Smaller files are
                # never reused, see _pool.)
                try:
                    current = os.stat(path)
                except FileNotFoundError:
                    return None
                if current.st_ino != status.st_ino:
                    continue
                status = current  # taken under the pin: the size is final
            size = status.st_size
            if size == 0:
                # Cannot mmap an empty file; an empty file is never a valid object
                # and the header check reports it as corrupt.
                return _Mapped(memoryview(b""), status)
            mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ, **_MMAP_KWARGS)
        finally:
            os.close(fd)
        return _Mapped(memoryview(mapping), status)
    return None


def _object_file_problem(fd: int, size: int) -> str | None:
    """Why the file open as ``fd`` is not a whole object file of ``size`` bytes; None if it is."""
    written = os.fstat(fd).st_size
    if written != size:
        return f"it has {written} bytes, not {size}"
    if size < FIXED_HEADER_SIZE:
        return f"it is {size} bytes, smaller than an object file's header"
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapping:  # only the header is read
        try:
            parse_header(mapping, size)
        except HeaderError as exc:
            return str(exc)
    return None


class _Entry(NamedTuple):
    name: str
    inode: int
    size: int
    secondary: bool


class ObjectStore:
    """A directory of sealed, immutable objects shared by the processes of one node."""

    #: Every process of the node that opens the same directory sees the same objects.
    shared: ClassVar[bool] = True

    path: pathlib.Path
    capacity_bytes: int | None
    #: Where objects spill when room is needed; None: spilling is off.
    spill_target: SpillTarget | None
    #: The directory of a :class:`DirectorySpillTarget` (what ``spill_dir=`` builds), else None.
    spill_dir: pathlib.Path | None

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        capacity_bytes: int | None = None,
        create: bool = True,
        spill_dir: str | os.PathLike[str] | None = None,
        spill_target: SpillTarget | None = None,
    ) -> None:
        """Open the store in directory ``path``, creating it (mode 0o700) if ``create``.

        With a ``spill_target``, a write that would overflow ``capacity_bytes`` first moves
        the least recently used objects there; reading a spilled object brings it back.
        Every process that opens the store must use the same target: any of them may
        restore what another spilled.  ``spill_dir=path`` (on disk) is short for
        ``spill_target=DirectorySpillTarget(path)``; pass one or the other.

        ``capacity_bytes`` bounds the total size of sealed objects in the
        directory, plus freed files kept for reuse (``None`` means only the
        filesystem limits it).  The bound is checked by each writer against
        what is sealed when it starts writing, so concurrent writers in
        different processes may overshoot it by up to the objects they write at
        the same time.
        """
        check_capacity(capacity_bytes)
        self.path = pathlib.Path(os.path.abspath(os.fspath(path)))
        self.capacity_bytes = capacity_bytes
        self._dir = str(self.path)
        self.spill_target = spill_target_from(spill_dir, spill_target, create=create)
        self.spill_dir = (
            self.spill_target.path if isinstance(self.spill_target, DirectorySpillTarget) else None
        )
        # (file name, inode) -> (size, secondary) of sealed files seen by _scan().
        # A published file never changes, so this stays right for as long as the name
        # points at the same inode.
        self._size_cache: dict[tuple[str, int], tuple[int, bool]] = {}
        if create:
            make_private_dir(self._dir, "Cannot create object store at", "another store path")
        elif not os.path.isdir(self._dir):
            raise StoreError(
                f"Object store directory {self._dir} does not exist. "
                "Pass create=True to create it, or check the path."
            )
        self._pool = FreePool(self._dir, self._pool_limit()) if PINNING else None

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
        file is ever left behind.  A put over a secondary copy of the object
        replaces it with a primary one.
        """
        name = object_name(object_id)
        final = os.path.join(self._dir, name)
        try:
            existing = os.stat(final)
        except FileNotFoundError:
            pass
        else:
            if not existing.st_mode & _SECONDARY_BIT:
                return existing.st_size

        size, chunks = write_plan(metadata, inband, buffers)
        temp, _ = self._fill_new(object_id, name, size, False, lambda fd, _recycled: _pwrite_all(fd, chunks))
        return self._publish(temp, final, size, secondary=False)

    def create_raw(self, object_id: bytes, size: int, *, secondary: bool = False) -> RawWriter:
        """Start receiving a complete object file of ``size`` bytes (e.g. from another node).

        Fill all of ``writer.view`` with the exact bytes of a sealed object file
        (as returned by :meth:`open_raw` on the sending side; its initial
        contents are unspecified), then call ``writer.seal()``.  Use the writer
        as a context manager so that it is aborted if anything goes wrong.

        ``secondary=True`` marks the copy as a cache of an object whose primary
        copy lives elsewhere: when room is needed, least recently used
        secondary copies are deleted (never spilled) before any primary object
        is spilled.  A primary copy sealed over a secondary one replaces it; a
        secondary copy of an object already present is discarded.
        """
        name = object_name(object_id)
        check_raw_size(size)

        def map_it(fd: int, recycled: bool) -> mmap.mmap:
            if not recycled:
                self._reserve(fd, size)
            if PINNING and size >= PIN_MIN_BYTES:
                pin(fd)  # views of the writer that outlive seal() keep the file from reuse
            return mmap.mmap(fd, size, **_MMAP_KWARGS)

        temp, mapping = self._fill_new(object_id, name, size, secondary, map_it)
        sink = _FileSink(self, temp, os.path.join(self._dir, name), mapping, secondary)
        return RawWriter(object_id, memoryview(mapping), sink)

    def _fill_new(
        self, object_id: bytes, name: str, size: int, secondary: bool, fill: Callable[[int, bool], _T]
    ) -> tuple[str, _T]:
        """Open a new temp file for an object and run ``fill(fd, recycled)`` on it.

        Returns (temp path, what fill returned). The file is removed if fill fails; a full
        filesystem first drops the pool of freed files and tries once more, then raises
        ObjectStoreFullError.
        """
        for attempt in range(2):
            temp, fd, recycled = self._open_new(object_id, name, size, secondary=secondary)
            try:
                try:
                    return temp, fill(fd, recycled)
                finally:
                    os.close(fd)
            except BaseException as exc:
                _unlink_quiet(temp)
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    if attempt == 0 and self._drop_pool():
                        continue
                    raise self._filesystem_full(object_id, size) from exc
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ reading

    def get(self, object_id: bytes) -> StoredObject | None:
        """Return the sealed object as zero-copy views into shared memory, or None if absent."""
        path = os.path.join(self._dir, object_name(object_id))
        view = self._map(path)
        if view is None:
            return None
        try:
            return split_object(object_id, view)
        except HeaderError as exc:
            raise self._corrupt(path, str(exc))

    def open_raw(self, object_id: bytes) -> memoryview | None:
        """Return the whole sealed file as a read-only memoryview (None if absent), for streaming."""
        path = os.path.join(self._dir, object_name(object_id))
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
        name = object_name(object_id)
        try:
            return os.stat(os.path.join(self._dir, name)).st_size
        except FileNotFoundError:
            if self.spill_target is not None:
                return self.spill_target.size(name)
            return None

    def is_secondary(self, object_id: bytes) -> bool:
        """Return True if the object is held here as a secondary copy (False if primary or absent)."""
        try:
            mode = os.stat(os.path.join(self._dir, object_name(object_id))).st_mode
        except FileNotFoundError:
            return False  # spilled objects are always primary copies
        return bool(mode & _SECONDARY_BIT)

    def object_ids(self) -> list[bytes]:
        """Return the ids of all sealed objects in the directory (temporary files excluded)."""
        return [bytes.fromhex(entry.name) for entry in self._scan()]

    def used_bytes(self) -> int:
        """Return the total size of the sealed objects in the directory."""
        return sum(entry.size for entry in self._scan())

    def usage(self) -> tuple[int, int]:
        """(number of objects, bytes) sealed in shared memory, from one directory scan."""
        objects = self._scan()
        return len(objects), sum(entry.size for entry in objects)

    def spilled(self) -> tuple[int, int]:
        """(number of objects, bytes) currently spilled to the spill target."""
        if self.spill_target is None:
            return 0, 0
        return self.spill_target.usage()

    def stats(self) -> StoreStats:
        """Objects and bytes held: all, secondary copies, spilled, and freed files kept for reuse."""
        objects = self._scan()
        secondary = [entry.size for entry in objects if entry.secondary]
        spilled_objects, spilled_bytes = self.spilled()
        pooled_files, pooled_bytes = self._pool.usage() if self._pool is not None else (0, 0)
        return StoreStats(
            objects=len(objects),
            bytes=sum(entry.size for entry in objects),
            secondary_objects=len(secondary),
            secondary_bytes=sum(secondary),
            spilled_objects=spilled_objects,
            spilled_bytes=spilled_bytes,
            pooled_files=pooled_files,
            pooled_bytes=pooled_bytes,
            capacity_bytes=self.capacity_bytes,
        )

    # ------------------------------------------------------------------ removal

    def delete(self, object_id: bytes) -> bool:
        """Remove an object; return True if it existed. Existing views stay readable."""
        name = object_name(object_id)
        found = self._free(os.path.join(self._dir, name))
        target = self.spill_target
        if target is not None:
            found = target.delete(name) or found
            if self._moving(name):
                # Another process is spilling or restoring it right now: remove its copy
                # once that is done, from a thread (callers include event loops).
                threading.Thread(target=self._delete_when_moved, args=(name,),
                                 name="cluster-store-delete", daemon=True).start()
                found = True
        return found

    def _delete_when_moved(self, name: str) -> None:
        """The rest of ``delete`` for an object another process was moving: wait (at most
        5 s) for that to end, then remove the copy it left, in the store or spilled."""
        target = self.spill_target
        assert target is not None
        deadline = time.monotonic() + 5
        while self._moving(name) and time.monotonic() < deadline:
            time.sleep(0.005)
        target.delete(name)
        self._free(os.path.join(self._dir, name))

    def destroy(self) -> None:
        """Delete the store directory and everything in it, and every spilled object."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._dir)
        if self.spill_target is not None:
            self.spill_target.destroy()
        self._size_cache = {}

    def remove_stale_temp_files(self) -> int:
        """Remove files left half-handled by processes that died; return how many.

        That is temporary files of writers, objects claimed for spilling,
        restoring or eviction (an object whose spill did not land, or that was
        restored but not published, is put back), and partial writes to the
        spill target.
        """
        removed = 0
        try:
            entries = os.listdir(self._dir)
        except FileNotFoundError:
            entries = []
        for claim in entries:
            match = _CLAIM_NAME.fullmatch(claim)
            if match is None or pid_alive(int(match.group(3))):
                continue
            path = os.path.join(self._dir, claim)
            if match.group(1) == "spilling":
                self._recover_spill(path, match.group(2))
                removed += 1
                continue
            if match.group(1) == "restoring":
                self._recover_restore(path, match.group(2))
                removed += 1
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed += 1
        if self.spill_target is not None:
            removed += self.spill_target.remove_stale_temp_files()
        return removed

    # ------------------------------------------------------------------ internals

    def _scan(self) -> list[_Entry]:
        """List sealed objects, statting only files not seen before."""
        cache = self._size_cache
        fresh: dict[tuple[str, int], tuple[int, bool]] = {}
        found: list[_Entry] = []
        try:
            iterator = os.scandir(self._dir)
        except FileNotFoundError:
            self._size_cache = {}
            return []
        with iterator:
            for entry in iterator:
                name = entry.name
                if OBJECT_NAME.fullmatch(name) is None:
                    continue
                key = (name, entry.inode())
                known = cache.get(key)
                if known is None:
                    try:
                        if not entry.is_file(follow_symlinks=False):
                            continue
                        status = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    known = (status.st_size, bool(status.st_mode & _SECONDARY_BIT))
                fresh[key] = known
                found.append(_Entry(name, key[1], *known))
        self._size_cache = fresh
        return found

    def _pool_limit(self) -> int:
        """Bytes the pool of freed files may hold: a quarter of the capacity (or of the filesystem)."""
        if self.capacity_bytes is not None:
            return self.capacity_bytes // 4
        try:
            fs = os.statvfs(self._dir)
        except OSError:
            return 0
        return fs.f_blocks * fs.f_frsize // 4

    def _drop_pool(self) -> int:
        """Unlink every pooled file (the filesystem is full); return the bytes freed."""
        if self._pool is None:
            return 0
        return self._pool.drop(sys.maxsize)

    def _temp_path(self, name: str) -> str:
        return os.path.join(self._dir, f"{_TEMP_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}")

    def _open_new(
        self, object_id: bytes, name: str, size: int, *, secondary: bool
    ) -> tuple[str, int, bool]:
        """Make room for a new object file and open it: (temp path, fd, reused a freed file).

        A freed file from the pool is preferred (its pages exist already); it is
        claimed before making room, so that making room does not drop it.
        """
        mode = _SECONDARY_MODE if secondary else _PRIMARY_MODE
        fd: int | None = None
        temp = ""
        if self._pool is not None and size >= PIN_MIN_BYTES:
            temp = self._temp_path(name)
            with contextlib.suppress(OSError):  # any trouble with a pooled file: use a fresh one
                fd = self._pool.take(size, temp, mode)
        try:
            self._make_room(object_id, size)
        except BaseException:
            if fd is not None:
                os.close(fd)
                _unlink_quiet(temp)
            raise
        if fd is not None:
            return temp, fd, True
        temp, fd = self._create_temp(name, mode)
        return temp, fd, False

    def _create_temp(self, name: str, mode: int = _PRIMARY_MODE) -> tuple[str, int]:
        """Create a new private temporary file for object ``name``; return (path, fd)."""
        for _ in range(16):
            temp = self._temp_path(name)
            try:
                fd = os.open(temp, _OPEN_FLAGS_NEW, mode)
            except FileExistsError:
                continue
            except FileNotFoundError:
                raise StoreError(
                    f"Object store directory {self._dir} does not exist (was the store "
                    "destroyed?). Create a new ObjectStore for that path to recreate it."
                )
            if mode != _PRIMARY_MODE:
                os.fchmod(fd, mode)  # the umask may have cleared the marker bit
            return temp, fd
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

    def _publish(self, temp: str, final: str, size: int, *, secondary: bool) -> int:
        """Atomically make a fully written temp file visible as ``final``; return the object size.

        The first writer of an object id wins and later writers discard their
        copy, except that a primary copy replaces a secondary one.
        """
        try:
            try:
                os.link(temp, final)
            except FileExistsError:
                try:
                    existing = os.stat(final)
                except FileNotFoundError:
                    existing = None  # deleted meanwhile: ours is the copy now
                if existing is not None and (secondary or not existing.st_mode & _SECONDARY_BIT):
                    return existing.st_size
                # Replace the secondary copy (readers that map it keep its identical bytes).
                os.rename(temp, final)
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

    def _free(self, path: str) -> bool:
        """Remove a sealed file, keeping it in the pool for reuse if worth it; False if absent."""
        pool = self._pool
        if pool is not None:
            try:
                size = os.stat(path).st_size
            except FileNotFoundError:
                return False
            if size >= MIN_POOLED_BYTES and self._give_to_pool(pool, path, size):
                return True
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        return True

    @staticmethod
    def _give_to_pool(pool: FreePool, path: str, size: int) -> bool:
        """Move a freed file into the pool unless a reader maps it; False if it was not moved."""
        try:
            fd = os.open(path, _OPEN_FLAGS_READ)
        except FileNotFoundError:
            return False
        try:
            # Only a hint (a reader may still pin it before the rename): a mapped
            # file would merely be skipped, and unlinked, by the next writer.
            if not unpinned(fd):
                return False
        finally:
            os.close(fd)
        try:
            return pool.give(path, size)
        except FileNotFoundError:
            return False

    def _make_room(self, object_id: bytes, size: int) -> None:
        """Ensure ``size`` more bytes fit under the capacity.

        Frees, in this order: pooled files, least recently used secondary
        copies (deleted), least recently used primary objects (spilled, if a
        spill directory is set).
        """
        capacity = self.capacity_bytes
        if capacity is None:
            return
        objects = self._scan()
        used = sum(entry.size for entry in objects)
        pooled = self._pool.usage()[1] if self._pool is not None else 0
        if used + pooled + size <= capacity:
            return
        if size <= capacity and pooled:
            assert self._pool is not None
            pooled = max(pooled - self._pool.drop(used + pooled + size - capacity), 0)
        used += pooled
        if used + size <= capacity:
            return
        if size <= capacity:
            # Secondary copies first, then primaries if they can spill; least recently
            # used first within each (reads touch an object's mtime, see _map).
            aged = []
            for entry in objects:
                if entry.secondary or self.spill_target is not None:
                    try:
                        mtime = os.stat(os.path.join(self._dir, entry.name)).st_mtime_ns
                    except FileNotFoundError:
                        used -= entry.size  # another process took it out since our scan
                        continue
                    aged.append((not entry.secondary, mtime, entry.name, entry.size))
            aged.sort()
            for primary, _, name, found_size in aged:
                if used + size <= capacity:
                    break
                if self._spill_one(name) if primary else self._evict_one(name):
                    used -= found_size
            if used + size <= capacity:
                return
        if size > capacity:
            reason = "the object alone is larger than the capacity"
        elif self.spill_target is None:
            reason = "spilling is off"
        else:
            reason = f"nothing more could be spilled to the {self.spill_target.description}"
        raise ObjectStoreFullError(
            f"Object store {self._dir} is full: object {object_id.hex()} needs {size} bytes "
            f"but {used} of its {capacity} bytes capacity are in use "
            f"({max(capacity - used, 0)} free; {reason}). Give the store a larger "
            "capacity_bytes, or free space by dropping references to objects that are no "
            "longer needed.",
            object_id=object_id,
            object_size=size,
            used_bytes=used,
            capacity_bytes=capacity,
        )

    def _claim(self, name: str, prefix: str) -> str | None:
        """Atomically take sealed object ``name`` out of sight; None if another process has it."""
        claimed = os.path.join(self._dir, f"{prefix}{name}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(os.path.join(self._dir, name), claimed)
        except FileNotFoundError:
            return None
        return claimed

    def _evict_one(self, name: str) -> bool:
        """Delete secondary copy ``name`` to make room; False if it became primary and stays.

        True also if another process took it out of the store first: its room is free
        for this scan's purposes, as for our own claims.
        """
        claimed = self._claim(name, _EVICT_PREFIX)
        if claimed is None:
            return True
        if not os.stat(claimed).st_mode & _SECONDARY_BIT:
            # A primary copy replaced it after our scan: that one must stay.
            _link_back(claimed, os.path.join(self._dir, name))
            return False
        _unlink_quiet(claimed)
        return True

    def _spill_one(self, name: str) -> bool:
        """Move sealed object ``name`` out of the store to the spill target; True once it is out.

        Another process may have claimed it first (several writers making room at once
        pick the same least recently used objects): it is out of the store all the same,
        and no longer counts toward the capacity.
        """
        target = self.spill_target
        assert target is not None
        claimed = self._claim(name, _SPILL_PREFIX)  # exactly one process spills it
        if claimed is None:
            return True
        try:
            with open(claimed, "rb", buffering=0) as source:
                status = os.fstat(source.fileno())
                # A secondary copy (replaced a primary since our scan) is dropped, never spilled.
                if not status.st_mode & _SECONDARY_BIT:
                    target.write(name, source, status.st_size)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.rename(claimed, os.path.join(self._dir, name))  # put it back rather than lose it
            exc.add_note(f"(while spilling object {name} to the {target.description})")
            raise
        _unlink_quiet(claimed)
        return True

    def _recover_spill(self, claimed: str, name: str) -> None:
        """Finish for a dead process: a spill that did not land puts the object back."""
        if self.spill_target is not None and self.spill_target.size(name) is not None:
            _unlink_quiet(claimed)
            return
        with contextlib.suppress(FileNotFoundError):
            _link_back(claimed, os.path.join(self._dir, name))

    def _recover_restore(self, claimed: str, name: str) -> None:
        """Finish for a dead process: a restored copy that was not published yet is published."""
        if self.spill_target is not None:
            self.spill_target.delete(name)  # as _restore does, before the object is visible
        with contextlib.suppress(FileNotFoundError):
            _link_back(claimed, os.path.join(self._dir, name))

    def _map(self, path: str) -> memoryview | None:
        """Map a sealed object, bringing it back from the spill target if it is there."""
        mapped = _map_readonly(path)
        if mapped is None and self.spill_target is not None:
            mapped = self._restore(os.path.basename(path))
        if mapped is None:
            return None
        if (
            self.spill_target is not None
            or (self.capacity_bytes is not None and mapped.stat.st_mode & _SECONDARY_BIT)
        ) and time.time_ns() - mapped.stat.st_mtime_ns > _TOUCH_INTERVAL_NS:
            with contextlib.suppress(OSError):
                os.utime(path)  # mark it recently used, for the LRU order of _make_room
        return mapped.view

    def _restore(self, name: str) -> _Mapped | None:
        """Copy object ``name`` back from the spill target and map it; None if it is in neither."""
        target = self.spill_target
        assert target is not None
        path = os.path.join(self._dir, name)
        confirmed = False
        for _ in range(200):  # another process may be spilling or restoring this very object
            size = target.size(name)
            if size is None:
                mapped = _map_readonly(path)
                if mapped is not None:
                    return mapped
                if self._moving(name):
                    confirmed = False
                    time.sleep(0.005)
                    continue
                if confirmed:
                    return None
                # In neither place, and nobody moving it, at three moments; a spill or a
                # restore that ran between those looks escapes them, so look once more.
                confirmed = True
                continue
            self._make_room(bytes.fromhex(name), size)
            temp, fd = self._create_temp(name)
            try:
                with open(fd, "wb", buffering=0) as dest:
                    found = target.read_into(name, dest)
                    problem = _object_file_problem(fd, size) if found else None
            except BaseException as exc:
                _unlink_quiet(temp)
                if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                    raise self._filesystem_full(bytes.fromhex(name), size) from exc
                exc.add_note(f"(while restoring object {name} from the {target.description})")
                raise
            if not found:
                _unlink_quiet(temp)  # restored (and maybe freed) by another process meanwhile
                continue
            if problem is not None:
                _unlink_quiet(temp)  # a bad copy is never published; the spilled one stays
                raise corrupt_spilled_copy(name, target, problem, path)
            # The spilled copy goes before the object reappears: once published, the object
            # may be spilled again at once, and a delete after that would drop the new copy.
            # Meanwhile the claim tells readers that find neither copy to wait.
            claimed = os.path.join(
                self._dir, f"{_RESTORE_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}"
            )
            os.rename(temp, claimed)
            try:
                target.delete(name)
                # Mapped before it is published: once published, a busy store may spill it
                # again before we could map it by its name.
                mapped = _map_readonly(claimed)
            finally:
                self._publish(claimed, path, size, secondary=False)
            if mapped is not None:
                return mapped
        return _map_readonly(path)

    def _moving(self, name: str) -> bool:
        """True while a process spills or restores object ``name`` (its claim is in the directory)."""
        prefixes = (f"{_SPILL_PREFIX}{name}-", f"{_RESTORE_PREFIX}{name}-")
        with contextlib.suppress(FileNotFoundError):
            return any(entry.startswith(prefixes) for entry in os.listdir(self._dir))
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


class _FileSink:
    """Where an :class:`ObjectStore` raw writer's bytes go: a mapped temp file in the store."""

    def __init__(
        self, store: ObjectStore, temp: str, final: str, mapping: mmap.mmap, secondary: bool
    ) -> None:
        self.location = final
        self._store = store
        self._temp = temp
        self._size = len(mapping)
        self._mapping: mmap.mmap | None = mapping
        self._secondary = secondary

    def publish(self) -> None:
        self._unmap()
        with contextlib.suppress(OSError):
            os.utime(self._temp)  # a reused file would otherwise keep its old mtime (LRU order)
        self._store._publish(self._temp, self.location, self._size, secondary=self._secondary)

    def discard(self) -> None:
        self._unmap()
        _unlink_quiet(self._temp)

    def _unmap(self) -> None:
        mapping, self._mapping = self._mapping, None
        if mapping is not None:
            # Slices of the writer's view still held keep the mapping exported;
            # it is then unmapped when the last of them goes away.
            with contextlib.suppress(BufferError):
                mapping.close()

