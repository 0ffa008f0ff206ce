"""Time put and get of a 100 MB numpy array through cluster_store (run with the venv python)."""

from __future__ import annotations

import pickle
import statistics
import sys
import tempfile
import time

import numpy as np
from cluster_store import ObjectStore, default_store_root

SIZE = 100 * 1024 * 1024
ROUNDS = 10


def _ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples) * 1e3:7.2f} ms  min {min(samples) * 1e3:7.2f} ms"


def main() -> None:
    """Run the benchmark and print one line per measured operation."""
    root = tempfile.mkdtemp(prefix="cluster-store-bench-", dir=default_store_root())
    store = ObjectStore(root)
    array = np.random.default_rng(0).integers(0, 255, SIZE, dtype=np.uint8)
    timings: dict[str, list[float]] = {
        "baseline memcpy (fresh pages)": [],
        "baseline memcpy (warm pages)": [],
        "pickle.dumps (protocol 5, out-of-band)": [],
        "put": [],
        "get": [],
        "get + pickle.loads": [],
        "first full read (sum) of the result": [],
        "same sum over a private in-memory array": [],
        "delete": [],
    }
    warm = np.empty_like(array)
    warm[:] = 0
    for i in range(ROUNDS):
        t0 = time.perf_counter()
        fresh = np.empty_like(array)
        fresh[:] = array
        t1 = time.perf_counter()
        warm[:] = array
        t2 = time.perf_counter()
        del fresh
        timings["baseline memcpy (fresh pages)"].append(t1 - t0)
        timings["baseline memcpy (warm pages)"].append(t2 - t1)

        object_id = f"bench-{i}".encode()
        t0 = time.perf_counter()
        buffers: list[pickle.PickleBuffer] = []
        inband = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
        t1 = time.perf_counter()
        store.put(object_id, b"", inband, buffers)
        t2 = time.perf_counter()
        stored = store.get(object_id)
        t3 = time.perf_counter()
        assert stored is not None
        result = pickle.loads(stored.inband, buffers=stored.buffers)
        t4 = time.perf_counter()
        checksum = int(result.sum(dtype=np.uint64))
        t5 = time.perf_counter()
        del result, stored
        store.delete(object_id)
        t6 = time.perf_counter()
        assert checksum == int(array.sum(dtype=np.uint64))
        timings["pickle.dumps (protocol 5, out-of-band)"].append(t1 - t0)
        timings["put"].append(t2 - t1)
        timings["get"].append(t3 - t2)
        timings["get + pickle.loads"].append(t4 - t2)
        timings["first full read (sum) of the result"].append(t5 - t4)
        t7 = time.perf_counter()
        array.sum(dtype=np.uint64)
        timings["same sum over a private in-memory array"].append(time.perf_counter() - t7)
        timings["delete"].append(t6 - t5)
    store.destroy()
    print(
        f"{SIZE / 2**20:.0f} MiB uint8 array, {ROUNDS} rounds, store in {root}, "
        f"Python {sys.version.split()[0]}"
    )
    for name, samples in timings.items():
        print(f"  {name:45s} {_ms(samples)}")


if __name__ == "__main__":
    main()
