"""Check that a shared flock taken before mmap lives exactly as long as the mapping (Linux).

The store's reader pins rely on it (see cluster_store/_pool.py).  Each line shows
whether ``flock(LOCK_EX | LOCK_NB)`` on the file succeeds from another process
and from a fresh ``open`` in this one:

    python packages/store/bench/flock_lifetime.py
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import gc
import mmap
import os
import subprocess
import sys
import tempfile

_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("locked")
"""


def _probe(path: str) -> str:
    other = subprocess.run(
        [sys.executable, "-c", _PROBE, path], capture_output=True, text=True, check=True
    ).stdout.strip()
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        same = "free"
    except BlockingIOError:
        same = "locked"
    finally:
        os.close(fd)
    return f"other process: {other:6s}  same process, new open: {same}"


def _pinned_mapping(path: str, **kwargs: object) -> mmap.mmap:
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ, **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(fd)


def main() -> None:
    """Print the lock state through a mapping's life."""
    root = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    path = os.path.join(root, "object")
    with open(path, "wb") as file:
        file.write(b"x" * (1 << 20))
    print(f"Python {sys.version.split()[0]}, {sys.platform}, file in {root}")

    mapping = _pinned_mapping(path)
    print("mmap alive, our fd closed:           ", _probe(path))
    view = memoryview(mapping)[10:20]
    del mapping
    gc.collect()
    print("only a memoryview slice left:        ", _probe(path))
    del view
    gc.collect()
    print("all views dropped:                   ", _probe(path))
    _pinned_mapping(path).close()
    print("after mmap.close():                  ", _probe(path))

    if sys.version_info >= (3, 13):
        mapping = _pinned_mapping(path, trackfd=False)
        print("trackfd=False, no fd left:           ", _probe(path))
        mapping.close()
        print("after its close():                   ", _probe(path))

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]  # fmt: skip
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH)
    address = libc.mmap(None, 1 << 20, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    os.close(fd)
    print("raw libc mmap, no fd open at all:    ", _probe(path))
    libc.munmap(address, 1 << 20)
    print("after munmap:                        ", _probe(path))

    mapping = _pinned_mapping(path)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    mapping.close()
    print("parent unmapped, forked child alive: ", _probe(path))
    os.close(read_end)
    os.close(write_end)
    os.waitpid(child, 0)
    print("child exited:                        ", _probe(path))
    os.unlink(path)
    os.rmdir(root)


if __name__ == "__main__":
    main()
