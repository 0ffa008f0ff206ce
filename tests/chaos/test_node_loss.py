"""A node dies with objects in its store: they are rebuilt from lineage, or say why they cannot be."""

from __future__ import annotations

import collections
import hashlib
import os
import signal

import psutil
import pytest

import cluster
from cluster.exceptions import (
    ObjectLostError,
    ObjectReconstructionFailedMaxAttemptsExceededError,
    OwnerDiedError,
)

RESULTS = 200
SIZE = 1 << 20  # 1 MB: stored in the executing node's object store, not inline


@cluster.remote(resources={"pool": 0.01})
def block(seed: int, size: int, runs: str = "") -> bytes:
    import os
    import random

    if runs:  # one file per execution
        open(os.path.join(runs, f"{seed}-{os.getpid()}-{os.urandom(4).hex()}"), "w").close()
    return random.Random(seed).randbytes(size)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def kill_node(lc, record: dict) -> list[int]:
    """SIGKILL a node daemon and every process under it, at once; returns their pids."""
    daemon = psutil.Process(record["pid"])
    victims = [daemon, *daemon.children(recursive=True)]
    for proc in victims:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=30)
    return [proc.pid for proc in victims]


def test_results_on_a_killed_node_are_rebuilt_on_its_replacement(make_cluster, chaos, tmp_path):
    lc = make_cluster(num_cpus=1)
    doomed = lc.add_node(num_cpus=2, resources={"pool": 1})
    lc.connect()
    seeds = [chaos.rng.randrange(1 << 30) for _ in range(RESULTS)]
    runs = tmp_path / "runs"
    runs.mkdir()
    refs = [block.remote(seed, SIZE, str(runs)) for seed in seeds]
    cluster.wait(refs, num_returns=RESULTS, timeout=120)
    expected = {seed: digest(__import__("random").Random(seed).randbytes(SIZE)) for seed in seeds}

    killed = kill_node(lc, doomed)
    chaos.fault(f"SIGKILL node daemon {doomed['pid']} and its {len(killed) - 1} workers, holding "
                f"{RESULTS} results of 1 MB")
    lc.add_node(num_cpus=2, resources={"pool": 1})
    chaos.fault("a replacement node with the same resources joins")

    values = cluster.get(refs, timeout=300)
    assert [digest(value) for value in values] == [expected[seed] for seed in seeds]
    chaos.verified(f"{RESULTS}/{RESULTS} results rebuilt and equal to what the tasks made")
    executions = collections.Counter(name.split("-")[0] for name in os.listdir(runs))
    assert executions == {str(seed): 2 for seed in seeds}
    chaos.verified(f"each of the {RESULTS} tasks ran exactly twice (once more to rebuild its result)")
    alive = [n for n in cluster.nodes() if n["state"] == "alive" and n["resources"].get("pool")]
    assert len(alive) == 1 and alive[0]["pid"] != doomed["pid"]


def test_results_of_tasks_without_retries_are_lost_with_a_reason(make_cluster, chaos):
    lc = make_cluster(num_cpus=1)
    doomed = lc.add_node(num_cpus=2, resources={"pool": 1})
    lc.connect()
    refs = [block.options(max_retries=0).remote(i, SIZE) for i in range(20)]
    cluster.wait(refs, num_returns=len(refs), timeout=120)
    node_id = next(n["node_id"] for n in cluster.nodes() if n["pid"] == doomed["pid"])

    kill_node(lc, doomed)
    chaos.fault(f"SIGKILL node {node_id} holding 20 results of tasks with max_retries=0")
    lc.add_node(num_cpus=2, resources={"pool": 1})

    for ref in refs:
        with pytest.raises(ObjectReconstructionFailedMaxAttemptsExceededError) as excinfo:  # Ray's subclass
            cluster.get(ref, timeout=120)
        message = str(excinfo.value)
        assert isinstance(excinfo.value, ObjectLostError)
        assert ref.hex() in message, message
        assert node_id in message, message
        assert "max_retries=0" in message, message
    chaos.verified(f"20/20 gets raise ObjectLostError naming the object, its node and max_retries=0: {message}")


def test_an_object_whose_owner_died_with_its_node_raises_owner_died(make_cluster, chaos):
    lc = make_cluster(num_cpus=1)
    doomed = lc.add_node(num_cpus=1, resources={"pool": 1})
    lc.connect()

    @cluster.remote(resources={"pool": 0.01})
    def put_one() -> list:
        import cluster

        return [cluster.put(b"x" * (1 << 20))]  # owned by this worker, stored on its node

    inner = cluster.get(put_one.remote(), timeout=60)[0]
    assert len(cluster.get(inner, timeout=60)) == 1 << 20
    kill_node(lc, doomed)
    chaos.fault("SIGKILL the node whose worker put (and owns) an object")
    with pytest.raises(OwnerDiedError) as excinfo:
        cluster.get(inner, timeout=60)
    assert inner.hex() in str(excinfo.value)
    chaos.verified(f"get raises {type(excinfo.value).__name__}: {excinfo.value}")


