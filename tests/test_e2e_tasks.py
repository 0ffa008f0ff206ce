"""Tasks, objects and waiting on a real two-node cluster (head + one node, 1 CPU each).

All tests here share one cluster (``shared_cluster``) and leave it as they found it: tasks
that block wait for a file the test creates in a ``finally``, never for the clock.
"""

from __future__ import annotations

import collections
import os
import textwrap
import time

import numpy as np
import psutil
import pytest

import cluster

MIB = 1024 * 1024
N_100MB = 100 * MIB // 8  # int64 elements in 100 MiB


# ------------------------------------------------------------------ remote functions
# (self-contained: module-level helpers of a test module cannot be imported on workers)


@cluster.remote
def node_of_worker() -> str:
    time.sleep(0.002)  # a little work, so a single worker cannot drain the queue by itself
    return os.environ["CLUSTER_NODE_ID"]


@cluster.remote(num_returns=2)
def make_array(n: int) -> tuple:
    return os.environ["CLUSTER_NODE_ID"], np.arange(n, dtype=np.int64)


@cluster.remote
def check_array(arr: np.ndarray, n: int) -> tuple:
    expected = np.arange(n, dtype=np.int64)  # rebuilt here, independently of the producer
    return os.environ["CLUSTER_NODE_ID"], arr.shape, str(arr.dtype), bool(np.array_equal(arr, expected))


@cluster.remote
def summarize(meta: dict, arr: np.ndarray) -> tuple:
    return os.environ["CLUSTER_NODE_ID"], meta["name"], int(arr.sum()), len(arr)


@cluster.remote
def square(x: int) -> int:
    return x * x


@cluster.remote
def sum_of_squares(start: int, count: int) -> int:
    """Level 1: submits ``count`` tasks from inside a task and gets them."""
    return sum(cluster.get([square.remote(start + i) for i in range(count)], timeout=120))


@cluster.remote
def nested_sums(n: int) -> list:
    """Level 0: submits tasks that submit tasks."""
    return cluster.get([sum_of_squares.remote(10 * i, 3) for i in range(n)], timeout=120)


@cluster.remote
def wait_for_file(path: str, patience: float) -> str:
    deadline = time.monotonic() + patience
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return "released"


@cluster.remote
def plus_one(x: int) -> int:
    return x + 1


# -------------------------------------------------------------------------- tasks


def test_a_thousand_tasks_run_on_both_nodes(shared_cluster, node_ids):
    refs = [node_of_worker.remote() for _ in range(1000)]
    results = cluster.get(refs, timeout=180)

    assert len(results) == 1000
    counts = collections.Counter(results)
    assert set(counts) == {node_ids["head"], node_ids["node"]}, counts


def test_nested_tasks_two_levels_deep(shared_cluster):
    expected = [sum((10 * i + j) ** 2 for j in range(3)) for i in range(3)]
    assert cluster.get(nested_sums.remote(3), timeout=180) == expected



HELPERS = textwrap.dedent(
    """
    import cluster

    def _twice(x):
        return 2 * x

    @cluster.remote
    def double(x):
        return _twice(x)
    """
)

NESTED_DRIVER = textwrap.dedent(
    """
    import cluster
    from helpers import double  # the driver never calls it itself

    cluster.init()

    @cluster.remote
    def outer(n):
        return cluster.get([double.remote(i) for i in range(n)])

    print("RESULT", cluster.get(outer.remote(4), timeout=60), flush=True)
    cluster.shutdown()
    """
)


def test_a_remote_function_a_task_captured_imports_its_module_next_to_the_script(shared_cluster, tmp_path, e2e):
    """``double`` travels by value inside ``outer`` (cloudpickle cannot find the decorated
    function under its name); the worker that sends it on must still tell ``double``'s worker
    where ``helpers`` (with ``_twice``) lives: beside the driver's script, not the worker's cwd."""
    (tmp_path / "helpers.py").write_text(HELPERS)
    proc = e2e.run_driver(shared_cluster, NESTED_DRIVER, tmp_path)
    assert "RESULT [0, 2, 4, 6]" in proc.stdout

