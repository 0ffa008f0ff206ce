"""Where a full store moves objects: the :class:`SpillTarget` interface and the directory default.

A store that needs room for a write moves its least recently used primary
objects to its spill target, and a read of a spilled object brings it back.
The store decides *what* to spill and makes sure that only one process of the
node spills a given object (claims are atomic renames inside the store
directory); a target only stores and returns whole object files by name.

:class:`DirectorySpillTarget` (one file per object in a local directory) is
what ``spill_dir=`` builds.  Other targets (a bucket, a remote disk) implement
the same few methods and are passed as ``spill_target=``; in a cluster they
come from the ``cluster_make_spill_target`` plugin hook.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import re
import secrets
import shutil
import sys
from typing import BinaryIO, Protocol, runtime_checkable

from cluster_store._common import OBJECT_NAME, make_private_dir, pid_alive
from cluster_store.errors import CorruptObjectError

__all__ = ["DirectorySpillTarget", "SpillTarget"]


@runtime_checkable
class SpillTarget(Protocol):
    """Storage for the objects a store spills: whole object files, each under a name.

    Names are the object ids' lowercase hex (``[0-9a-f]{2,128}``), so they are
    safe as file names and object keys as they are.  Data is the exact bytes of
    a sealed object file, passed as binary file objects: the store hands over a
    real file where it has one (:class:`~cluster_store.ObjectStore`), so a
    target that sees ``fileno()`` on both ends may let the kernel copy
    (``os.sendfile``); in-process objects (:class:`~cluster_store.MemoryStore`)
    come as file objects over memory that also offer ``getbuffer()``, like
    ``io.BytesIO``.  Cloud SDKs take file objects as they are
    (``upload_fileobj``/``download_fileobj`` and the like).

    **What the store guarantees.** Only one process at a time writes a given
    name: the one that claimed the object in the store directory (an atomic
    rename there), so a target never arbitrates between writers.  Several
    processes may restore the same object at once, so reads of one name may
    overlap each other and a ``delete`` of it by the process that finished
    first.  Calls for different names run concurrently, from threads of one
    process and from different processes of the node.

    **What a target must guarantee.**

    * ``write`` is atomic: a reader (``read_into``, ``size``, ``usage``), in
      any process, sees the whole object or nothing, never part of it, even if
      the writer dies midway (write aside, then publish, as a rename or a
      single PUT does).  On failure it raises and leaves no object behind.
    * What one process wrote, every other process of the node can read and
      delete: each process builds its own target object, so they must all
      point at the same place.
    * A read that loses its object to a concurrent ``delete`` either still
      delivers all of it (an open file does) or returns False; it never
      reports a partial object as complete.
    * Objects are kept until ``delete`` or ``destroy``: a spilled object is
      the only copy there is.

    Methods are synchronous and may block (on disk or network); the store calls
    them from whichever thread needs the room.  Errors propagate to the caller
    of ``put``/``get`` (a failed spill leaves the object in the store).
    """

    #: Where objects go, for messages: "spill directory /x/spill", "s3://bucket/prefix".
    description: str

    def write(self, name: str, source: BinaryIO, size: int) -> None:
        """Store the ``size`` bytes of ``source`` (read from its current position) as ``name``.

        ``size`` is for targets that need the length up front (an HTTP PUT).  Replaces an
        object left under that name, if any.
        """
        ...

    def read_into(self, name: str, dest: BinaryIO) -> bool:
        """Write the whole object ``name`` into ``dest`` (at its current position).

        Return False if there is no such object.  The store checks that the
        object's full size arrived.
        """
        ...

    def size(self, name: str) -> int | None:
        """Return the size in bytes of object ``name``, or None if it is not there."""
        ...

    def delete(self, name: str) -> bool:
        """Remove object ``name``; return False if it was not there."""
        ...

    def usage(self) -> tuple[int, int]:
        """Return (number of objects, bytes) held, for stats; objects being written excluded."""
        ...

    def destroy(self) -> None:
        """Remove every object (the node is going away); must be safe to call twice."""
        ...

    def remove_stale_temp_files(self) -> int:
        """Remove partial writes of processes of this node that died; return how many.

        Return 0 if a write can leave nothing behind (e.g. a single PUT).
        """
        ...


#: The members a spill target must have, for a clear error at construction.
SPILL_TARGET_MEMBERS = (
    "description",
    "write",
    "read_into",
    "size",
    "delete",
    "usage",
    "destroy",
    "remove_stale_temp_files",
)


def check_spill_target(target: object) -> None:
    """Raise TypeError, naming what is missing, if ``target`` is not a :class:`SpillTarget`."""
    missing = [member for member in SPILL_TARGET_MEMBERS if not hasattr(target, member)]
    if missing:
        raise TypeError(
            f"spill_target must implement cluster_store.SpillTarget; {type(target).__name__} "
            f"lacks {', '.join(missing)}. Pass a cluster_store.DirectorySpillTarget(path) "
            "(or spill_dir=path), or add those members."
        )


def spill_target_from(
    spill_dir: str | os.PathLike[str] | None, spill_target: SpillTarget | None, *, create: bool
) -> SpillTarget | None:
    """The target a store spills to, from its ``spill_dir``/``spill_target`` arguments."""
    if spill_dir is not None and spill_target is not None:
        raise ValueError(
            f"Pass either spill_dir or spill_target, not both (got spill_dir={spill_dir!r} and "
            f"spill_target={spill_target!r}); spill_dir=path is short for "
            "spill_target=DirectorySpillTarget(path)."
        )
    if spill_dir is not None:
        return DirectorySpillTarget(spill_dir, create=create)
    if spill_target is not None:
        check_spill_target(spill_target)
    return spill_target


def corrupt_spilled_copy(
    name: str, target: SpillTarget, reason: str, path: str
) -> CorruptObjectError:
    """The error for a spilled copy that does not come back as a valid object file."""
    return CorruptObjectError(
        f"The spilled copy of object {name} in the {target.description} is not a valid object "
        f"file: {reason}. It was not restored, and stays in the spill target; delete the "
        "object (store.delete) and store it again, and check that nothing else writes there.",
        path=path,
    )


_TEMP_PREFIX = ".tmp-"
# A write in progress: .tmp-<object name>-<pid>-<random>.
_TEMP_NAME = re.compile(r"\.tmp-[0-9a-f]+-(\d+)-[0-9a-f]+")
_OPEN_FLAGS_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
# A chunk of a copy that goes through Python (neither side a real file).
_COPY_CHUNK = 1 << 20
# sendfile(2) copies between regular files on Linux only (elsewhere: sockets only).
_SENDFILE = sys.platform.startswith("linux") and hasattr(os, "sendfile")


class DirectorySpillTarget:
    """Spill to a directory: one file per object, named by its name, as ``spill_dir`` always did.

    Use a directory of its own (the target owns every file in it, and
    ``destroy`` removes it) on a filesystem that every process of the node
    sees, normally on disk.  A write goes to a ``.tmp-`` file that is renamed
    into place once complete.  Between real files the bytes are copied by the
    kernel (``sendfile``), never through Python.
    """

    path: pathlib.Path
    description: str

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        """Spill into ``path``, creating it (mode 0o700) if ``create`` and it does not exist."""
        self.path = pathlib.Path(os.path.abspath(os.fspath(path)))
        self.description = f"spill directory {self.path}"
        self._dir = str(self.path)
        if create:
            make_private_dir(self._dir, "Cannot spill to", "another spill directory")

    def __repr__(self) -> str:
        return f"DirectorySpillTarget({self._dir!r})"

    def write(self, name: str, source: BinaryIO, size: int) -> None:
        """Copy ``source`` into ``<path>/<name>``, atomically (temp file, then rename)."""
        final = os.path.join(self._dir, name)
        temp = os.path.join(self._dir, f"{_TEMP_PREFIX}{name}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            with open(os.open(temp, _OPEN_FLAGS_NEW, 0o600), "wb", buffering=0) as dest:
                _copy(source, dest)
            os.replace(temp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise

    def read_into(self, name: str, dest: BinaryIO) -> bool:
        """Copy ``<path>/<name>`` into ``dest``; False if there is no such file."""
        try:
            source = open(os.path.join(self._dir, name), "rb", buffering=0)  # noqa: SIM115
        except FileNotFoundError:
            return False
        with source:
            _copy(source, dest)
        return True

    def size(self, name: str) -> int | None:
        """The size of ``<path>/<name>``, or None if there is no such file."""
        try:
            return os.stat(os.path.join(self._dir, name)).st_size
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> bool:
        """Unlink ``<path>/<name>``; False if there was no such file."""
        try:
            os.unlink(os.path.join(self._dir, name))
        except FileNotFoundError:
            return False
        return True

    def usage(self) -> tuple[int, int]:
        """(files, bytes) of the objects in the directory, from one scan."""
        count = total = 0
        with contextlib.suppress(FileNotFoundError), os.scandir(self._dir) as entries:
            for entry in entries:
                if OBJECT_NAME.fullmatch(entry.name):
                    with contextlib.suppress(FileNotFoundError):
                        total += entry.stat().st_size
                        count += 1
        return count, total

    def destroy(self) -> None:
        """Delete the directory and everything in it."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._dir)

    def remove_stale_temp_files(self) -> int:
        """Remove the ``.tmp-`` files of writers whose process is gone; return how many."""
        removed = 0
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return 0
        for name in names:
            match = _TEMP_NAME.fullmatch(name)
            if match is None or pid_alive(int(match.group(1))):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._dir, name))
                removed += 1
        return removed


