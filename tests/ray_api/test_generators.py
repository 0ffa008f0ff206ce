"""Generator tasks (Ray's "Ray Generators"): values stream to the caller as they are yielded.

Each test has its own 2-CPU head: several kill workers or leave producers paused, which other
tests must not inherit. Producers and consumers coordinate through files in ``tmp_path`` (the
workers run on this machine): a producer that waits for a signal, or writes how far it got,
shows what happened in what order without any timing.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cluster
from cluster.exceptions import TaskCancelledError, WorkerCrashedError
from cluster.wire import messages as m

PATIENCE_S = 60.0  # how long a producer waits for a signal before it fails the test


@pytest.fixture
def head(make_cluster):
    """A connected two-CPU head."""
    lc = make_cluster(num_cpus=2)
    lc.connect()
    return lc


def _runtime():
    from cluster.api.lifecycle import current_runtime

    return current_runtime()


# ----------------------------------------------------------------------------- streaming


@cluster.remote
def first_then_wait(n: int, go: str, patience: float):
    """Yields 0, then waits until the consumer (having got 0) creates ``go``, then 1..n-1."""
    import os
    import time

    yield 0
    deadline = time.monotonic() + patience
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise TimeoutError("the consumer never signalled: value 0 did not reach it while this ran")
        time.sleep(0.005)
    yield from range(1, n)


def test_a_generator_of_1000_values_streams_them_while_it_runs(head, tmp_path):
    go = tmp_path / "go"
    gen = first_then_wait.remote(1000, str(go), PATIENCE_S)
    assert isinstance(gen, cluster.ObjectRefGenerator)  # (a function that yields streams by default, as Ray)
    first = next(gen)
    # The producer is still running: it is blocked until we signal, so value 0 came before 999 was made.
    assert cluster.get(first, timeout=60) == 0
    assert not gen.is_finished()
    go.touch()
    rest = cluster.get(list(gen), timeout=60)
    assert rest == list(range(1, 1000))
    assert gen.is_finished()
    with pytest.raises(StopIteration):
        next(gen)
    assert cluster.get(gen.completed(), timeout=60) is None


@cluster.remote
def fails_at_five():
    yield from range(5)
    raise ValueError("no value 5")


def test_an_error_at_value_5_arrives_after_values_0_to_4(head):
    gen = fails_at_five.remote()
    refs = list(gen)  # the iteration ends after the ref holding the error (as Ray)
    assert len(refs) == 6
    assert cluster.get(refs[:5], timeout=60) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="no value 5"):
        cluster.get(refs[5], timeout=60)
    with pytest.raises(StopIteration):
        next(gen)
    assert gen.is_finished() and not gen.next_ready()
    with pytest.raises(ValueError, match="no value 5"):
        cluster.get(gen.completed(), timeout=60)


@cluster.remote
def arrays(n: int, nbytes: int):
    import numpy as np

    for i in range(n):
        yield np.full(nbytes, i, dtype=np.uint8)


def test_large_values_go_through_the_node_store_and_small_ones_inline(head):
    runtime = _runtime()
    refs = list(arrays.remote(3, 5 * 10**6))
    values = cluster.get(refs, timeout=60)
    assert [(int(a[0]), int(a[-1]), a.nbytes) for a in values] == [(i, i, 5 * 10**6) for i in range(3)]
    assert all(type(runtime._values[ref.id]) is m.StoredValue for ref in refs)
    small = list(arrays.remote(2, 10))
    assert all(type(runtime._values[ref.id]) is m.InlineValue for ref in small)


@cluster.remote
def add(x, y):
    return x + y


def test_yielded_refs_are_ordinary_refs_owned_by_the_caller(head):
    refs = list(arrays.remote(2, 10))
    assert all(ref.owner == _runtime().address for ref in refs)
    # Passed to another task as an argument, and nested in a list.
    assert cluster.get(add.remote(refs[1], 1), timeout=60).tolist() == [2] * 10
    nested, seven = cluster.get(add.remote([refs[0]], [7]), timeout=60)
    assert nested == refs[0] and seven == 7
    assert cluster.get(nested, timeout=60).tolist() == [0] * 10


def test_async_for_in_an_async_driver(head):
    async def consume():
        gen = arrays.remote(5, 4)
        first = await gen.__anext__()
        values = [(await first).tolist()]
        async for ref in gen:
            values.append((await ref).tolist())
        with pytest.raises(StopAsyncIteration):
            await gen.__anext__()
        return values

    assert asyncio.run(consume()) == [[i] * 4 for i in range(5)]


def test_wait_on_a_generator_is_ready_when_its_next_value_is(head, tmp_path):
    go = tmp_path / "go"
    gen = first_then_wait.remote(2, str(go), PATIENCE_S)
    done = add.remote(1, 2)
    ready, not_ready = cluster.wait([gen], timeout=60)
    assert ready == [gen] and not_ready == []
    assert gen.next_ready()
    assert cluster.get(next(gen), timeout=60) == 0
    # Value 1 waits for our signal: the generator is not ready, the finished task is.
    ready, not_ready = cluster.wait([gen, done], num_returns=2, timeout=0.5)
    assert ready == [done] and not_ready == [gen]
    assert not gen.next_ready()
    go.touch()
    ready, _ = cluster.wait([gen, done], num_returns=2, timeout=60)
    assert ready == [gen, done]
    assert cluster.get(next(gen), timeout=60) == 1
    # At its end, next() does not block: the generator counts as ready.
    ready, _ = cluster.wait([gen], timeout=60)
    assert ready == [gen]
    with pytest.raises(StopIteration):
        next(gen)


def _count_forever(progress: str):
    """Yields 0, 1, 2... forever, writing how many it yielded; writes "closed" when stopped."""
    import os

    i = 0
    try:
        while True:
            with open(progress + ".tmp", "w") as f:
                f.write(str(i + 1))
            os.replace(progress + ".tmp", progress)
            yield i
            i += 1
    finally:
        with open(progress + ".closed", "w") as f:
            f.write(str(i))


@cluster.remote
def counts_forever(progress: str):
    yield from _count_forever(progress)


def _progress(path: Path) -> int:
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return 0


def test_cancel_stops_a_running_generator(head, tmp_path, e2e):
    progress = tmp_path / "progress"
    gen = counts_forever.remote(str(progress))
    assert cluster.get([next(gen) for _ in range(3)], timeout=60) == [0, 1, 2]
    cluster.cancel(gen)
    errors = 0
    for ref in gen:  # what was yielded before the cancel, then the error, then the end
        try:
            cluster.get(ref, timeout=60)
        except TaskCancelledError:
            errors += 1
    assert errors == 1
    with pytest.raises(TaskCancelledError):
        cluster.get(gen.completed(), timeout=60)
    # It stopped: the next generator runs on the same two CPUs and gets its values.
    assert cluster.get(list(arrays.remote(2, 1)), timeout=60)[1].tolist() == [1]


@cluster.remote(_generator_backpressure_num_objects=3)
def counts_to(n: int, progress: str):
    import os

    for i in range(n):
        with open(progress + ".tmp", "w") as f:
            f.write(str(i + 1))  # about to yield value i
        os.replace(progress + ".tmp", progress)
        yield i


def test_back_pressure_pauses_the_producer_while_3_values_are_unconsumed(head, tmp_path, e2e):
    progress = tmp_path / "progress"
    gen = counts_to.remote(30, str(progress))
    e2e.wait_until(lambda: _progress(progress) >= 3, what="the producer to yield 3 values")
    # Paused after 3 (without back-pressure it would have made all 30 in the meantime).
    assert _progress(progress) == 3
    stream = _runtime().streams._streams[gen.task_id()]
    e2e.wait_until(lambda: stream.received == 3, what="the 3 values to arrive")
    # A round trip through the cluster, and it is still paused.
    assert cluster.get(add.remote(1, 1), timeout=60) == 2
    assert _progress(progress) == 3 and stream.received == 3
    taken = []
    for ref in gen:
        taken.append(cluster.get(ref, timeout=60))
        assert _progress(progress) <= len(taken) + 3  # never more than 3 ahead of us
        if len(taken) == 1:
            e2e.wait_until(lambda: _progress(progress) == 4, what="the producer to go on after one was taken")
    assert taken == list(range(30))


def test_dropping_the_generator_stops_the_producer_and_frees_its_values(head, tmp_path, e2e):
    progress = tmp_path / "progress"
    gen = counts_forever.remote(str(progress))
    assert cluster.get(next(gen), timeout=60) == 0
    task_id = gen.task_id()
    runtime = _runtime()
    del gen
    gc.collect()
    e2e.wait_until((tmp_path / "progress.closed").exists, what="the producer to be stopped")
    # It stopped at a yield (its finally ran), and nothing of it stays with the owner.
    e2e.wait_until(lambda: task_id not in runtime._tasks, what="the task to end")
    assert not [oid for oid in list(runtime._owned) if oid[:16] == task_id]


def test_dropping_a_generator_that_has_not_started_drops_its_task(head, e2e):
    runtime = _runtime()
    gen = arrays.options(resources={"nowhere": 1}).remote(1, 1)  # no node has it: it waits
    task_id = gen.task_id()
    assert task_id in runtime._tasks
    del gen
    gc.collect()
    e2e.wait_until(lambda: task_id not in runtime._tasks, what="the waiting task to be dropped")


DRIVER_EXITS = textwrap.dedent(
    """
    import os
    import sys
    import cluster

    @cluster.remote
    def counts_forever(progress):
        import os

        open(progress + ".pid", "w").write(str(os.getpid()))
        i = 0
        while True:
            yield i
            i += 1

    cluster.init(sys.argv[1], token=sys.argv[2])
    if sys.argv[3] == "task":
        gen = counts_forever.remote(sys.argv[4])
    else:  # a generator method of an actor someone else owns: it outlives this driver
        gen = cluster.get_actor("streamer").counts_forever.remote(sys.argv[4])
    print(cluster.get(next(gen), timeout=60), flush=True)
    os._exit(0)  # gone at once, generator and all: no shutdown, no goodbye
    """
)


def _run_driver(head, tmp_path, what: str, progress: Path) -> None:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER_EXITS)
    out = subprocess.run([sys.executable, str(script), head.address, head.token, what, str(progress)],
                         capture_output=True, text=True, timeout=120, env={**os.environ, **head.env})
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr


def test_a_driver_that_exits_stops_its_generator_tasks(head, tmp_path, e2e):
    progress = tmp_path / "progress"
    _run_driver(head, tmp_path, "task", progress)
    pid = int(Path(str(progress) + ".pid").read_text())
    # (its node takes back the leases of an owner that is gone, and that ends the worker)
    e2e.wait_until(lambda: not e2e.is_running(pid), what="the orphaned producer to stop")


@cluster.remote
class Streamer:
    def counts_forever(self, progress: str):
        """As the task counts_forever; the actor lives on after the generator stops."""
        yield from _count_forever(progress)

    def ping(self) -> str:
        return "pong"


def test_a_driver_that_exits_stops_its_generator_calls_to_an_actor_it_does_not_own(head, tmp_path, e2e):
    actor = Streamer.options(name="streamer").remote()
    assert cluster.get(actor.ping.remote(), timeout=60) == "pong"
    progress = tmp_path / "progress"
    _run_driver(head, tmp_path, "actor", progress)
    # The actor's worker lives on (we own it): the producer itself saw its caller go, and stopped.
    e2e.wait_until((tmp_path / "progress.closed").exists, what="the orphaned producer to stop")
    assert cluster.get(actor.ping.remote(), timeout=60) == "pong"


# ---------------------------------------------------------------------------- actors


@cluster.remote
class Producer:
    def __init__(self) -> None:
        self.made = 0

    def values(self, n: int):
        for i in range(n):
            self.made += 1
            yield i * 10

    def failing(self):
        yield "one"
        raise KeyError("two")

    def total(self) -> int:
        return self.made


@cluster.remote
class AsyncProducer:
    async def values(self, n: int):
        import asyncio

        for i in range(n):
            await asyncio.sleep(0)
            yield i * 100

    async def ping(self) -> str:
        return "pong"


def test_a_sync_actor_method_that_yields_streams(head):
    actor = Producer.remote()
    gen = actor.values.remote(4)
    assert isinstance(gen, cluster.ObjectRefGenerator)
    assert cluster.get(list(gen), timeout=60) == [0, 10, 20, 30]
    assert cluster.get(actor.total.remote(), timeout=60) == 4  # the actor's state, as it ran
    refs = list(actor.failing.remote())
    assert cluster.get(refs[0], timeout=60) == "one"
    with pytest.raises(KeyError):
        cluster.get(refs[1], timeout=60)
    assert len(refs) == 2


def test_an_async_actor_async_generator_streams_while_the_actor_answers(head, tmp_path):
    actor = AsyncProducer.remote()
    gen = actor.values.remote(50)
    assert cluster.get(actor.ping.remote(), timeout=60) == "pong"
    assert cluster.get(list(gen), timeout=60) == [i * 100 for i in range(50)]


@cluster.remote(max_concurrency=2)
class ThreadedProducer:
    def values(self, n: int):
        import threading

        for i in range(n):
            yield (i, threading.current_thread().name)


def test_a_threaded_actor_streams_from_its_pool_threads(head):
    actor = ThreadedProducer.remote()
    gens = [actor.values.remote(20), actor.values.remote(20)]
    for gen in gens:
        values = cluster.get(list(gen), timeout=60)
        assert [i for i, _ in values] == list(range(20))
        assert all(thread.startswith("actor") for _, thread in values)


@cluster.remote
class AsyncCounter:
    async def counts_forever(self, progress: str):
        import asyncio

        i = 0
        try:
            while True:
                await asyncio.sleep(0)
                yield i
                i += 1
        finally:
            with open(progress + ".closed", "w") as f:
                f.write(str(i))

    async def ping(self) -> str:
        return "pong"


def test_cancel_and_drop_stop_generators_on_an_async_actor_at_their_next_yield(head, tmp_path, e2e):
    actor = AsyncCounter.remote()
    cancelled = actor.counts_forever.remote(str(tmp_path / "cancelled"))
    assert cluster.get(next(cancelled), timeout=60) == 0
    cluster.cancel(cancelled)
    with pytest.raises(TaskCancelledError):
        cluster.get(cancelled.completed(), timeout=60)
    assert (tmp_path / "cancelled.closed").exists()  # (it ended there: its finally ran first)
    refs = list(cancelled)
    with pytest.raises(TaskCancelledError):
        cluster.get(refs[-1], timeout=60)
    dropped = actor.counts_forever.remote(str(tmp_path / "dropped"))
    assert cluster.get(next(dropped), timeout=60) == 0
    del dropped
    gc.collect()
    e2e.wait_until((tmp_path / "dropped.closed").exists, what="the dropped generator to stop")
    assert cluster.get(actor.ping.remote(), timeout=60) == "pong"  # the actor goes on


@cluster.remote(max_retries=2, retry_exceptions=[OSError])
def flaky_at_three(marker: str):
    import os

    for i in range(6):
        if i == 3 and not os.path.exists(marker):
            open(marker, "w").close()
            raise OSError("the disk hiccupped")
        yield i


def test_retry_exceptions_runs_a_generator_again_from_where_the_caller_is(head, tmp_path):
    gen = flaky_at_three.remote(str(tmp_path / "raised"))
    assert cluster.get(list(gen), timeout=60) == list(range(6))
    assert (tmp_path / "raised").exists()


@cluster.remote
def yields_refs(n: int):
    import cluster

    for i in range(n):
        yield [cluster.put(i * 2)]  # refs owned by this worker, inside the values


def test_values_holding_refs_keep_them_alive(head):
    holders = cluster.get(list(yields_refs.remote(3)), timeout=60)
    assert cluster.get([held[0] for held in holders], timeout=60) == [0, 2, 4]


def test_back_pressure_on_an_actor_method(head, e2e):
    actor = Producer.remote()
    gen = actor.values.options(_generator_backpressure_num_objects=2).remote(10)
    stream = _runtime().streams._streams[gen.task_id()]
    e2e.wait_until(lambda: stream.received == 2, what="two values")
    assert cluster.get(add.remote(1, 1), timeout=60) == 2  # a round trip through the cluster...
    assert stream.received == 2  # ... and the actor still waits for us to take one
    assert cluster.get(list(gen), timeout=60) == [i * 10 for i in range(10)]


# --------------------------------------------------------------------- num_returns="dynamic"


@cluster.remote(num_returns="dynamic")
def dynamic_values(n: int):
    for i in range(n):
        yield i + 1


def test_num_returns_dynamic_returns_one_ref_holding_the_refs_of_all_values(head):
    ref = dynamic_values.remote(4)
    assert isinstance(ref, cluster.ObjectRef)
    refs = cluster.get(ref, timeout=60)
    assert isinstance(refs, cluster.DynamicObjectRefGenerator) and len(refs) == 4
    assert cluster.get(list(refs), timeout=60) == [1, 2, 3, 4]
    # The values live as long as the refs to them: dropping the container keeps what we hold.
    kept = list(refs)[2]
    del ref, refs
    gc.collect()
    assert cluster.get(kept, timeout=60) == 3


# ---------------------------------------------------------------------------- faults


@cluster.remote(max_retries=1)
def dies_once_at_five(marker: str):
    import os

    for i in range(10):
        if i == 5 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)  # the worker dies mid-stream, once
        yield i


def test_a_worker_dying_mid_stream_runs_it_again_without_repeating_values(head, tmp_path):
    gen = dies_once_at_five.remote(str(tmp_path / "died"))
    assert cluster.get(list(gen), timeout=60) == list(range(10))
    assert (tmp_path / "died").exists()


def test_a_worker_dying_with_no_retries_left_ends_the_stream_with_the_error(head, tmp_path):
    gen = dies_once_at_five.options(max_retries=0).remote(str(tmp_path / "died"))
    refs = list(gen)
    assert cluster.get(refs[:5], timeout=60) == [0, 1, 2, 3, 4]
    with pytest.raises(WorkerCrashedError, match="max_retries=0"):
        cluster.get(refs[5], timeout=60)
    assert len(refs) == 6


# ------------------------------------------------------------------------- bad input


def test_bad_uses_say_what_is_wrong(head):
    with pytest.raises(ValueError, match="only be used with generator functions"):
        cluster.remote(num_returns="streaming")(lambda: 1)
    with pytest.raises(ValueError, match="_generator_backpressure_num_objects"):
        arrays.options(_generator_backpressure_num_objects=0)
    with pytest.raises(ValueError, match="num_returns"):
        arrays.options(num_returns="lots")
    gen = arrays.remote(1, 1)
    with pytest.raises(TypeError, match="ObjectRefGenerator is not allowed"):
        cluster.get(gen)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(gen)
    with pytest.raises(TypeError, match="cannot be pickled"):
        add.remote(gen, 1)
    with pytest.raises(NotImplementedError):
        gen.send(1)
    assert cluster.get(next(gen), timeout=60).tolist() == [0]


REMOTE_CLIENT = textwrap.dedent(
    """
    import sys
    import cluster

    @cluster.remote
    def gen():
        yield 1

    cluster.init(sys.argv[1], token=sys.argv[2])
    try:
        gen.remote()
    except NotImplementedError as exc:
        print("refused:", exc)
    cluster.shutdown()
    """
)


def test_a_remote_client_is_told_generators_do_not_run_through_it_yet(make_cluster, tmp_path):
    lc = make_cluster(num_cpus=1)
    script = tmp_path / "client.py"
    script.write_text(REMOTE_CLIENT)
    env = {k: v for k, v in lc.env.items() if not k.startswith("CLUSTER_")}
    out = subprocess.run([sys.executable, str(script), f"cluster://{lc.address}", lc.token],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: generator tasks do not run through a remote client" in out.stdout
