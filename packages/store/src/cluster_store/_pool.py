"""Reuse of freed object files: a small pool, made safe across processes by reader pins.

A put into a fresh tmpfs file pays for allocating and zeroing every page; writing
into the pages of a file that already exists is over twice as fast.  So ``delete``
keeps a few large freed files in ``<store>/.free/`` and writers take them over.
What makes that safe is that a freed file may still be mapped by a reader that
holds zero-copy views of the old object, and those bytes must never change.

The pin protocol, followed by every process of the node:

* A **reader** opens an object file, takes ``flock(LOCK_SH)`` on it, then checks
  that the object's path still names the inode it opened (otherwise the file was
  freed, maybe reused, between its ``open`` and its lock), and only then maps it.
  The lock belongs to the open file description, which the mapping keeps alive
  (CPython's ``mmap`` holds a dup of the descriptor before 3.13, and the kernel's
  mapping holds the file itself in any case), so the pin lasts exactly as long as
  the mapping and goes away with it, even if the process dies.
* **delete** renames a large file into the pool instead of unlinking it, while the
  pool stays within its bounds; otherwise it unlinks it as before.
* A **writer** claims a pooled file by renaming it to its own temporary name (one
  claimer wins), then tries ``flock(LOCK_EX | LOCK_NB)``.  Success proves that no
  mapping of the file exists anywhere; none can appear later, because readers only
  reach a file through an object's path and check the inode under their lock, and
  the file gets a path again only when the writer publishes it, fully written.
  Failure means a reader still maps it: the writer unlinks it (its memory goes
  when the reader lets go) and tries another file or a fresh one.

Pins rely on Linux semantics (verified there: a lock taken before ``mmap`` blocks
``LOCK_EX`` from any process until the last mapping is gone, with or without a
descriptor left open), so recycling is only switched on on Linux.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import sys

#: Pins (and so recycling) are used only where their semantics were verified.
PINNING = sys.platform.startswith("linux")

POOL_DIR_NAME = ".free"
#: Smaller files are unlinked on delete: their pages are cheap to allocate.
MIN_POOLED_BYTES = 1 << 20
#: At most this many files wait in the pool; more would mostly hold memory idle.
MAX_POOLED_FILES = 4
#: A pooled file serves a write of at least 1/MAX_OVERSIZE of its size (then shrinks to fit).
MAX_OVERSIZE = 2

#: Readers pin only files at least this big: no other file was ever pooled or reused,
#: since pooled files are at least MIN_POOLED_BYTES and a reused one shrinks at most
#: MAX_OVERSIZE times (and a sealed file's size never changes otherwise).
PIN_MIN_BYTES = MIN_POOLED_BYTES // MAX_OVERSIZE

_POOL_NAME = re.compile(r"(\d+)-[0-9a-f]+")
_OPEN_FLAGS_RECYCLE = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)


# flock(2) errors meaning "this filesystem has no flock": then nobody can pin
# nor check pins there, so files are simply never reused (see unpinned).
_NO_FLOCK_ERRNOS = frozenset(
    code
    for code in (errno.EINVAL, errno.ENOSYS, getattr(errno, "EOPNOTSUPP", None))
    if code is not None
)


def pin(fd: int) -> None:
    """Pin an open object file for as long as this descriptor or a mapping made from it lives."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError as exc:
        if exc.errno not in _NO_FLOCK_ERRNOS:
            raise


def unpinned(fd: int) -> bool:
    """Return True if no process pins (maps) the file behind ``fd`` right now.

    Any failure to tell counts as pinned, so the file is not reused.
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: pinned; anything else: cannot tell
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class FreePool:
    """Freed object files waiting to be reused, named ``<size>-<random>`` in one directory."""

    def __init__(self, store_dir: str, limit_bytes: int) -> None:
        """Use ``<store_dir>/.free``, holding at most ``limit_bytes`` (and MAX_POOLED_FILES files)."""
        self.path = os.path.join(store_dir, POOL_DIR_NAME)
        self.limit_bytes = limit_bytes

    def entries(self) -> list[tuple[int, str]]:
        """List the pooled files as (size, file name), from one directory read."""
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            match = _POOL_NAME.fullmatch(name)
            if match is not None:
                found.append((int(match.group(1)), name))
        return found

    def usage(self) -> tuple[int, int]:
        """(number of files, bytes) in the pool."""
        entries = self.entries()
        return len(entries), sum(size for size, _ in entries)

    def give(self, path: str, size: int) -> bool:
        """Move the freed file at ``path`` into the pool; False if the pool has no room for it.

        Raises FileNotFoundError if ``path`` no longer exists.  Processes giving
        at the same moment may overshoot the bounds by a file each.
        """
        entries = self.entries()
        if len(entries) >= MAX_POOLED_FILES or sum(s for s, _ in entries) + size > self.limit_bytes:
            return False
        target = os.path.join(self.path, f"{size}-{secrets.token_hex(6)}")
        try:
            os.rename(path, target)
        except FileNotFoundError:
            if os.path.isdir(self.path):
                raise  # the object itself is gone
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            os.rename(path, target)
        return True

    def take(self, size: int, temp: str, mode: int) -> int | None:
        """Claim a pooled file for a ``size``-byte object as ``temp``; return an fd ready to write.

        The file is exactly ``size`` bytes, has permission bits ``mode``, and no
        process maps it.  Returns None if no pooled file fits (the caller then
        creates a fresh one).
        """
        candidates = sorted(
            (found, name) for found, name in self.entries() if size <= found <= size * MAX_OVERSIZE
        )
        for found, name in candidates:
            try:
                os.rename(os.path.join(self.path, name), temp)
            except FileNotFoundError:
                continue  # another writer claimed it first
            try:
                fd = os.open(temp, _OPEN_FLAGS_RECYCLE)
            except OSError:
                _unlink_quiet(temp)
                continue
            try:
                if not unpinned(fd):
                    # A reader still maps the old object: let its memory go with the mapping.
                    os.close(fd)
                    _unlink_quiet(temp)
                    continue
                if found != size:
                    os.ftruncate(fd, size)
                os.fchmod(fd, mode)
            except BaseException:
                os.close(fd)
                _unlink_quiet(temp)
                raise
            return fd
        return None

    def drop(self, nbytes: int) -> int:
        """Unlink pooled files until at least ``nbytes`` are freed (or the pool is empty); return bytes freed."""
        freed = 0
        for size, name in sorted(self.entries(), reverse=True):
            if freed >= nbytes:
                break
            try:
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                continue  # claimed by a writer meanwhile
            freed += size
        return freed
