"""Distributed reference counting: objects live exactly as long as some process holds a ref.

Runs on the module's shared cluster: the head ({"a": 1}, where this driver's objects live)
and a second node ({"b": 1}). Each test waits (with a deadline) for what it expects to see in
the owners' object listing (what `cluster list objects` prints: who holds each object) and in the
stores, rather than sleeping and hoping; an object that must survive is checked after a *canary*
dropped with it has been freed, or after the other holders are listed as gone. Every test also
ends by waiting for both stores to be empty again, so an object kept alive too long fails the
test as surely as one freed too early.
"""

from __future__ import annotations

import gc
import os
import time

import numpy as np
import pytest

import cluster
from cluster.cli.commands import (
    _fetch_objects as fetch_objects,  # what `cluster list objects` prints
)

MB = 1_000_000


def stores_empty() -> bool:
    return all(n["store"].get("objects", -1) == 0 for n in cluster.nodes())


def listed_objects(lc) -> dict[str, dict]:
    """Every object alive in the cluster, by id, as its owner lists it (`cluster list objects`)."""
    _, rows, _ = fetch_objects(lc.address, lc.token, 10_000)
    return {row["object_id"]: row for row in rows}


@pytest.fixture
def wait_for_objects(shared_cluster, e2e):
    """``wait_for_objects(condition, what)``: the cluster's objects once ``condition(objects)``
    holds; fails after a deadline."""

    def wait(condition, what: str) -> dict[str, dict]:
        found: dict[str, dict] = {}

        def check() -> bool:
            found.clear()
            found.update(listed_objects(shared_cluster))
            return condition(found)

        e2e.wait_until(check, timeout=60, what=what)
        return found

    return wait


def in_store(row: dict) -> bool:
    """Whether the object of a listed ``row`` has its file in its node's store (one file per
    object, named by its id in hex: cluster_store's ``object_name``)."""
    paths = {n["node_id"]: n["store_path"] for n in cluster.nodes()}
    return os.path.exists(os.path.join(paths[row["node_id"]], row["object_id"]))


@pytest.fixture
def empty_after(shared_cluster, e2e):
    e2e.wait_until(stores_empty, what="empty stores before the test")
    yield
    gc.collect()
    e2e.wait_until(stores_empty, what="every object freed once no ref remains")


def test_a_ref_inside_a_put_value_keeps_its_target_alive_until_the_container_is_freed(empty_after, wait_for_objects):
    x = cluster.put(np.full(MB, 7.0))
    box = cluster.put({"inner": x, "note": "holds x"})
    canary = cluster.put(np.full(MB, 0.0))  # held by its ref alone: freed as soon as that goes
    x_id, box_id, canary_id = x.hex(), box.hex(), canary.hex()
    del x, canary
    gc.collect()
    objects = wait_for_objects(lambda o: canary_id not in o, "the owner to free the canary")
    assert objects[x_id]["referenced_by"] == [f"inside object {box_id}"]  # the container alone holds x
    assert in_store(objects[x_id])
    inner = cluster.get(box)["inner"]
    assert cluster.get(inner)[0] == 7.0
    del box
    gc.collect()
    objects = wait_for_objects(lambda o: box_id not in o, "the owner to free the container")
    assert objects[x_id]["referenced_by"] == ["1 ref(s) in the owner"]
    assert cluster.get(inner)[-1] == 7.0  # the driver's own ref still holds it
    row = objects[x_id]
    del inner
    gc.collect()
    wait_for_objects(lambda o: x_id not in o and not in_store(row), "x to be freed with its last ref")


@cluster.remote(resources={"b": 1})
def make_boxed(n: float) -> list:
    return [cluster.put(np.full(MB, n))]  # the worker owns the inner object


def test_a_ref_returned_inside_a_task_result_outlives_the_task_and_its_worker_frees_it(empty_after, wait_for_objects):
    import os

    box = make_boxed.remote(3.0)
    canary_box = make_boxed.remote(0.0)  # its inner object is held by nothing once the box goes
    inner = cluster.get(box, timeout=60)[0]
    canary_id = cluster.get(canary_box, timeout=60)[0].hex()
    inner_id = inner.hex()
    del box, canary_box
    gc.collect()
    objects = wait_for_objects(lambda o: canary_id not in o,
                               "the worker to free the inner object of the dropped canary box")
    row = objects[inner_id]
    assert row["owner_kind"] == "worker" and in_store(row)
    holders = row["referenced_by"]
    assert len(holders) == 1 and holders[0].startswith(f"borrowed by driver pid {os.getpid()} "), holders
    assert cluster.get(inner, timeout=60)[0] == 3.0  # owned by a worker whose task ended long ago
    del inner
    gc.collect()
    wait_for_objects(lambda o: inner_id not in o and not in_store(row),
                     "the worker to free its object once the driver let go")


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


def test_nothing_leaks_after_a_task_fails(empty_after, wait_for_objects, e2e):
    x = cluster.put(np.full(MB, 1.0))
    x_id = x.hex()
    result = fails_with.remote([x])
    with pytest.raises(ValueError, match="refusing 1 refs"):
        cluster.get(result, timeout=60)
    row = wait_for_objects(lambda o: o.get(x_id, {}).get("referenced_by") == ["1 ref(s) in the owner"],
                           "the failed task's worker to let go of x")[x_id]
    del x, result
    gc.collect()
    wait_for_objects(lambda o: not o and not in_store(row), "no object left alive")
    e2e.wait_until(stores_empty, what="every store to report no objects")


@cluster.remote(resources={"b": 1})
def relay(box: list) -> list:
    return box  # hands the borrowed ref back inside its result


def test_a_borrowed_ref_passed_through_a_task_and_back_stays_alive(empty_after, wait_for_objects):
    x = cluster.put(np.full(MB, 2.0))
    x_id = x.hex()
    back = relay.remote([x])
    del x
    gc.collect()
    inner = cluster.get(back, timeout=60)[0]
    del back
    gc.collect()
    # The worker let go of its borrow and the result holding x is freed: only `inner` is left.
    objects = wait_for_objects(
        lambda o: o.get(x_id, {}).get("referenced_by") == ["1 ref(s) in the owner"],
        "x to be held by the driver's one ref alone")
    assert in_store(objects[x_id])
    assert cluster.get(inner)[0] == 2.0
    del inner
    gc.collect()
    wait_for_objects(lambda o: x_id not in o and not in_store(objects[x_id]), "x to be freed")


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


def test_a_borrower_that_dies_does_not_keep_the_object_alive(empty_after, wait_for_objects):
    import os
    import signal

    x = cluster.put(np.full(MB, 4.0))
    x_id = x.hex()
    pid = cluster.get(stash.remote([x]), timeout=60)
    objects = wait_for_objects(lambda o: any(
        reason.startswith(f"borrowed by worker pid {pid} ") for reason in o.get(x_id, {}).get("referenced_by", ())),
        "the stashing worker to be listed as a borrower of x")
    os.kill(pid, signal.SIGKILL)  # it never gets to say it let go
    del x
    gc.collect()
    wait_for_objects(lambda o: x_id not in o and not in_store(objects[x_id]),
                     "the owner to find out its borrower is gone and free x")
