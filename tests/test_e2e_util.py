"""``cluster.util`` (Ray's ``ray.util``): ActorPool, Queue, multiprocessing.Pool and the joblib
backend, used as Ray's documentation shows them, on the module's shared cluster (a head and a
node, 1 CPU each).

Functions shipped to workers are decorated, or defined inside the test (see conftest.py).
"""

from __future__ import annotations

import time

import pytest

import cluster
from cluster.util import ActorPool


@cluster.remote
class Doubler:
    def double(self, v: int) -> int:
        return 2 * v

    def slow_double(self, v: int, seconds: float) -> int:
        time.sleep(seconds)
        return 2 * v

    def fail(self, v: int) -> int:
        raise ValueError(f"no {v}")


# ------------------------------------------------------------------------------ ActorPool


def test_actor_pool_map_returns_results_in_order_even_when_they_finish_out_of_order(shared_cluster):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    values = list(range(8))
    # The first values are the slowest: they finish last, yet come back first.
    results = pool.map(lambda a, v: a.slow_double.remote(v, 0.2 if v < 2 else 0.0), values)
    assert list(results) == [2 * v for v in values]
    assert not pool.has_next()


def test_actor_pool_map_unordered_returns_every_result_as_it_finishes(shared_cluster):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    results = list(pool.map_unordered(lambda a, v: a.slow_double.remote(v, 1.0 if v == 0 else 0.0), range(6)))
    assert sorted(results) == [0, 2, 4, 6, 8, 10]
    assert results[-1] == 0  # the slow one, on its own actor, came last


def test_actor_pool_map_starts_when_iterated_and_drops_unfetched_results(shared_cluster):
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda a, v: a.double.remote(v), 100)
    results = pool.map(lambda a, v: a.double.remote(v), [1, 2])
    assert pool.has_next()  # nothing happened yet: map is lazy
    assert list(results) == [2, 4]  # the result of 100 was never fetched: dropped


def test_actor_pool_submit_and_get_next_keep_submission_order(shared_cluster):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    pool.submit(lambda a, v: a.slow_double.remote(v, 0.3), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    pool.submit(lambda a, v: a.double.remote(v), 3)  # waits for a free actor
    assert not pool.has_free()
    assert [pool.get_next(), pool.get_next(), pool.get_next()] == [2, 4, 6]
    assert not pool.has_next()
    with pytest.raises(StopIteration):
        pool.get_next()
    with pytest.raises(StopIteration):
        pool.get_next_unordered()


def test_actor_pool_get_next_unordered_returns_the_first_finished(shared_cluster):
    pool = ActorPool([Doubler.remote(), Doubler.remote()])
    pool.submit(lambda a, v: a.slow_double.remote(v, 1.0), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    assert pool.get_next_unordered() == 4
    assert pool.get_next_unordered() == 2
    assert pool.has_free()


def test_actor_pool_get_next_times_out_and_keeps_or_drops_the_call(shared_cluster):
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda a, v: a.slow_double.remote(v, 1.0), 5)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.05)
    assert pool.has_next()  # still there
    assert pool.get_next() == 10

    pool.submit(lambda a, v: a.slow_double.remote(v, 1.0), 6)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0.05, ignore_if_timedout=True)
    assert not pool.has_next() and pool.has_free()  # dropped, the actor is back

    pool.submit(lambda a, v: a.slow_double.remote(v, 1.0), 7)
    with pytest.raises(TimeoutError):
        pool.get_next_unordered(timeout=0.05)
    assert pool.get_next_unordered(timeout=30) == 14


def test_actor_pool_idle_actors_can_be_popped_and_pushed(shared_cluster):
    a1, a2 = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a1])
    pool.submit(lambda a, v: a.double.remote(v), 1)
    assert pool.pop_idle() is None  # a1 is busy
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a1)
    pool.push(a2)
    assert pool.get_next() == 2
    assert {pool.pop_idle(), pool.pop_idle()} == {a1, a2}
    assert pool.pop_idle() is None and not pool.has_free()
    pool.submit(lambda a, v: a.double.remote(v), 3)  # no actor: it waits...
    assert not pool.has_next()
    pool.push(a1)  # ...and runs as soon as one comes
    assert pool.get_next() == 6


def test_actor_pool_a_failed_call_raises_and_gives_its_actor_back(shared_cluster):
    pool = ActorPool([Doubler.remote()])
    pool.submit(lambda a, v: a.fail.remote(v), 3)
    with pytest.raises(ValueError, match="no 3"):
        pool.get_next()
    assert pool.has_free()
    with pytest.raises(TypeError, match="must return the ObjectRef"):
        pool.submit(lambda a, v: v, 1)
    assert pool.has_free()
    assert list(pool.map(lambda a, v: a.double.remote(v), [4])) == [8]


