"""A task or actor call blocked in cluster.get/wait never holds up what it waits for.

On one CPU: the blocked task's worker gives its CPU back to the node while it waits (so
another worker can run the task it waits for), the results it made before are sent before it
blocks, and tasks its owner pipelined behind it on that worker are taken back and run
elsewhere. Every get here has a timeout, so a deadlock fails the test instead of hanging it.
Each test has its own one-CPU head: a deadlocked worker must not be inherited.
"""

from __future__ import annotations

import itertools

import pytest

import cluster

MIB = 1024 * 1024
TIMEOUT_S = 30  # a bound, not an expectation: each of these takes well under a second


# ------------------------------------------------------------------ remote functions
# (self-contained: module-level helpers of a test module cannot be imported on workers)


@cluster.remote
def make_value(kind: str):
    if kind == "int":
        return 7
    import numpy as np

    return np.ones(10 * MIB // 8)  # 10 MB: goes through the object store


@cluster.remote
def consume(x):
    """Gets the value if it came inside a list (a nested ref), and summarizes it."""
    if isinstance(x, list):
        x = cluster.get(x[0])
    return x if isinstance(x, int) else ("array", float(x.sum()))


@cluster.remote
def small() -> int:
    return 1


@cluster.remote
def echo(x: list):
    return cluster.get(x[0])


@cluster.remote
def echo_after_wait(x: list):
    ready, _ = cluster.wait(x, num_returns=len(x))
    return cluster.get(ready[0])


@cluster.remote
def wait_for_file(path: str) -> int:
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.01)
    return 1


@cluster.remote
def plus_one(x: int) -> int:
    return x + 1


@cluster.remote
def calls_tasks() -> int:
    """A task that waits on tasks of its own (it owns them), holding the only CPU."""
    return cluster.get(echo.remote([small.remote()]))


@cluster.remote
class Producer:
    def make(self, kind: str):
        if kind == "int":
            return 7
        import numpy as np

        return np.ones(10 * MIB // 8)


@cluster.remote
class Consumer:
    def consume(self, x):
        if isinstance(x, list):
            x = cluster.get(x[0])
        return x if isinstance(x, int) else ("array", float(x.sum()))

    def call_tasks(self) -> int:
        return cluster.get(echo.remote([small.remote()]))


@pytest.fixture
def head(make_cluster):
    """A connected one-CPU head."""
    lc = make_cluster(num_cpus=1)
    lc.connect()
    return lc


def get_or_fail(ref, what: str):
    try:
        return cluster.get(ref, timeout=TIMEOUT_S)
    except cluster.exceptions.GetTimeoutError:
        pytest.fail(f"{what}: no result after {TIMEOUT_S}s (deadlocked)")


# ----------------------------------------------------------------------------- tests


@pytest.mark.timeout(300)
def test_every_producer_consumer_value_and_passing_on_one_cpu(head):
    producer, consumer = Producer.remote(), Consumer.remote()  # (actors hold no CPU)
    expected = {"int": 7, "array": ("array", float(10 * MIB // 8))}
    combinations = itertools.product(("task", "actor"), ("task", "actor"), ("int", "array"), ("direct", "in a list"))
    for made_by, used_by, kind, passing in combinations:
        ref = make_value.remote(kind) if made_by == "task" else producer.make.remote(kind)
        arg = ref if passing == "direct" else [ref]
        out = consume.remote(arg) if used_by == "task" else consumer.consume.remote(arg)
        what = f"{kind} made by a {made_by}, passed {passing} to a {used_by}"
        assert get_or_fail(out, what) == expected[kind], what


@pytest.mark.timeout(300)
def test_a_task_that_gets_a_ref_from_its_list_argument_on_one_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("CLUSTER_TMPDIR", str(tmp_path))
    cluster.init(num_cpus=1)
    for i in range(10):
        assert get_or_fail(echo.remote([small.remote()]), f"round {i}") == 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize("waits_in", ["get", "wait"])
def test_a_task_queued_behind_a_blocked_task_on_its_worker_runs_elsewhere(head, tmp_path, waits_in):
    # The owner pipelines tasks to a busy worker. `consumer` goes behind `blocker`; `producer`
    # needs blocker's result, so it is queued once blocker is done: behind consumer, which by
    # then waits for it.
    consumer_fn = echo if waits_in == "get" else echo_after_wait
    for i in range(3):
        release = tmp_path / f"release-{i}"
        blocker = wait_for_file.remote(str(release))
        producer = plus_one.remote(blocker)
        consumer = consumer_fn.remote([producer])
        release.touch()
        assert get_or_fail(consumer, f"round {i}") == 2


@pytest.mark.timeout(300)
def test_a_task_that_waits_for_its_own_tasks_lends_them_its_cpu(head):
    assert get_or_fail(calls_tasks.remote(), "a task calling tasks") == 1


@pytest.mark.timeout(300)
def test_an_actor_that_waits_for_its_tasks(head):
    actor = Consumer.remote()
    for i in range(5):
        assert get_or_fail(actor.call_tasks.remote(), f"round {i}") == 1
