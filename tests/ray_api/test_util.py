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
            "assert cluster.util.ActorPool is not None; assert cluster.util.queue.Queue; import cluster.util.joblib; "
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


# ------------------------------------------------------------------- multiprocessing.Pool


def test_pool_map_over_1000_items_equals_the_builtin_map(shared_cluster):
    from cluster.util.multiprocessing import Pool

    def f(x):
        return x * x - 3

    with Pool() as pool:  # one process per CPU of the cluster: 2
        assert pool.map(f, range(1000)) == list(map(f, range(1000)))
        assert pool.map(f, range(1000), chunksize=7) == list(map(f, range(1000)))
        assert pool.map(f, []) == []


def test_pool_imap_starmap_and_apply(shared_cluster):
    from cluster.util.multiprocessing import Pool

    def slow_square(x):
        import time

        time.sleep(0.5 if x == 0 else 0)
        return x * x

    def add(a, b=0, c=0):
        return a + b + c

    with Pool(2) as pool:
        assert list(pool.imap(slow_square, range(20))) == [x * x for x in range(20)]
        assert list(pool.imap(slow_square, iter(range(20)), chunksize=3)) == [x * x for x in range(20)]
        unordered = list(pool.imap_unordered(slow_square, range(20)))
        assert sorted(unordered) == [x * x for x in range(20)]
        assert unordered.index(0) >= 10  # the other process's ten results did not wait for the slow one
        assert pool.starmap(add, [(1, 2), (3, 4), (5, 6)]) == [3, 7, 11]
        assert pool.starmap_async(add, [(1, 1)]).get(timeout=60) == [2]
        assert pool.apply(add, (1,), {"b": 2, "c": 3}) == 6


def test_pool_async_results_wait_time_out_and_call_back(shared_cluster):
    import multiprocessing
    import threading

    from cluster.util.multiprocessing import Pool, TimeoutError

    assert TimeoutError is multiprocessing.TimeoutError

    def sleepy(seconds):
        import time

        time.sleep(seconds)
        return seconds

    got, done = [], threading.Event()
    with Pool(2) as pool:
        slow = pool.apply_async(sleepy, (1.0,), callback=lambda value: (got.append(value), done.set()))
        assert not slow.ready()
        with pytest.raises(ValueError, match="not ready"):
            slow.successful()
        with pytest.raises(TimeoutError):
            slow.get(timeout=0.05)
        slow.wait(timeout=0.05)
        assert not slow.ready()
        slow.wait()
        assert slow.ready() and slow.successful() and slow.get() == 1.0
        assert done.wait(timeout=30) and got == [1.0]

        mapped = pool.map_async(sleepy, [0.0, 0.1, 0.0], chunksize=1)
        assert mapped.get(timeout=60) == [0.0, 0.1, 0.0]


def test_pool_hands_new_work_to_the_process_that_is_free(shared_cluster):
    from cluster.util.multiprocessing import Pool

    def pid_after(seconds):
        import os
        import time

        time.sleep(seconds)
        return os.getpid()

    with Pool(2) as pool:
        slow = pool.apply_async(pid_after, (3.0,))
        quick = [pool.apply_async(pid_after, (0.0,)).get(timeout=60) for _ in range(4)]
        assert not slow.ready()  # none of the quick calls waited behind the slow one
        assert slow.get(timeout=60) not in quick and len(set(quick)) == 1


def test_pool_raises_the_function_s_own_exception(shared_cluster):
    import threading

    from cluster.util.multiprocessing import Pool

    def check(x):
        if x == 3:
            raise KeyError(f"bad {x}")
        return x

    errors, called = [], threading.Event()
    with Pool(2) as pool:
        with pytest.raises(KeyError, match="bad 3"):
            pool.map(check, range(10))
        failed = pool.apply_async(check, (3,), error_callback=lambda exc: (errors.append(exc), called.set()))
        failed.wait(timeout=60)
        assert failed.ready() and not failed.successful()
        assert called.wait(timeout=30) and isinstance(errors[0], KeyError)
        results = pool.imap(check, range(5))
        assert [next(results), next(results), next(results)] == [0, 1, 2]
        with pytest.raises(KeyError):
            next(results)
        assert next(results) == 4  # the iterator goes on after a failed item, as multiprocessing's does


