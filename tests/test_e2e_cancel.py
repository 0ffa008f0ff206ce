"""cluster.cancel on running and queued tasks, soft and forced.

Each test has its own head (1 CPU, so "queued" is easy to arrange); cancelling kills workers
and stuck tasks keep theirs busy, which other tests must not inherit.
Tasks announce that they started by writing their pid to a file; the test waits for it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import cluster
from cluster.exceptions import TaskCancelledError


@cluster.remote
def spin_until_released(started: str, release: str, patience: float) -> str:
    """Waits in Python (short sleeps), so an interrupt lands between two of them."""
    Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + patience
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            return "gave up waiting"
        time.sleep(0.01)
    return "released"


@cluster.remote
def sleep_long(started: str, seconds: float) -> str:
    """Waits in one blocking call, like most real code (I/O, a lock, time.sleep)."""
    Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


@cluster.remote
def ignore_interrupts(started: str, seconds: float) -> str:
    """A task a soft cancel cannot stop: it swallows the interrupt and goes on waiting."""
    Path(started).write_text(str(os.getpid()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(deadline - time.monotonic())
        except KeyboardInterrupt:
            Path(started + ".interrupted").touch()
    return "outlasted"


@cluster.remote
def record_run(marker: str) -> str:
    Path(marker).write_text(str(os.getpid()))
    return "ran"


@pytest.fixture
def head(make_cluster):
    """A connected one-CPU head."""
    lc = make_cluster(num_cpus=1)
    lc.connect()
    return lc


def wait_started(e2e, started: Path) -> int:
    e2e.wait_until(started.exists, what=f"the task to create {started.name}")
    return int(e2e.wait_until(started.read_text, what="the pid in the file"))


def test_cancel_interrupts_a_running_task(head, tmp_path, e2e):
    started, release = tmp_path / "started", tmp_path / "release"
    ref = spin_until_released.remote(str(started), str(release), 120)
    try:
        worker_pid = wait_started(e2e, started)
        cluster.cancel(ref)
        with pytest.raises(TaskCancelledError) as excinfo:
            cluster.get(ref, timeout=60)
    finally:
        release.touch()
    assert "spin_until_released" in str(excinfo.value)
    # A soft cancel interrupts the task, not the worker; and the cluster keeps working.
    assert e2e.is_running(worker_pid)
    assert cluster.get(record_run.remote(str(tmp_path / "after")), timeout=60) == "ran"


def test_cancel_interrupts_a_task_blocked_in_sleep(head, tmp_path, e2e):
    started = tmp_path / "started"
    ref = sleep_long.remote(str(started), 300)  # the cluster's teardown ends it if cancel does not
    wait_started(e2e, started)

    cluster.cancel(ref)
    with pytest.raises(TaskCancelledError):
        cluster.get(ref, timeout=5)  # generous: an interrupt takes milliseconds


def test_force_cancel_after_a_soft_cancel_stops_a_stuck_task(head, tmp_path, e2e):
    started = tmp_path / "started"
    ref = ignore_interrupts.remote(str(started), 300)
    worker_pid = wait_started(e2e, started)

    cluster.cancel(ref)  # interrupted, but the task carries on
    assert cluster.wait([ref], timeout=2)[0] == []
    cluster.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        cluster.get(ref, timeout=60)
    assert Path(str(started) + ".interrupted").exists()
    assert e2e.still_running([worker_pid]) == []


def test_force_cancel_kills_the_worker_of_a_blocked_task(head, tmp_path, e2e):
    started = tmp_path / "started"
    ref = sleep_long.remote(str(started), 300)
    worker_pid = wait_started(e2e, started)

    cluster.cancel(ref, force=True)
    with pytest.raises(TaskCancelledError):
        cluster.get(ref, timeout=60)
    assert e2e.still_running([worker_pid]) == []
    # The node replaces the worker.
    assert cluster.get(record_run.remote(str(tmp_path / "after")), timeout=60) == "ran"


def test_cancel_a_queued_task_waiting_for_resources(head, tmp_path, e2e):
    started, release = tmp_path / "started", tmp_path / "release"
    marker, later = tmp_path / "cancelled-ran", tmp_path / "later-ran"
    blocker = spin_until_released.remote(str(started), str(release), 120)
    try:
        wait_started(e2e, started)
        # The only CPU is taken; this one waits for it (0.5 CPU: a lease of its own).
        queued = record_run.options(num_cpus=0.5).remote(str(marker))
        cluster.cancel(queued)
        with pytest.raises(TaskCancelledError):
            cluster.get(queued, timeout=60)
    finally:
        release.touch()
    assert cluster.get(blocker, timeout=60) == "released"
    # A task of the same shape submitted after it runs; the cancelled one never did.
    assert cluster.get(record_run.options(num_cpus=0.5).remote(str(later)), timeout=60) == "ran"
    assert later.exists()
    assert not marker.exists()


def test_cancel_a_task_queued_behind_a_running_one(head, tmp_path, e2e):
    started, release, marker = tmp_path / "started", tmp_path / "release", tmp_path / "cancelled-ran"
    blocker = spin_until_released.remote(str(started), str(release), 120)
    try:
        wait_started(e2e, started)
        queued = record_run.remote(str(marker))  # same shape as the running task
        cluster.cancel(queued)
        ready, _ = cluster.wait([queued], num_returns=1, timeout=5)  # generous: should be instant
        assert ready == [queued], "the cancelled task is still pending while the task ahead of it runs"
    finally:
        release.touch()
    with pytest.raises(TaskCancelledError):
        cluster.get(queued, timeout=60)
    assert cluster.get(blocker, timeout=60) == "released"
    assert not marker.exists()


def test_a_function_whose_first_task_was_cancelled_before_it_started_still_runs_there(head, tmp_path, e2e):
    # The cancelled task carried the function's code to the worker (the owner sends it once
    # per worker); later tasks of that function on the same worker come without it.
    started, release, marker = tmp_path / "started", tmp_path / "release", tmp_path / "cancelled-ran"
    blocker = spin_until_released.remote(str(started), str(release), 120)
    try:
        wait_started(e2e, started)
        queued = record_run.remote(str(marker))  # pushed behind the running task, with the code
        cluster.cancel(queued)
        with pytest.raises(TaskCancelledError):
            cluster.get(queued, timeout=60)
    finally:
        release.touch()
    assert cluster.get(blocker, timeout=60) == "released"
    assert cluster.get(record_run.remote(str(tmp_path / "later")), timeout=60) == "ran"
    assert not marker.exists()
