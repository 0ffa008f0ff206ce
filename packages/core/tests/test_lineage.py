"""Lineage bookkeeping (cluster.owner.recovery.Lineage): which finished tasks are kept to rebuild
their results, and when they go. Pure: tasks are records, objects are ids."""

from __future__ import annotations

from cluster.objects.refs import ObjectRef
from cluster.owner.recovery import Lineage
from cluster.owner.tasks import PendingTask

OWNER = "127.0.0.1:1"


def task(n: int, *deps: bytes, args: bytes = b"a", retries: int = 3) -> PendingTask:
    task_id = n.to_bytes(16, "little")
    return PendingTask(task_id=task_id, name=f"t{n}", function_id=b"f", function=b"", args=args,
                       dep_refs=[ObjectRef(dep, OWNER) for dep in deps], num_returns=1,
                       return_ids=[task_id + bytes(4)], shape=(), retries_left=retries,
                       retry_exceptions=False, max_retries=retries)


def test_a_chain_is_kept_while_its_last_result_lives_then_goes_whole():
    lineage = Lineage()
    alive: set[bytes] = set()
    a = task(1)
    b = task(2, a.return_ids[0])
    c = task(3, b.return_ids[0])
    for t in (a, b, c):
        alive.add(t.return_ids[0])
        lineage.keep(t, alive, OWNER)
    for t in (a, b):  # their values are freed; c's lineage still needs them
        alive.discard(t.return_ids[0])
        lineage.release(t.return_ids[0], alive, OWNER)
    assert set(lineage.tasks) == {a.task_id, b.task_id, c.task_id}
    assert lineage.task_of(a.return_ids[0]) is a

    alive.discard(c.return_ids[0])
    lineage.release(c.return_ids[0], alive, OWNER)
    assert lineage.tasks == {} and not lineage.pins and lineage.bytes == 0


def test_a_task_without_retries_pins_nothing():
    lineage = Lineage()
    alive: set[bytes] = set()
    a = task(1)
    b = task(2, a.return_ids[0], retries=0)  # it can never run again: a is not needed for it
    for t in (a, b):
        alive.add(t.return_ids[0])
        lineage.keep(t, alive, OWNER)
    alive.discard(a.return_ids[0])
    lineage.release(a.return_ids[0], alive, OWNER)
    assert set(lineage.tasks) == {b.task_id}


def test_past_max_bytes_the_oldest_lineage_goes_with_what_only_it_pinned():
    lineage = Lineage(max_bytes=25)
    alive: set[bytes] = set()
    a = task(1, args=b"x" * 10)
    b = task(2, a.return_ids[0], args=b"x" * 10)
    for t in (a, b):
        alive.add(t.return_ids[0])
        lineage.keep(t, alive, OWNER)
    alive.discard(a.return_ids[0])
    lineage.release(a.return_ids[0], alive, OWNER)  # kept: b pins it
    c = task(3, args=b"x" * 10)
    alive.add(c.return_ids[0])
    lineage.keep(c, alive, OWNER)  # 30 bytes: the oldest, a, goes (b still pins it, but it is over)
    assert lineage.evicted >= 1
    assert lineage.bytes <= 25
    assert c.task_id in lineage.tasks
