"""Time put-then-delete cycles of a 100 MiB array and repeated gets (run with the venv python).

This is the pattern that freed-file recycling speeds up: each put after the
first can reuse the file of the object deleted just before it.

    python packages/store/bench/bench_put_delete.py [--rounds 20] [--gets 2000] [--memory]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
from cluster_store import ObjectStore, default_store_root

SIZE = 100 * 1024 * 1024


def main() -> None:
    """Run the benchmark and print the median put (ms) and get (µs)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--memory", action="store_true", help="time MemoryStore instead")
    args = parser.parse_args()

    if args.memory:
        from cluster_store import MemoryStore

        root = "this process's memory"
        store: Any = MemoryStore()
    else:
        root = tempfile.mkdtemp(prefix="cluster-store-bench-", dir=default_store_root())
        store = ObjectStore(root)
    array = np.random.default_rng(0).integers(0, 255, SIZE, dtype=np.uint8)
    buffers: list[pickle.PickleBuffer] = []
    inband = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)

    puts = []
    for i in range(args.rounds):
        object_id = f"bench-{i}".encode()
        t0 = time.perf_counter()
        store.put(object_id, b"", inband, buffers)
        puts.append(time.perf_counter() - t0)
        store.delete(object_id)

    store.put(b"bench-get", b"", inband, buffers)
    gets = []
    for _ in range(args.gets):
        t0 = time.perf_counter()
        stored = store.get(b"bench-get")
        gets.append(time.perf_counter() - t0)
        del stored
    check = store.get(b"bench-get")
    assert check is not None
    assert np.array_equal(pickle.loads(check.inband, buffers=check.buffers), array)
    del check
    store.destroy()

    put_ms = statistics.median(puts) * 1e3
    print(
        f"{SIZE / 2**20:.0f} MiB uint8 array, Python {sys.version.split()[0]}, store in {root}\n"
        f"  put+delete x{args.rounds}: median {put_ms:7.2f} ms/put "
        f"({SIZE / statistics.median(puts) / 1e9:.2f} GB/s), min {min(puts) * 1e3:.2f} ms, "
        f"first {puts[0] * 1e3:.2f} ms\n"
        f"  get x{args.gets}: median {statistics.median(gets) * 1e6:6.1f} µs/get, "
        f"min {min(gets) * 1e6:.1f} µs"
    )


if __name__ == "__main__":
    main()
