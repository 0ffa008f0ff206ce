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
            "assert cluster.util.ActorPool is not None; "
            "assert 'joblib' not in sys.modules and 'multiprocessing.pool' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