# ------------------------------------------------------------------------ objects


def test_a_100mb_array_made_on_one_node_is_read_on_the_other(shared_cluster, node_ids):
    made_on, array_ref = make_array.options(resources={"a": 1}).remote(N_100MB)
    checked = check_array.options(resources={"b": 1}).remote(array_ref, N_100MB)

    consumer_node, shape, dtype, equal = cluster.get(checked, timeout=180)
    assert cluster.get(made_on, timeout=60) == node_ids["head"]
    assert consumer_node == node_ids["node"]
    assert (shape, dtype, equal) == ((N_100MB,), "int64", True)

    # The driver runs on the head's machine and attaches to its store: a zero-copy view.
    arr = cluster.get(array_ref, timeout=60)
    assert arr.nbytes == 100 * MIB
    assert not arr.flags.writeable
    assert not arr.flags.owndata
    np.testing.assert_array_equal(arr, np.arange(N_100MB, dtype=np.int64))


def test_an_array_made_on_the_other_node_reaches_the_driver(shared_cluster, node_ids):
    n = 25 * MIB // 8
    made_on, array_ref = make_array.options(resources={"b": 1}).remote(n)
    assert cluster.get(made_on, timeout=60) == node_ids["node"]

    arr = cluster.get(array_ref, timeout=120)  # pulled into the head's store, then mapped
    assert not arr.flags.writeable
    np.testing.assert_array_equal(arr, np.arange(n, dtype=np.int64))


def test_put_values_are_passed_to_tasks_on_both_nodes(shared_cluster, node_ids):
    arr = np.arange(1_000_000, dtype=np.int64)  # 8 MB: goes to the store, not inline
    meta_ref, arr_ref = cluster.put({"name": "e2e"}), cluster.put(arr)

    results = cluster.get(
        [summarize.options(resources={r: 1}).remote(meta_ref, arr_ref) for r in ("a", "b")], timeout=120
    )
    total = int(arr.sum())
    assert results == [(node_ids["head"], "e2e", total, len(arr)), (node_ids["node"], "e2e", total, len(arr))]
    assert cluster.get(meta_ref, timeout=60) == {"name": "e2e"}
    np.testing.assert_array_equal(cluster.get(arr_ref, timeout=60), arr)


# ------------------------------------------------------------------ wait and timeouts


def test_wait_splits_ready_from_not_ready(shared_cluster, tmp_path):
    release = tmp_path / "release"
    # Different resources, so the two never queue behind each other on one worker.
    slow = wait_for_file.options(resources={"b": 1}).remote(str(release), 120)
    fast = plus_one.options(resources={"a": 1}).remote(41)
    try:
        ready, not_ready = cluster.wait([slow, fast], num_returns=1, timeout=60)
        assert (ready, not_ready) == ([fast], [slow])

        # Both wanted: waits out the timeout, then reports the split as it stands.
        ready, not_ready = cluster.wait([slow, fast], num_returns=2, timeout=0.5)
        assert (ready, not_ready) == ([fast], [slow])

        # timeout=0 only looks.
        assert cluster.wait([slow, fast], num_returns=2, timeout=0) == ([fast], [slow])
        assert cluster.wait([slow], num_returns=1, timeout=0) == ([], [slow])
        assert cluster.get(fast, timeout=60) == 42
    finally:
        release.touch()
    assert cluster.wait([slow], num_returns=1, timeout=60) == ([slow], [])
    assert cluster.get(slow, timeout=60) == "released"


def test_get_with_a_timeout_raises_get_timeout_error(shared_cluster, tmp_path):
    release = tmp_path / "release"
    slow = wait_for_file.options(resources={"b": 1}).remote(str(release), 120)
    done = plus_one.options(resources={"a": 1}).remote(1)
    try:
        assert cluster.get(done, timeout=60) == 2
        with pytest.raises(cluster.exceptions.GetTimeoutError) as excinfo:
            cluster.get(slow, timeout=0.5)
        assert isinstance(excinfo.value, TimeoutError)
        with pytest.raises(cluster.exceptions.GetTimeoutError):
            cluster.get([done, slow], timeout=0.5)
    finally:
        release.touch()
    # The timeout gave up waiting; it did not cancel anything.
    assert cluster.get([done, slow], timeout=60) == [2, "released"]


