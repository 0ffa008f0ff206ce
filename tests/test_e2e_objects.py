"""Objects in the nodes' shared-memory stores: zero-copy sharing, freeing, capacity."""

from __future__ import annotations

import numpy as np
import pytest

import cluster
from cluster.exceptions import ObjectStoreFullError

MB = 1_000_000


@cluster.remote(resources={"b": 1})
def mapped_from_store(array: np.ndarray, object_hex: str, folder: str, me: str, other: str) -> dict:
    """How this worker sees an array argument: a view of the store file, or a private copy?

    Waits (bounded) for the other task to start too, so the two run in two workers at once.
    """
    import os
    import time
    from pathlib import Path

    Path(folder, me).touch()
    deadline = time.monotonic() + 60
    while not Path(folder, other).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    with open("/proc/self/maps") as maps:
        mapped = any(object_hex in line for line in maps)
    return {"pid": os.getpid(), "mapped": mapped, "owndata": bool(array.flags.owndata),
            "writeable": bool(array.flags.writeable), "sum": float(array.sum())}


def test_two_workers_of_a_node_share_one_copy_of_a_100mb_array(make_cluster, tmp_path):
    lc = make_cluster(num_cpus=1)
    lc.add_node(num_cpus=2, resources={"b": 2})
    lc.connect()
    array = np.arange(100 * MB // 8, dtype=np.float64)
    ref = cluster.put(array)  # on the head's node: the other node pulls it once
    results = cluster.get([mapped_from_store.remote(ref, ref.hex(), str(tmp_path), me, other)
                           for me, other in (("one", "two"), ("two", "one"))], timeout=120)
    assert len({r["pid"] for r in results}) == 2  # two workers...
    for r in results:  # ...each reading the store's file through a read-only shared mapping
        assert r["mapped"] and not r["owndata"] and not r["writeable"]
        assert r["sum"] == float(array.sum())


def test_dropped_puts_are_freed_so_a_small_store_never_fills(make_cluster, e2e):
    lc = make_cluster(num_cpus=1, object_store_memory=200 * MB)
    lc.connect()
    chunk = np.ones(10 * MB // 8)
    for _ in range(1000):  # 10 GB through a 200 MB store
        ref = cluster.put(chunk)
        del ref
    refs = [cluster.put(chunk) for _ in range(5)]  # and it still has room
    assert cluster.get(refs[-1]).sum() == chunk.sum()
    del refs
    e2e.wait_until(lambda: cluster.nodes()[0]["store"].get("objects") == 0, what="an empty store")


def test_dropped_task_results_are_freed_on_the_node_that_made_them(make_cluster, e2e):
    lc = make_cluster(num_cpus=1)
    lc.add_node(num_cpus=1, resources={"b": 1}, object_store_memory=100 * MB)

    @cluster.remote(resources={"b": 1})
    def make(n: int) -> np.ndarray:
        return np.full(10 * MB // 8, n, dtype=np.float64)

    lc.connect()
    for i in range(60):  # 600 MB of results through a 100 MB store
        assert cluster.get(make.remote(i), timeout=60)[0] == i
    e2e.wait_until(lambda: all(n["store"].get("objects") == 0 for n in cluster.nodes()), what="empty stores")


def test_a_full_store_raises_object_store_full_error_saying_what_uses_it(make_cluster):
    lc = make_cluster(num_cpus=1, object_store_memory=200 * MB, object_spilling=False)
    lc.connect()
    held = [cluster.put(np.zeros(60 * MB // 8)) for _ in range(3)]
    with pytest.raises(ObjectStoreFullError) as excinfo:
        cluster.put(np.zeros(60 * MB // 8))
    message = str(excinfo.value)
    assert "60.0 MB does not fit" in message
    assert "of its 200.0 MB are in use by 3 objects" in message
    assert "--object-store-memory" in message
    del held
    assert cluster.get(cluster.put(np.ones(60 * MB // 8))).sum() == 60 * MB // 8  # room again


def test_cluster_memory_shows_each_node_s_store(make_cluster, e2e):
    lc = make_cluster(num_cpus=1, object_store_memory=300 * MB)
    lc.connect()
    ref = cluster.put(np.zeros(50 * MB // 8))
    e2e.wait_until(lambda: cluster.nodes()[0]["store"].get("objects") == 1, what="the heartbeat")
    out = lc.cli("memory").stdout
    assert "STORE USED" in out and "CAPACITY" in out
    assert "300.0 MB" in out and "50.0 MB" in out
    del ref


def test_a_bad_object_store_memory_is_refused_with_a_message(make_cluster):
    lc = make_cluster(num_cpus=1, start=False)
    proc = lc.cli("start", "--head", "--port", "0", "--object-store-memory", "lots", check=False)
    assert proc.returncode != 0
    assert "--object-store-memory" in proc.stderr and "Traceback" not in proc.stderr


def test_holding_1gb_in_a_200mb_store_spills_and_every_object_reads_back(make_cluster, e2e):
    lc = make_cluster(num_cpus=1, object_store_memory=200 * MB)
    lc.connect()
    refs = [cluster.put(np.full(100 * MB // 8, i, dtype=np.float64)) for i in range(10)]
    e2e.wait_until(lambda: cluster.nodes()[0]["store"].get("spilled_objects", 0) >= 8,
                   what="the heartbeat to report the spilled objects")
    assert cluster.nodes()[0]["store"]["used"] <= 200 * MB
    for i, ref in enumerate(refs):  # each comes back from disk as needed, intact
        array = cluster.get(ref)
        assert array[0] == i and array[-1] == i and array.sum() == i * (100 * MB // 8)
        del array, ref
    out = lc.cli("memory").stdout
    assert "SPILLED" in out
    del refs
    e2e.wait_until(lambda: cluster.nodes()[0]["store"].get("spilled_objects", -1) == 0
                   and cluster.nodes()[0]["store"].get("objects", -1) == 0, what="stores emptied")


@cluster.remote(resources={"b": 1})
def total(array: np.ndarray) -> float:
    return float(array.sum())


def test_a_task_reads_a_spilled_object_from_another_node(make_cluster):
    lc = make_cluster(num_cpus=1, object_store_memory=150 * MB)
    lc.add_node(num_cpus=1, resources={"b": 1})
    lc.connect()
    refs = [cluster.put(np.full(50 * MB // 8, i, dtype=np.float64)) for i in range(6)]  # 300 MB
    sums = cluster.get([total.remote(ref) for ref in refs], timeout=120)
    assert sums == [float(i * (50 * MB // 8)) for i in range(6)]
