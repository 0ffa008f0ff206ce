"""Distributed reference counting: objects live exactly as long as some process holds a ref.

Runs on the module's shared cluster: the head ({"a": 1}, where this driver's objects live)
and a second node ({"b": 1}). Every test ends by waiting for both stores to be empty again,
so an object kept alive too long fails the test as surely as one freed too early.
"""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest

import cluster

MB = 1_000_000


def stores_empty() -> bool:
    return all(n["store"].get("objects", -1) == 0 for n in cluster.nodes())


@pytest.fixture
def empty_after(shared_cluster, e2e):
    e2e.wait_until(stores_empty, what="empty stores before the test")
    yield
    gc.collect()
    e2e.wait_until(stores_empty, what="every object freed once no ref remains")


def test_a_ref_inside_a_put_value_keeps_its_target_alive_until_the_container_is_freed(empty_after):
    x = cluster.put(np.full(MB, 7.0))
    box = cluster.put({"inner": x, "note": "holds x"})
    del x
    gc.collect()
    time.sleep(0.3)  # time enough to free x, were the container not holding it
    inner = cluster.get(box)["inner"]
    assert cluster.get(inner)[0] == 7.0
    del box
    gc.collect()
    assert cluster.get(inner)[-1] == 7.0  # the driver's own ref still holds it


@cluster.remote(resources={"b": 1})
def make_boxed(n: float) -> list:
    return [cluster.put(np.full(MB, n))]  # the worker owns the inner object


def test_a_ref_returned_inside_a_task_result_outlives_the_task_and_its_worker_frees_it(empty_after):
    box = make_boxed.remote(3.0)
    inner = cluster.get(box, timeout=60)[0]
    del box
    gc.collect()
    time.sleep(0.3)
    assert cluster.get(inner, timeout=60)[0] == 3.0  # owned by a worker whose task ended long ago


@cluster.remote(resources={"b": 1})
def read_later(box: list, delay: float) -> float:
    time.sleep(delay)
    return float(cluster.get(box[0])[0])


def test_refs_nested_in_arguments_stay_alive_while_the_task_runs(empty_after):
    x = cluster.put(np.full(MB, 5.0))
    result = read_later.remote([x], 0.5)
    del x
    gc.collect()
    assert cluster.get(result, timeout=60) == 5.0


@cluster.remote(resources={"b": 1}, max_retries=0)
def fails_with(box: list) -> None:
    raise ValueError(f"refusing {len(box)} refs")


def test_nothing_leaks_after_a_task_fails(empty_after):
    x = cluster.put(np.full(MB, 1.0))
    result = fails_with.remote([x])
    with pytest.raises(ValueError, match="refusing 1 refs"):
        cluster.get(result, timeout=60)
    del x, result


@cluster.remote(resources={"b": 1})
def relay(box: list) -> list:
    return box  # hands the borrowed ref back inside its result


def test_a_borrowed_ref_passed_through_a_task_and_back_stays_alive(empty_after):
    x = cluster.put(np.full(MB, 2.0))
    back = relay.remote([x])
    del x
    gc.collect()
    inner = cluster.get(back, timeout=60)[0]
    del back
    gc.collect()
    time.sleep(0.3)
    assert cluster.get(inner)[0] == 2.0


def test_cluster_list_objects_names_size_owner_place_and_holder(shared_cluster, empty_after):
    import json
    import os

    x = cluster.put(np.zeros(3 * MB // 8))
    box = cluster.put([x])
    x_hex = x.hex()
    del x
    objects = json.loads(shared_cluster.cli("list", "objects", "--json").stdout)
    row = next(o for o in objects if o["object_id"] == x_hex)
    assert row["size"] >= 3 * MB and row["state"] == "stored"
    assert row["owner_kind"] == "driver" and row["owner_pid"] == os.getpid()
    assert row["referenced_by"] == [f"inside object {box.hex()}"]
    text = shared_cluster.cli("memory").stdout
    assert "Largest objects" in text and x_hex[:16] in text and f"driver pid {os.getpid()}" in text
    del box


_stash: list = []


@cluster.remote(resources={"b": 1})
def stash(box: list) -> int:
    import os

    _stash.append(box[0])  # this worker keeps borrowing the ref after the task
    return os.getpid()


def test_a_borrower_that_dies_does_not_keep_the_object_alive(empty_after, e2e):
    import os
    import signal

    x = cluster.put(np.full(MB, 4.0))
    pid = cluster.get(stash.remote([x]), timeout=60)
    os.kill(pid, signal.SIGKILL)  # it never gets to say it let go
    del x  # the owner finds out the borrower is gone, and frees the object (see empty_after)
