"""Ray's runtime context: the job id every task and actor of a driver shares, the resources a
call holds, its names, ``is_canceled()`` (cooperative cancel), ``current_actor`` and
``was_current_actor_reconstructed``.

(Node, task, actor and worker ids and the namespace: tests/ray_api/test_basics.py.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cluster
from cluster.exceptions import TaskCancelledError


@cluster.remote
def job_of(depth: int) -> list:
    mine = cluster.get_runtime_context().get_job_id()
    return [mine] + (cluster.get(job_of.remote(depth - 1)) if depth else [])


@cluster.remote
class JobActor:
    def __init__(self) -> None:
        self.at_init = cluster.get_runtime_context().get_job_id()

    def jobs(self) -> list:
        return [self.at_init, cluster.get_runtime_context().get_job_id()]


@cluster.remote
def context_of_task() -> dict:
    context = cluster.get_runtime_context()
    return {"resources": context.get_assigned_resources(), "name": context.get_task_name(),
            "function": context.get_task_function_name(), "accelerators": context.get_accelerator_ids()}


@cluster.remote
class Describer:
    def describe(self) -> dict:
        context = cluster.get_runtime_context()
        return {"resources": context.get_assigned_resources(), "name": context.get_task_name(),
                "function": context.get_task_function_name()}


def _wait_for(path: Path) -> None:
    while not path.exists():
        time.sleep(0.01)


@cluster.remote
class Cooperative:
    """Its calls wait at a gate, or until they are cancelled, and say which it was."""

    def __init__(self) -> None:
        self.cancelled: list[int] = []

    def work(self, i: int, folder: str) -> str:
        Path(folder, f"started{i}").touch()
        context = cluster.get_runtime_context()
        while not Path(folder, "gate").exists() and not context.is_canceled():
            time.sleep(0.01)
        if context.is_canceled():
            self.cancelled.append(i)
            return f"{i} stopped early"
        return f"{i} done"

    def seen(self) -> list:
        return sorted(self.cancelled)


def test_every_task_and_actor_of_a_driver_has_its_job_id_and_a_second_driver_the_next(shared_cluster):
    job = cluster.get_runtime_context().get_job_id()
    assert len(job) == 8 and job != "00000000"  # 4 bytes, little-endian, as Ray's JobID.hex()
    assert cluster.get(job_of.remote(2), timeout=60) == [job] * 3  # nested tasks: the same job
    actor = JobActor.remote()
    assert cluster.get(actor.jobs.remote(), timeout=60) == [job, job]
    assert cluster.get_runtime_context().get()["job_id"] == job
    second = subprocess.run(
        [sys.executable, "-c", "import cluster; cluster.init(); print(cluster.get_runtime_context().get_job_id())"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CLUSTER_ADDRESS": shared_cluster.address, "CLUSTER_TOKEN": shared_cluster.token})
    assert second.returncode == 0, second.stderr[-3000:]
    other = second.stdout.strip().splitlines()[-1]
    assert int.from_bytes(bytes.fromhex(other), "little") > int.from_bytes(bytes.fromhex(job), "little")


def test_a_call_knows_its_resources_names_and_accelerators(shared_cluster):
    plain = cluster.get(context_of_task.remote(), timeout=60)
    assert plain["resources"] == {"CPU": 1.0} and plain["accelerators"] == {"GPU": []}
    assert plain["name"] == "context_of_task"
    assert plain["function"].endswith(".context_of_task")
    shaped = cluster.get(context_of_task.options(num_cpus=0.5, resources={"a": 1}, name="shaped").remote(), timeout=60)
    assert shaped["resources"] == {"CPU": 0.5, "a": 1.0} and shaped["name"] == "shaped"
    actor = Describer.remote()  # an actor holds no CPU while it runs (Ray's default)
    described = cluster.get(actor.describe.remote(), timeout=60)
    assert described["resources"] == {} and described["name"] == "Describer.describe"
    assert described["function"].endswith("Describer.describe")
    holding = Describer.options(num_cpus=1).remote()
    assert cluster.get(holding.describe.remote(), timeout=60)["resources"] == {"CPU": 1.0}
    for handle in (actor, holding):
        cluster.kill(handle)
    with pytest.raises(RuntimeError, match="not in a driver"):
        cluster.get_runtime_context().is_canceled()


def test_is_canceled_turns_true_in_a_running_actor_call_and_its_caller_sees_the_cancel(shared_cluster, tmp_path, e2e):
    actor = Cooperative.options(max_concurrency=3).remote()  # threaded: the three run at once
    refs = [actor.work.remote(i, str(tmp_path)) for i in range(3)]
    e2e.wait_until(lambda: all((tmp_path / f"started{i}").exists() for i in range(3)), timeout=60,
                   what="the three calls to start")
    cluster.cancel(refs[1])
    with pytest.raises(TaskCancelledError):  # (the gate opens only after: the cancel must not lose a race)
        cluster.get(refs[1], timeout=60)
    (tmp_path / "gate").touch()
    assert cluster.get([refs[0], refs[2]], timeout=60) == ["0 done", "2 done"]
    assert cluster.get(actor.seen.remote(), timeout=60) == [1]  # only the cancelled call saw it

    single = Cooperative.remote()  # one call at a time, on the worker's main thread
    (tmp_path / "single").mkdir()
    ref = single.work.remote(7, str(tmp_path / "single"))
    e2e.wait_until((tmp_path / "single" / "started7").exists, timeout=60, what="the call to start")
    cluster.cancel(ref)
    with pytest.raises(TaskCancelledError):
        cluster.get(ref, timeout=60)
    assert cluster.get(single.seen.remote(), timeout=60) == [7]  # not interrupted: it saw the flag
    for handle in (actor, single):
        cluster.kill(handle)


def test_a_cancelled_task_that_catches_the_interrupt_sees_is_canceled(shared_cluster, tmp_path, e2e):
    @cluster.remote
    def stubborn(folder: str) -> str:
        Path(folder, "started").touch()
        try:
            _wait_for(Path(folder, "never"))
        except KeyboardInterrupt:
            Path(folder, "canceled" if cluster.get_runtime_context().is_canceled() else "not canceled").touch()
        return "finished anyway"

    ref = stubborn.remote(str(tmp_path))
    e2e.wait_until((tmp_path / "started").exists, timeout=60, what="the task to start")
    cluster.cancel(ref)
    with pytest.raises(TaskCancelledError):
        cluster.get(ref, timeout=60)
    assert (tmp_path / "canceled").exists()


def test_is_canceled_is_refused_in_an_async_actor(shared_cluster):
    @cluster.remote
    class Async:
        async def check(self) -> bool:
            return cluster.get_runtime_context().is_canceled()

    actor = Async.remote()
    with pytest.raises(RuntimeError, match="This method is not supported in an async actor"):
        cluster.get(actor.check.remote(), timeout=60)
    cluster.kill(actor)


@cluster.remote(max_concurrency=2)  # (its call through a task comes back to it while it waits)
class SelfAware:
    def me(self) -> str:
        return cluster.get_runtime_context().get_actor_id()

    def through_a_task(self) -> str:
        handle = cluster.get_runtime_context().current_actor
        return cluster.get(call_me.remote(handle))

    def life(self) -> tuple:
        return cluster.get_runtime_context().was_current_actor_reconstructed, os.getpid()


@cluster.remote
def call_me(handle) -> str:
    return cluster.get(handle.me.remote())


def test_current_actor_and_was_current_actor_reconstructed(shared_cluster, e2e):
    actor = SelfAware.options(max_restarts=1).remote()
    assert cluster.get(actor.through_a_task.remote(), timeout=60) == actor._actor_id.hex()
    reconstructed, pid = cluster.get(actor.life.remote(), timeout=60)
    assert reconstructed is False
    os.kill(pid, signal.SIGKILL)  # (the actor's worker, started by this test's cluster)

    def restarted() -> bool:
        try:
            return cluster.get(actor.life.remote(), timeout=60)[1] != pid
        except cluster.exceptions.RayActorError:
            return False  # (the call that met the death; the restart follows)

    e2e.wait_until(restarted, timeout=60, what="the actor to restart")
    assert cluster.get(actor.life.remote(), timeout=60)[0] is True
    with pytest.raises(RuntimeError, match="only meaningful inside an actor"):
        _ = cluster.get_runtime_context().was_current_actor_reconstructed
    cluster.kill(actor)
