"""Ray's cancel semantics: dependents of a cancelled task fail without running, ``recursive``
(Ray's default) reaches the tasks it submitted and theirs, and independent work goes on.

(Cancelling running and queued tasks, soft and forced: tests/test_e2e_cancel.py.)
Every task announces what happened to it by creating a file the test waits for.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import cluster
from cluster.exceptions import TaskCancelledError


def _spin(started: Path, release: Path) -> str:
    """Announce, then wait for ``release``; a cancel's interrupt leaves a ``.cancelled`` file."""
    started.write_text(str(os.getpid()))
    try:
        while not release.exists():
            time.sleep(0.01)
    except KeyboardInterrupt:
        started.with_suffix(".cancelled").touch()
        raise
    started.with_suffix(".finished").touch()
    return "released"


@cluster.remote
def spin(started: str, release: str) -> str:
    return _spin(Path(started), Path(release))


@cluster.remote
def after(value: str, marker: str) -> str:
    Path(marker).touch()
    return value + "!"


@cluster.remote
def square(x: int) -> int:
    return x * x


@cluster.remote
def parent(folder: str, release: str, depth: int) -> list:
    """Submits a spinning child and, below ``depth`` 2, a parent of its own; waits on both."""
    refs = [spin.remote(f"{folder}/child{depth}", release)]
    if depth < 2:
        refs.append(parent.remote(folder, release, depth + 1))
    return cluster.get(refs)


@pytest.fixture
def connected(make_cluster):
    lc = make_cluster(num_cpus=4)
    lc.connect()
    return lc


def test_cancelling_a_task_fails_its_dependents_and_leaves_independent_work_alone(connected, tmp_path, e2e):
    started, release = tmp_path / "first", tmp_path / "release"
    first = spin.remote(str(started), str(release))
    second = after.remote(first, str(tmp_path / "second.ran"))
    third = after.remote(second, str(tmp_path / "third.ran"))
    e2e.wait_until(started.exists, what="the first task to start")
    cluster.cancel(first)
    for ref in (first, second, third):
        with pytest.raises(TaskCancelledError):
            cluster.get(ref, timeout=60)
    assert not (tmp_path / "second.ran").exists() and not (tmp_path / "third.ran").exists()
    assert cluster.get([square.remote(i) for i in range(20)], timeout=60) == [i * i for i in range(20)]
    release.touch()


def test_recursive_cancel_reaches_children_and_grandchildren(connected, tmp_path, e2e):
    release = tmp_path / "release"
    top = parent.remote(str(tmp_path), str(release), 1)
    for depth in (1, 2):
        e2e.wait_until((tmp_path / f"child{depth}").exists, what=f"the child at depth {depth} to start")
    cluster.cancel(top)  # recursive=True is the default, as in Ray
    with pytest.raises(TaskCancelledError):
        cluster.get(top, timeout=60)
    for depth in (1, 2):
        e2e.wait_until((tmp_path / f"child{depth}.cancelled").exists, what=f"the child at depth {depth} to be cancelled")
    release.touch()  # had either child survived, it would now finish
    assert cluster.get(square.remote(7), timeout=60) == 49
    assert not any((tmp_path / f"child{depth}.finished").exists() for depth in (1, 2))


def test_cancel_with_recursive_false_leaves_the_children_running(connected, tmp_path, e2e):
    release = tmp_path / "release"
    top = parent.remote(str(tmp_path), str(release), 2)  # one child, no grandchild
    e2e.wait_until((tmp_path / "child2").exists, what="the child to start")
    cluster.cancel(top, recursive=False)
    with pytest.raises(TaskCancelledError):
        cluster.get(top, timeout=60)
    release.touch()
    e2e.wait_until((tmp_path / "child2.finished").exists, what="the child to finish on its own")
    assert not (tmp_path / "child2.cancelled").exists()


def test_recursive_cancel_drops_children_still_queued(make_cluster, tmp_path, e2e):
    """One CPU: the parent's children queue behind one another; cancelling the parent drops
    those not started, so none of them ever runs."""
    lc = make_cluster(num_cpus=1)
    lc.connect()

    @cluster.remote
    def fan_out(folder: str, release: str) -> list:
        return cluster.get([spin.remote(f"{folder}/kid{i}", release) for i in range(3)])

    release = tmp_path / "release"
    top = fan_out.remote(str(tmp_path), str(release))
    e2e.wait_until(lambda: any((tmp_path / f"kid{i}").exists() for i in range(3)), what="a child to start")
    cluster.cancel(top)
    with pytest.raises(TaskCancelledError):
        cluster.get(top, timeout=60)
    release.touch()
    assert cluster.get(square.remote(3), timeout=60) == 9  # the CPU is free again
    assert sum((tmp_path / f"kid{i}").exists() for i in range(3)) == 1
    assert not any((tmp_path / f"kid{i}.finished").exists() for i in range(3))
