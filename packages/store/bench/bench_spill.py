"""Time puts that spill and gets that restore, 100 MiB objects through a 250 MiB store.

Six objects cycle through a store that holds two: each put after the second
spills the least recently used object to the spill directory, and each get of
a spilled object restores it (spilling another to make room).

    python packages/store/bench/bench_spill.py [--rounds 3] [--memory] [--spill-dir DIR]
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
CAPACITY = 250 * 1024 * 1024
OBJECTS = 6


def main() -> None:
    """Run the benchmark and print the median put and get (ms), each moving 100 MiB to disk."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory", action="store_true", help="time MemoryStore instead")
    parser.add_argument("--spill-dir", help="where to spill [default: a new temp dir]")
    args = parser.parse_args()

    spill_dir = tempfile.mkdtemp(prefix="cluster-spill-bench-", dir=args.spill_dir)
    if args.memory:
        from cluster_store import MemoryStore

        root = "this process's memory"
        store: Any = MemoryStore(capacity_bytes=CAPACITY, spill_dir=spill_dir)
    else:
        root = tempfile.mkdtemp(prefix="cluster-store-bench-", dir=default_store_root())
        store = ObjectStore(root, capacity_bytes=CAPACITY, spill_dir=spill_dir)
    arrays = [np.full(SIZE, i, dtype=np.uint8) for i in range(OBJECTS)]
    puts, gets = [], []
    try:
        for round_ in range(args.rounds):
            ids = [f"spill-{round_}-{i}".encode() for i in range(OBJECTS)]
            for i, (object_id, array) in enumerate(zip(ids, arrays, strict=True)):
                buffers: list[pickle.PickleBuffer] = []
                inband = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
                t0 = time.perf_counter()
                store.put(object_id, b"", inband, buffers)
                if i >= 2:  # the first two fit without spilling
                    puts.append(time.perf_counter() - t0)
            for object_id, array in zip(ids, arrays, strict=True):  # each was spilled meanwhile
                t0 = time.perf_counter()
                stored = store.get(object_id)
                gets.append(time.perf_counter() - t0)
                assert stored is not None
                assert np.array_equal(pickle.loads(stored.inband, buffers=stored.buffers), array)
                del stored
            for object_id in ids:
                store.delete(object_id)
    finally:
        store.destroy()
    print(
        f"{SIZE / 2**20:.0f} MiB objects, {CAPACITY / 2**20:.0f} MiB store, Python "
        f"{sys.version.split()[0]}, store in {root}, spill dir {spill_dir}\n"
        f"  put that spills one:                  median "
        f"{statistics.median(puts) * 1e3:7.1f} ms, min {min(puts) * 1e3:.1f} ms\n"
        f"  get that restores one and spills one: median "
        f"{statistics.median(gets) * 1e3:7.1f} ms, min {min(gets) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
