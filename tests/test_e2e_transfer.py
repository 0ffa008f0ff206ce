"""Objects moving between nodes: one transfer per node, resumed when a connection drops."""

from __future__ import annotations

import gc
import json

import numpy as np

import cluster
from cluster.objects.transfer import CHUNK

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


def test_a_transfer_resumes_after_its_connection_drops(make_cluster, e2e):
    # The head drops the connection of a pulling node after every 3 chunks it serves.
    lc = make_cluster(num_cpus=1, start=False, env={"CLUSTER_TESTING_DROP_PULL_EVERY": "3"})
    lc.start()
    del lc.env["CLUSTER_TESTING_DROP_PULL_EVERY"]
    node = lc.add_node(num_cpus=1, resources={"b": 1})
    lc.connect()
    array = np.random.default_rng(7).random(60 * MB // 8)  # 8 chunks: two drops on the way
    ref = cluster.put(array)
    assert cluster.get(total_b.remote(ref), timeout=120) == float(array.sum())

    events = [e for e in node_log(lc, node["pid"]) if e.get("object_id") == ref.hex()]
    fetched = [e for e in events if e["event"] == "object_fetched"]
    assert len(fetched) == 1, [e["event"] for e in events]  # one pull (not failed and fetched anew) ...
    size = fetched[0]["size"]
    chunks = -(-size // CHUNK)
    assert size >= array.nbytes and chunks == 8
    resumes = [e["missing_chunks"] for e in events if e["event"] == "transfer_resume"]
    # ... interrupted mid-way: the node had to resume it at least once ...
    assert resumes, f"the transfer never dropped: {[e['event'] for e in events]}"
    # ... from where it stopped: the chunks it had before a drop were kept, not fetched again.
    assert resumes[0] < chunks, f"the first resume asked for all {chunks} chunks again: {resumes}"
    assert resumes == sorted(resumes, reverse=True), f"a resume lost chunks already fetched: {resumes}"
    e2e.wait_until(lambda: cluster_nodes_store(node["pid"]).get("pulled_bytes") == size,
                   what="the node to report the one transfer")
    assert cluster_nodes_store(node["pid"])["pulled"] == 1
    # The head answered more chunk requests than the object has (the drops really cut requests
    # off), and no more than the resumes asked for again.
    head_pid = lc.pids[0]
    served = e2e.wait_until(lambda: max(0, cluster_nodes_store(head_pid).get("served_chunks", 0) - chunks),
                            what="the head to report serving a chunk twice")
    assert served <= sum(resumes), f"the head served {served} chunks beyond {chunks}; resumes asked for {resumes}"


def node_log(lc, pid: int) -> list[dict]:
    """The structured log (JSON lines) of the daemon with ``pid``."""
    path = next(lc.root.rglob(f"node-{pid}.jsonl"))
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cluster_nodes_store(pid: int) -> dict:
    return next(n["store"] for n in cluster.nodes() if n["pid"] == pid)