def test_pool_initializer_runs_in_each_process_and_maxtasksperchild_replaces_it(shared_cluster):
    from cluster.util.multiprocessing import Pool

    def initializer(value):
        import builtins

        builtins.pool_test_initialized = value

    def read(_):
        import builtins
        import os

        return builtins.pool_test_initialized, os.getpid()

    with Pool(1, initializer=initializer, initargs=("ready",), maxtasksperchild=1) as pool:
        outcomes = [pool.apply(read, (i,)) for i in range(3)]
    assert {value for value, _ in outcomes} == {"ready"}
    assert len({pid for _, pid in outcomes}) == 3  # a fresh process for each task


def test_pool_close_join_terminate_and_bad_arguments(shared_cluster):
    from cluster.util.multiprocessing import Pool

    def ident(x):
        return x

    pool = Pool(2)
    pending = pool.map_async(ident, range(10))
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="not running"):
        pool.apply(ident, (1,))
    pool.join()  # waits for what was submitted, then stops the processes
    assert pending.get(timeout=10) == list(range(10))

    with Pool(1) as pool:
        pass
    with pytest.raises(ValueError, match="not running"):
        pool.map(ident, [1])  # __exit__ terminated it

    with pytest.raises(ValueError, match="at least 1"):
        Pool(0)
    with pytest.raises(ValueError, match="the cluster has 2"):
        Pool(3)
    with pytest.raises(TypeError, match="initializer"):
        Pool(1, initializer=5)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(1, maxtasksperchild=0)
    with Pool(1) as pool:
        with pytest.raises(ValueError, match="Chunksize"):
            pool.map(ident, [1], chunksize=0)
        with pytest.raises(NotImplementedError):
            import pickle

            pickle.dumps(pool)


def test_pool_connects_a_process_that_is_not_connected_yet(shared_cluster):
    import os
    import subprocess
    import sys

    script = (
        "import cluster\n"
        "from cluster.util.multiprocessing import Pool\n"
        "assert not cluster.is_initialized()\n"
        f"with Pool(1, ray_address={shared_cluster.address!r}) as pool:\n"
        "    print(pool.map(abs, [-1, -2, 3]))\n"
        "assert cluster.is_initialized()\n"
    )
    env = {**os.environ, "CLUSTER_TOKEN": shared_cluster.token}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[1, 2, 3]"


# ------------------------------------------------------------------------------- joblib


def test_joblib_parallel_runs_on_the_cluster_under_both_names(shared_cluster):
    import os

    import joblib

    from cluster.util.joblib import register_cluster, register_ray

    def where(i):
        import os

        return i * 10, os.getpid()

    register_ray()
    with joblib.parallel_backend("ray"):  # n_jobs=-1: every CPU of the cluster
        out = joblib.Parallel()(joblib.delayed(where)(i) for i in range(200))
    assert [value for value, _ in out] == [i * 10 for i in range(200)]
    assert os.getpid() not in {pid for _, pid in out}  # none ran in the driver

    register_cluster()
    with joblib.parallel_backend("cluster"):
        assert joblib.Parallel(n_jobs=2)(joblib.delayed(pow)(i, 2) for i in range(10)) == [i * i for i in range(10)]


def test_joblib_raises_the_function_s_exception(shared_cluster):
    import joblib

    from cluster.util.joblib import register_ray

    def check(i):
        if i == 7:
            raise ZeroDivisionError(f"no {i}")
        return i

    register_ray()
    with joblib.parallel_backend("ray"), pytest.raises(ZeroDivisionError, match="no 7"):
        joblib.Parallel(n_jobs=2)(joblib.delayed(check)(i) for i in range(20))


def test_joblib_missing_is_a_clear_import_error():
    import subprocess
    import sys

    code = ("import sys; sys.modules['joblib'] = None\n"
            "from cluster.util.joblib import register_ray\n"
            "try:\n    register_ray()\nexcept ImportError as exc:\n    print(exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "the joblib backend needs joblib: pip install joblib", proc.stderr
