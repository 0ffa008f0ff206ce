"""Where and when tasks run, on fresh dedicated clusters (no leases left over from other tests)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import cluster


@cluster.remote
def rendezvous(folder: str, me: str, other: str, patience: float) -> bool:
    """Say "I'm here", then wait for ``other`` to say so too (True), or give up (False)."""
    Path(folder, me).touch()
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if Path(folder, other).exists():
            return True
        time.sleep(0.01)
    return False


@cluster.remote
def node_of_worker() -> str:
    return os.environ["CLUSTER_NODE_ID"]


def test_two_tasks_submitted_together_run_at_the_same_time(make_cluster, tmp_path):
    lc = make_cluster(num_cpus=1)
    lc.add_node(num_cpus=1)
    lc.connect()
    refs = [
        rendezvous.remote(str(tmp_path), "one", "two", 5),  # generous: they should meet at once
        rendezvous.remote(str(tmp_path), "two", "one", 5),
    ]
    assert cluster.get(refs, timeout=120) == [True, True]


def test_a_task_no_node_fits_waits_until_a_node_that_fits_joins(make_cluster, capfd):
    lc = make_cluster(num_cpus=1)
    lc.connect()

    ref = node_of_worker.options(resources={"special": 1}).remote()
    with pytest.raises(cluster.exceptions.GetTimeoutError):
        cluster.get(ref, timeout=1.0)  # it cannot run anywhere yet
    assert "cannot be scheduled" in capfd.readouterr().err  # and the driver was told why

    joined = lc.add_node(num_cpus=1, resources={"special": 1})
    assert cluster.get(ref, timeout=60) == joined["node_id"]


@cluster.remote
def wait_for_file(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.01)


def test_pending_demand_is_reported_to_the_head_and_shown_by_cluster_status(make_cluster, tmp_path, e2e):
    lc = make_cluster(num_cpus=1)
    lc.connect()
    gate = str(tmp_path / "open")
    blocked = [wait_for_file.remote(gate) for _ in range(30)]  # 1 runs, 29 wait for a CPU
    stranded = node_of_worker.options(resources={"special": 2}).remote()  # fits no node

    def demand() -> dict:
        nodes = e2e.status_json(lc)
        return {(tuple(sorted(d["shape"].items())), d["infeasible"]): d["count"]
                for n in nodes for d in n["demand"]}

    seen = e2e.wait_until(lambda: (d := demand()) and len(d) == 2 and d, timeout=30, what="both demands reported")
    # The owner's whole backlog (it asks for at most 8 leases at a time), as of its newest request.
    assert 20 <= seen[((("CPU", 1.0),), False)] <= 30
    assert seen[((("CPU", 1.0), ("special", 2.0)), True)] == 1
    text = lc.cli("status").stdout
    assert "Pending demand" in text and "1 x {CPU: 1, special: 2}  (no node of the cluster can fit it)" in text
    Path(gate).touch()
    cluster.get(blocked, timeout=120)
    cluster.cancel(stranded)
    e2e.wait_until(lambda: demand() == {}, timeout=30, what="the demand to drain")
    assert "Pending demand: none" in lc.cli("status").stdout


def test_a_task_queued_behind_a_running_one_moves_to_a_worker_that_joins_later(make_cluster, tmp_path):
    lc = make_cluster(num_cpus=1)
    lc.connect()
    # Both must run at the same time, but there is one CPU: the second waits behind the first on
    # the same worker (tasks are pipelined once the node says it is full)...
    refs = [rendezvous.remote(str(tmp_path), "one", "two", 120), rendezvous.remote(str(tmp_path), "two", "one", 120)]
    deadline = time.monotonic() + 30
    while not Path(tmp_path, "one").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    # ...until a node joins: the waiting lease request goes there, and the queued task is taken
    # back from the busy worker and run on the new one.
    lc.add_node(num_cpus=1)
    assert cluster.get(refs, timeout=120) == [True, True]


def test_a_task_submitted_behind_a_long_one_runs_on_a_free_cpu_at_once(make_cluster, tmp_path, e2e):
    """Two CPUs, a long task running alone on its worker: a task submitted now is pipelined
    behind it (one lease of that shape, no request pending), and must still reach the free CPU
    rather than wait for the long one (which waits for the short one's result here)."""
    lc = make_cluster(num_cpus=2)
    lc.connect()
    long = rendezvous.remote(str(tmp_path), "long", "short-done", 120)
    e2e.wait_until(Path(tmp_path, "long").exists, what="the long task to start")
    e2e.wait_until(lambda: cluster.available_resources().get("CPU", 0) == 1, what="the idle lease to go back")
    assert cluster.get(rendezvous.remote(str(tmp_path), "short", "long", 120), timeout=60) is True
    Path(tmp_path, "short-done").touch()
    assert cluster.get(long, timeout=60) is True