def _copy(source: BinaryIO, dest: BinaryIO) -> None:
    """Copy the rest of ``source`` to ``dest``, each byte once where either side allows it.

    Between two real files the kernel copies (``sendfile``, as
    ``shutil.copyfile`` does); a side held in memory (``getbuffer()``, as
    ``io.BytesIO`` and the in-process store's files have) is written from or
    read into directly; anything else goes through Python in chunks.
    """
    if _SENDFILE and _sendfile(source, dest):
        return
    source_buffer = getattr(source, "getbuffer", None)
    if source_buffer is not None:
        start = source.tell()
        with source_buffer() as whole:
            end = max(whole.nbytes, start)
            _write_all(dest, whole[start:end])
        source.seek(end)
        return
    dest_buffer = getattr(dest, "getbuffer", None)
    if dest_buffer is not None:
        start = dest.tell()
        with dest_buffer() as whole:
            room = max(whole.nbytes - start, 0)
            filled = _read_fully(source, whole[start : start + room])
        dest.seek(start + filled)
        if filled < room:
            return  # the source ended first
    # What is left: everything, or (after filling a buffer) nothing unless the source is
    # longer than the room, which the destination's write then reports.
    shutil.copyfileobj(source, dest, _COPY_CHUNK)


def _sendfile(source: BinaryIO, dest: BinaryIO) -> bool:
    """Copy between two real files in the kernel; False (nothing copied) if they are not."""
    try:
        in_fd, out_fd = source.fileno(), dest.fileno()
        offset = source.tell()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return False
    dest.flush()  # the kernel writes at the descriptor's position, past any buffer
    start = offset
    while True:
        try:
            sent = os.sendfile(out_fd, in_fd, offset, 1 << 30)
        except OSError as exc:
            if offset == start and exc.errno in (errno.EINVAL, errno.ENOSYS, errno.ENOTSOCK):
                return False  # not a file the kernel copies from: do it in Python
            raise
        if sent == 0:
            break
        offset += sent
    source.seek(offset)
    return True


def _write_all(dest: BinaryIO, data: memoryview) -> None:
    """Write all of ``data`` (a raw file may take less than asked per call)."""
    while data.nbytes:
        written = dest.write(data)
        if written is None:  # pragma: no cover - a non-blocking file that is full
            raise OSError(errno.EAGAIN, "the spill destination would block")
        data = data[written:]


def _read_fully(source: BinaryIO, room: memoryview) -> int:
    """Fill ``room`` from ``source``; return how many bytes came (fewer if it ended first)."""
    filled = 0
    readinto = getattr(source, "readinto", None)
    while filled < room.nbytes:
        if readinto is not None:
            got = readinto(room[filled:])
        else:
            chunk = source.read(min(room.nbytes - filled, _COPY_CHUNK))
            got = len(chunk)
            room[filled : filled + got] = chunk
        if not got:
            break
        filled += got
    return filled
