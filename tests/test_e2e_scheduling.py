"""Where and when tasks run, on fresh dedicated clusters (no leases left over from other tests)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cluster
import pytest


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
