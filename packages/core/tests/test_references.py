"""The reference table (cluster.owner.references): pure, no processes, no runtime."""

from __future__ import annotations

import threading

from cluster.objects.refs import ObjectRef
from cluster.owner.references import FREE, KEEP, Borrow, ReferenceTable
from cluster.owner.tasks import PendingTask, ShapeQueue

A, B, C = b"a" * 20, b"b" * 20, b"c" * 20
ME, PEER, OTHER = "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"


def test_an_owned_object_is_freed_when_its_last_local_ref_goes() -> None:
    table = ReferenceTable()
    table.add_local(A)
    table.add_local(A)
    assert table.remove_local(A, owned={A}) is KEEP
    assert table.remove_local(A, owned={A}) is FREE
    assert not table.held(A) and A not in table.local


def test_an_escaped_object_is_never_freed() -> None:
    table = ReferenceTable()
    table.add_local(A)
    table.escape(A)
    assert table.remove_local(A, owned={A}) is KEEP
    assert table.held(A)


def test_an_owned_object_with_a_borrower_waits_for_the_borrower() -> None:
    table = ReferenceTable()
    table.add_local(A)
    assert table.add_borrowers([A, B], PEER, owned={A}) == [True, False]  # B: not ours (any more)
    assert table.remove_local(A, owned={A}) is KEEP  # PEER still holds it
    assert table.held(A)
    assert table.remove_borrowers([A], PEER, [1]) == [A]  # now nothing holds it: free it
    assert not table.held(A)


def test_borrowers_count_each_registration_and_all_must_go() -> None:
    table = ReferenceTable()
    table.add_borrowers([A], PEER, owned={A})
    table.add_borrowers([A], PEER, owned={A})
    table.add_borrowers([A], OTHER, owned={A})
    assert table.remove_borrowers([A], PEER, [1]) == []
    assert table.remove_borrowers([A], PEER, [1]) == []
    assert table.borrower_addresses() == {OTHER}
    assert table.remove_borrowers([A], OTHER, [1]) == [A]
    assert table.remove_borrowers([A], OTHER, [1]) == []  # unknown by now: nothing happens


def test_a_local_ref_keeps_an_object_whose_borrowers_left() -> None:
    table = ReferenceTable()
    table.add_local(A)
    table.add_borrowers([A], PEER, owned={A})
    assert table.remove_borrowers([A], PEER, [1]) == []  # our own ref still holds it
    assert table.remove_local(A, owned={A}) is FREE


def test_a_borrower_that_died_is_forgotten_and_frees_what_only_it_held() -> None:
    table = ReferenceTable()
    table.add_borrowers([A, B], PEER, owned={A, B})
    table.add_borrowers([B], OTHER, owned={A, B})
    table.add_local(C)
    table.add_borrowers([C], PEER, owned={C})
    assert sorted(table.forget_borrower(PEER)) == [A]  # B: OTHER holds it; C: a local ref does
    assert table.borrower_addresses() == {OTHER}


def test_a_borrowed_ref_is_registered_once_and_released_with_its_count() -> None:
    table = ReferenceTable()
    ref = ObjectRef(A, PEER)  # no runtime in this process: counts nothing by itself
    table.add_local(A)
    assert table.to_register([ref, ref]) == {PEER: [A]}
    assert table.registered([A], [True]) == []
    assert table.to_register([ref]) == {}  # registered already: costs nothing
    release = table.remove_local(A, owned=set())
    assert not release.free and release.borrow == Borrow(PEER, registered=1)
    assert A not in table.borrowed


def test_a_borrow_dropped_while_registering_is_undone_and_an_unknown_one_is_not_counted() -> None:
    table = ReferenceTable()
    table.add_local(A)
    table.add_local(B)
    table.to_register([ObjectRef(A, PEER), ObjectRef(B, PEER)])
    table.remove_local(A, owned=set())  # dropped before the owner answered
    assert table.registered([A, B], [True, False]) == [A]  # A: tell the owner again we let go
    assert table.borrowed[B].registered == 0  # B: the owner did not know it (freed): nothing to undo


def test_refs_found_in_a_result_are_adopted_or_taken_back() -> None:
    table = ReferenceTable()
    table.adopt(A, PEER)  # someone else's object: the worker registered us once
    assert table.borrowed[A] == Borrow(PEER, registered=1)
    table.add_borrowers([B], ME, owned={B})  # our own object: the worker registered us with us
    table.take_back(B, ME)
    assert B not in table.borrowers
    table.take_back(B, ME)  # nothing left to take back: no harm


def test_counts_stay_right_when_threads_add_and_drop_refs_at_once() -> None:
    table = ReferenceTable()
    table.add_local(A)  # the ref that outlives the others
    frees = []

    def churn() -> None:
        for _ in range(2000):
            table.add_local(A)
            if table.remove_local(A, owned={A}) is FREE:
                frees.append(1)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert frees == [] and table.local[A] == 1
    assert table.remove_local(A, owned={A}) is FREE


def _task(shape: tuple) -> PendingTask:
    return PendingTask(task_id=b"t", name="f", function_id=b"f", function=b"", args=b"", dep_refs=[],
                       num_returns=1, return_ids=[b"r"], shape=shape, retries_left=0, retry_exceptions=False)


def test_a_shape_queue_wants_a_worker_per_pending_task_and_an_actors_one() -> None:
    queue = ShapeQueue((("CPU", 1.0),))
    assert queue.wanted() == 0
    queue.pending.extend([_task(queue.shape), _task(queue.shape)])
    assert queue.wanted() == 2
    assert ShapeQueue((), for_actor=True).wanted() == 1
