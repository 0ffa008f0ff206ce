"""Objects moving between nodes: one transfer per node, resumed when a connection drops."""

from __future__ import annotations

import gc

import numpy as np

import cluster

MB = 1_000_000


@cluster.remote(resources={"a": 1})
def make(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64)


@cluster.remote(resources={"b": 1})
def total_b(array: np.ndarray) -> float:
    return float(array.sum())


@cluster.remote(resources={"c": 1})
def total_c(array: np.ndarray) -> float:
    return float(array.sum())


def by_node(lc) -> dict[str, dict]:
    return {n["node_id"]: n["store"] for n in cluster.nodes()}


def test_an_object_read_on_two_nodes_at_once_is_transferred_once_per_node(make_cluster, e2e):
    lc = make_cluster(num_cpus=1, resources={"a": 1})
    b = lc.add_node(num_cpus=2, resources={"b": 2})
    c = lc.add_node(num_cpus=2, resources={"c": 2})
    lc.connect()
    n = 40 * MB // 8
    ref = make.remote(n)  # stored on the head's node
    cluster.wait([ref], timeout=60)
    readers = [total_b.remote(ref) for _ in range(6)] + [total_c.remote(ref) for _ in range(6)]
    assert cluster.get(readers, timeout=120) == [float(n * (n - 1) / 2)] * 12
    node_of = {n["pid"]: n["node_id"] for n in cluster.nodes()}
    size = 40 * MB

    def pulled() -> dict[str, tuple]:
        stores = by_node(lc)
        return {pid: (stores[node_of[pid]].get("pulled"), stores[node_of[pid]].get("pulled_bytes", 0) >= size)
                for pid in (b["pid"], c["pid"])}

    e2e.wait_until(lambda: pulled() == {b["pid"]: (1, True), c["pid"]: (1, True)},
                   what="each reading node to report exactly one transfer")
    del ref, readers
    gc.collect()
    e2e.wait_until(lambda: all(s.get("objects", -1) == 0 for s in by_node(lc).values()),
                   what="the copies on the reading nodes to be freed with the object")


def test_a_transfer_resumes_after_its_connection_drops(make_cluster):
    # The head drops the connection of a pulling node after every 3 chunks it serves.
    lc = make_cluster(num_cpus=1, start=False, env={"CLUSTER_TESTING_DROP_PULL_EVERY": "3"})
    lc.start()
    del lc.env["CLUSTER_TESTING_DROP_PULL_EVERY"]
    lc.add_node(num_cpus=1, resources={"b": 1})
    lc.connect()
    array = np.random.default_rng(7).random(60 * MB // 8)  # 8 chunks: two drops on the way
    ref = cluster.put(array)
    assert cluster.get(total_b.remote(ref), timeout=120) == float(array.sum())