@cluster.remote(resources={"pool": 0.01})
def scaled(data: bytes, factor: int) -> bytes:
    return bytes((b * factor) % 256 for b in data[:4096]) + data[4096:]


def test_a_lost_result_is_rebuilt_through_its_lost_arguments(make_cluster, chaos):
    lc = make_cluster(num_cpus=1)
    doomed = lc.add_node(num_cpus=2, resources={"pool": 1})
    lc.connect()
    seed = chaos.rng.randrange(1 << 30)
    first = block.remote(seed, SIZE)
    second = scaled.remote(first, 3)
    third = scaled.remote(second, 5)
    expected = digest(cluster.get(third, timeout=120))
    del first, second  # their values are freed; the tasks that made them are kept (lineage)

    kill_node(lc, doomed)
    chaos.fault("SIGKILL the node holding the last of a chain of three 1 MB results (the first two freed)")
    lc.add_node(num_cpus=2, resources={"pool": 1})
    assert digest(cluster.get(third, timeout=120)) == expected
    chaos.verified("the last result rebuilt by running all three tasks again, in order, and equal")


def test_retry_exceptions_takes_a_list_of_exception_types(make_cluster, tmp_path):
    lc = make_cluster(num_cpus=1)
    lc.connect()

    @cluster.remote(max_retries=2, retry_exceptions=[KeyError])
    def flaky(folder: str, kind: str) -> int:
        import os

        attempts = len(os.listdir(folder))
        open(os.path.join(folder, str(attempts)), "w").close()
        if attempts == 0:
            raise KeyError("first") if kind == "key" else ValueError("first")
        return attempts

    for kind in ("key", "value"):
        (tmp_path / kind).mkdir()
    assert cluster.get(flaky.remote(str(tmp_path / "key"), "key"), timeout=60) == 1
    with pytest.raises(ValueError):
        cluster.get(flaky.remote(str(tmp_path / "value"), "value"), timeout=60)
    assert len(os.listdir(tmp_path / "value")) == 1  # not retried: not a KeyError
    with pytest.raises(cluster.exceptions.ConfigError, match="retry_exceptions"):
        flaky.options(retry_exceptions=["KeyError"])


def _remove_from_store(node: dict, ref) -> None:
    """Delete an object's file from a node's store behind the cluster's back (a store that lost it)."""
    from cluster_store._common import object_name

    path = os.path.join(node["store_path"], object_name(ref.binary()))
    os.unlink(path)


def test_an_object_its_store_lost_is_rebuilt_when_its_owner_or_a_borrower_reads_it(make_cluster, chaos, tmp_path):
    lc = make_cluster(num_cpus=1, resources={"reader": 1})
    record = lc.add_node(num_cpus=1, resources={"pool": 1})
    lc.connect()
    node = next(n for n in cluster.nodes() if n["pid"] == record["pid"])
    seed = chaos.rng.randrange(1 << 30)
    expected = digest(__import__("random").Random(seed).randbytes(SIZE))

    runs = str(tmp_path / "runs")
    os.mkdir(runs)
    mine = block.remote(seed, SIZE, runs)
    cluster.wait([mine], timeout=60)
    _remove_from_store(node, mine)
    chaos.fault(f"delete object {mine.hex()} from node {node['node_id']}'s store (its owner reads it)")
    assert digest(cluster.get(mine, timeout=60)) == expected
    assert len(os.listdir(runs)) == 2
    chaos.verified("the owner's get rebuilt it (the task ran again)")

    @cluster.remote(resources={"reader": 0.01})
    def read_nested(refs: list) -> str:
        import hashlib

        import cluster

        return hashlib.sha256(cluster.get(refs[0])).hexdigest()

    lent = block.remote(seed, SIZE, runs)
    cluster.wait([lent], timeout=60)
    _remove_from_store(node, lent)
    chaos.fault(f"delete object {lent.hex()} from node {node['node_id']}'s store (a borrower reads it)")
    assert cluster.get(read_nested.remote([lent]), timeout=60) == expected
    assert len(os.listdir(runs)) == 4
    chaos.verified("a borrower's get had the owner rebuild it (the task ran again)")