# --------------------------------------------------------------------- the driver


DRIVER = textwrap.dedent(
    """
    import os, sys
    import cluster

    cluster.init()  # finds the cluster through CLUSTER_ADDRESS and CLUSTER_TOKEN

    @cluster.remote
    def hello_task(n):
        print(f"hello from hello_task number {n}")
        print("and a word on stderr", file=sys.stderr)
        return os.getpid()

    pid = cluster.get(hello_task.remote(7), timeout=60)
    print(f"RESULT worker_pid={pid} driver_pid={os.getpid()}", flush=True)
    cluster.shutdown()
    """
)


def test_worker_prints_reach_the_driver_prefixed_with_task_and_pid(shared_cluster, tmp_path, e2e):
    proc = e2e.run_driver(shared_cluster, DRIVER, tmp_path)

    result = proc.stdout.split("RESULT ")[1].split()
    worker_pid, driver_pid = (int(field.split("=")[1]) for field in result)
    assert worker_pid != driver_pid
    assert f"(hello_task pid={worker_pid}) hello from hello_task number 7\n" in proc.stdout
    assert f"(hello_task pid={worker_pid}) and a word on stderr\n" in proc.stderr


# ------------------------------------------------------------------- authentication


def test_a_node_with_a_wrong_token_is_refused(shared_cluster, e2e):
    lc = shared_cluster
    daemons_before = {r["pid"] for r in lc.daemon_records()}
    known = set(lc.process_tree())

    proc = lc.cli("start", "--address", lc.address, "--token", "wrong", "--num-cpus", "1", check=False)

    assert proc.returncode != 0
    assert "token" in proc.stderr.lower()
    assert "refused" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Nothing joined, and the refused daemon did not stay behind.
    assert {r["pid"] for r in lc.daemon_records()} == daemons_before
    assert len(e2e.status_json(lc)) == 2
    strays = [
        p.pid for p in psutil.process_iter(["cmdline"])
        if p.pid not in known and any(str(lc.root) in arg for arg in (p.info["cmdline"] or ()))
    ]
    assert e2e.still_running(strays) == []


# ------------------------------------------------------------------- transports

TCP_ONLY_DRIVER = textwrap.dedent(
    """
    import socket
    import cluster
    from cluster import api

    @cluster.remote
    def square(x):
        return x * x

    @cluster.remote
    class Total:
        def __init__(self):
            self.total = 0

        def add(self, x):
            self.total += x
            return self.total

    cluster.init()
    assert cluster.get([square.remote(i) for i in range(20)], timeout=60) == [i * i for i in range(20)]
    total = Total.remote()
    for i in range(100):
        total.add.remote(i)
    assert cluster.get(total.add.remote(0), timeout=60) == sum(range(100))
    families = {conn.stream.socket.family for conn in api.current_runtime()._dialer.conns.values()}
    print("FAMILIES", sorted(f.name for f in families), flush=True)
    cluster.shutdown()
    """
)


def test_everything_works_over_tcp_alone_when_same_host_sockets_are_off(shared_cluster, tmp_path, e2e):
    proc = e2e.run_driver(shared_cluster, TCP_ONLY_DRIVER, tmp_path, CLUSTER_LOCAL_SOCKETS="0")
    assert "FAMILIES ['AF_INET']" in proc.stdout


def test_the_driver_reaches_workers_on_its_host_over_unix_sockets(shared_cluster):
    import socket

    from cluster import api
    from cluster.wire.streams import LOCAL_SOCKETS

    if not LOCAL_SOCKETS:
        pytest.skip("same-host sockets are off or not available here")
    cluster.get([node_of_worker.remote() for _ in range(4)], timeout=60)
    families = {conn.peer: conn.stream.socket.family for conn in api.current_runtime()._dialer.conns.values()}
    assert socket.AF_UNIX in families.values(), families