def test_actor_pool_is_reachable_as_cluster_util_after_import_cluster(shared_cluster):
    import subprocess
    import sys

    code = ("import sys, cluster; assert 'cluster.util' not in sys.modules; "
            "assert cluster.util.ActorPool is not None; assert cluster.util.queue.Queue; "
            "assert 'joblib' not in sys.modules and 'multiprocessing.pool' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------------------------- Queue


def test_queue_is_first_in_first_out_from_the_driver(shared_cluster):
    from cluster.util.queue import Queue

    q = Queue()
    assert q.empty() and not q.full() and q.size() == 0
    for item in range(10):
        q.put(item)
    assert len(q) == q.qsize() == 10 and not q.empty()
    assert [q.get() for _ in range(10)] == list(range(10))
    assert q.empty()
    q.shutdown()


def test_queue_raises_empty_and_full_as_the_standard_library_does(shared_cluster):
    import queue as stdlib_queue

    from cluster.util.queue import Empty, Full, Queue

    q = Queue(maxsize=2)
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(stdlib_queue.Empty):
        q.get(block=False)
    started = time.monotonic()
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    assert time.monotonic() - started >= 0.2
    q.put_nowait("a")
    q.put("b", timeout=1)
    assert q.full()
    with pytest.raises(Full):
        q.put_nowait("c")
    with pytest.raises(stdlib_queue.Full):
        q.put("c", timeout=0.2)
    with pytest.raises(ValueError, match="non-negative"):
        q.put("c", timeout=-1)
    with pytest.raises(ValueError, match="non-negative"):
        q.get(timeout=-1)
    assert [q.get_nowait(), q.get_nowait()] == ["a", "b"]
    q.shutdown()


def test_queue_batches_go_in_whole_or_not_at_all(shared_cluster):
    from cluster.util.queue import Empty, Full, Queue

    q = Queue(maxsize=3)
    q.put_nowait_batch([1, 2])
    with pytest.raises(Full):
        q.put_nowait_batch([3, 4])
    assert q.size() == 2  # nothing of the refused batch went in
    with pytest.raises(Empty):
        q.get_nowait_batch(3)
    assert q.get_nowait_batch(2) == [1, 2]
    assert q.get_nowait_batch(0) == []
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)
    with pytest.raises(TypeError):
        q.get_nowait_batch("2")
    with pytest.raises(ValueError):
        q.get_nowait_batch(-1)
    q.shutdown()


def test_a_task_puts_into_a_queue_the_driver_reads(shared_cluster):
    from cluster.util.queue import Queue

    q = Queue()

    @cluster.remote(resources={"b": 1})  # on the other node
    def produce(queue, n):
        import time

        time.sleep(0.3)  # the driver is already waiting in get()
        for i in range(n):
            queue.put(("task", i))
        return n

    done = produce.remote(q, 50)
    assert q.get(timeout=60) == ("task", 0)  # a blocking get, woken by the task's put
    assert [q.get(timeout=60) for _ in range(49)] == [("task", i) for i in range(1, 50)]
    assert cluster.get(done, timeout=60) == 50
    q.shutdown()


def test_an_actor_waits_in_get_for_what_the_driver_puts(shared_cluster):
    from cluster.util.queue import Queue

    @cluster.remote
    class Consumer:
        def take(self, queue, n):
            return [queue.get(timeout=60) for _ in range(n)]

    q = Queue()
    consumer = Consumer.remote()
    taken = consumer.take.remote(q, 3)
    time.sleep(0.2)
    assert q.empty()
    for item in "xyz":
        q.put(item)
    assert cluster.get(taken, timeout=60) == ["x", "y", "z"]
    q.shutdown()


def test_queue_async_put_and_get(shared_cluster):
    import asyncio

    from cluster.util.queue import Empty, Queue

    q = Queue(maxsize=1)

    async def main():
        await q.put_async(1)
        getter = asyncio.ensure_future(q.get_async(timeout=30))
        value = await getter
        with pytest.raises(Empty):
            await q.get_async(block=False)
        return value

    assert asyncio.run(main()) == 1
    q.shutdown()


def test_queue_actor_options_and_shutdown(shared_cluster):
    from cluster.exceptions import ActorDiedError
    from cluster.util.queue import Queue

    q = Queue(actor_options={"name": "util-test-queue", "num_cpus": 0})
    assert cluster.get_actor("util-test-queue") == q.actor
    actor = q.actor
    q.put(1)
    q.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        q.put(2)
    with pytest.raises(ActorDiedError):
        cluster.get(actor.qsize.remote(), timeout=30)
    q.shutdown()  # twice is fine

    forced = Queue()
    forced.shutdown(force=True)
    assert forced.actor is None
