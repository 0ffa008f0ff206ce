"""The in-process store (``object_store="memory"``): each process keeps its own objects.

Nothing goes through /dev/shm: values bigger than the inline limit stay in the memory of the
process that made them, and whoever needs one copies it from that process.
"""

from __future__ import annotations

import os

import numpy as np

import cluster

MB = 1_000_000


@cluster.remote(resources={"a": 1})
def total_here(array: np.ndarray) -> float:
    return float(array.sum())


@cluster.remote(resources={"b": 1})
def total_there(array: np.ndarray) -> float:
    return float(array.sum())


@cluster.remote(resources={"b": 1})
def make_there(n: int) -> np.ndarray:
    return np.full(n, 2.0)


def test_objects_travel_between_processes_without_shared_memory(make_cluster, e2e):
    lc = make_cluster(num_cpus=1, resources={"a": 1}, object_store="memory")
    lc.add_node(num_cpus=1, resources={"b": 1})
    lc.connect()
    assert {n["object_store"] for n in cluster.nodes()} == {"memory"}
    array = np.arange(20 * MB // 8, dtype=np.float64)
    ref = cluster.put(array)  # lives in this driver's memory
    expected = float(array.sum())
    assert cluster.get([total_here.remote(ref), total_there.remote(ref)], timeout=60) == [expected] * 2
    made = make_there.remote(20 * MB // 8)  # stays in the worker's memory until fetched
    assert cluster.get(made, timeout=60).sum() == 2.0 * (20 * MB // 8)
    assert not [path for path in e2e.store_paths(lc) if os.path.exists(path)]  # no shared store at all
    del ref, made
