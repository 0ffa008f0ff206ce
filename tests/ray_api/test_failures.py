"""Failures as Ray's public API reports them: the exception hierarchy of ``ray.exceptions``
under the same names, a task's error that is also its cause's type, retries of crashed
workers and of chosen exceptions, actor deaths and timeouts.

(Node and head loss: tests/chaos/; worker crashes in depth: tests/test_e2e_failures.py.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cluster
from cluster import exceptions as ex

# Every exception Ray's API reference lists (ray.exceptions), and what each must subclass here.
RAY_EXCEPTIONS = {
    "RayError": Exception, "RayTaskError": "RayError", "RayActorError": "RayError",
    "TaskCancelledError": "RayError", "TaskUnschedulableError": "RayError",
    "ActorDiedError": "RayActorError", "ActorUnschedulableError": "RayError",
    "ActorUnavailableError": "RayActorError", "AsyncioActorExit": "RayError",
    "LocalRayletDiedError": "RayError", "WorkerCrashedError": "RayError",
    "TaskPlacementGroupRemoved": "RayError", "ActorPlacementGroupRemoved": "RayError",
    "ObjectStoreFullError": "RayError", "OutOfDiskError": "RayError", "OutOfMemoryError": "RayError",
    "ObjectLostError": "RayError", "ObjectFetchTimedOutError": "ObjectLostError",
    "GetTimeoutError": TimeoutError, "OwnerDiedError": "ObjectLostError",
    "PendingCallsLimitExceeded": "RayError", "PlasmaObjectNotAvailable": "RayError",
    "ObjectReconstructionFailedError": "ObjectLostError",
    "ObjectReconstructionFailedMaxAttemptsExceededError": "ObjectLostError",
    "ObjectReconstructionFailedLineageEvictedError": "ObjectLostError",
    "ReferenceCountingAssertionError": "ObjectLostError",
    "RuntimeEnvSetupError": "RayError", "CrossLanguageError": "RayError", "RaySystemError": "RayError",
    "NodeDiedError": "RayError", "UnserializableException": "RayError", "AuthenticationError": "RayError",
}


@cluster.remote
def raises(kind: type, text: str) -> None:
    raise kind(text)


@cluster.remote
def crash_first(counter: str, times: int) -> str:
    """Kills its own worker on the first ``times`` runs; counts runs in a file."""
    runs = int(Path(counter).read_text() or 0) + 1 if Path(counter).exists() else 1
    Path(counter).write_text(str(runs))
    if runs <= times:
        os._exit(1)
    return f"ran {runs} times"


@cluster.remote
def fail_first(counter: str, kind: type) -> str:
    runs = int(Path(counter).read_text()) + 1 if Path(counter).exists() else 1
    Path(counter).write_text(str(runs))
    if runs == 1:
        raise kind("first run fails")
    return f"ran {runs} times"


@cluster.remote
class Fragile:
    def __init__(self, fail: bool) -> None:
        if fail:
            raise RuntimeError("no config")

    def die(self) -> None:
        os._exit(1)

    def ok(self) -> str:
        return "ok"


def test_every_ray_exception_name_exists_with_rays_hierarchy():
    for name, base in RAY_EXCEPTIONS.items():
        cls = getattr(ex, name)
        base_cls = getattr(ex, base) if isinstance(base, str) else base
        assert issubclass(cls, base_cls), (name, base)
        assert issubclass(cls, ex.RayError), name
        assert name in ex.__all__, name


def test_a_task_error_is_a_ray_task_error_and_an_instance_of_its_cause(shared_cluster):
    with pytest.raises(ValueError, match="bad input") as excinfo:
        cluster.get(raises.remote(ValueError, "bad input"), timeout=60)
    error = excinfo.value
    assert isinstance(error, ex.RayTaskError) and isinstance(error, ex.RayError)
    assert type(error.cause) is ValueError and error.cause.args == ("bad input",)
    assert "raises" in str(error) and "raise kind(text)" in str(error)  # the remote traceback


def test_a_crashed_worker_is_retried_up_to_max_retries_then_raises_worker_crashed(shared_cluster, tmp_path):
    assert cluster.get(crash_first.options(max_retries=2).remote(str(tmp_path / "a"), 2), timeout=120) == "ran 3 times"
    with pytest.raises(ex.WorkerCrashedError):
        cluster.get(crash_first.options(max_retries=0).remote(str(tmp_path / "b"), 1), timeout=120)


def test_retry_exceptions_retries_only_the_listed_types(shared_cluster, tmp_path):
    retried = fail_first.options(max_retries=1, retry_exceptions=[ValueError])
    assert cluster.get(retried.remote(str(tmp_path / "a"), ValueError), timeout=60) == "ran 2 times"
    with pytest.raises(KeyError):
        cluster.get(retried.remote(str(tmp_path / "b"), KeyError), timeout=60)
    assert (tmp_path / "b").read_text() == "1"  # not retried


def test_actor_deaths_raise_actor_died_error_a_ray_actor_error(shared_cluster):
    broken = Fragile.remote(True)
    with pytest.raises(ex.ActorDiedError, match="constructor") as excinfo:
        cluster.get(broken.ok.remote(), timeout=60)
    assert isinstance(excinfo.value, ex.RayActorError)
    doomed = Fragile.remote(False)
    assert cluster.get(doomed.ok.remote(), timeout=60) == "ok"
    with pytest.raises(ex.RayActorError):
        cluster.get(doomed.die.remote(), timeout=60)
    with pytest.raises(ex.ActorDiedError):
        cluster.get(doomed.ok.remote(), timeout=60)


def test_get_with_a_timeout_raises_get_timeout_error_a_timeout_error(shared_cluster, tmp_path):
    @cluster.remote
    def wait_for(path: str) -> str:
        while not os.path.exists(path):
            pass
        return "done"

    release = tmp_path / "release"
    ref = wait_for.remote(str(release))
    with pytest.raises(TimeoutError):
        cluster.get(ref, timeout=0.2)
    with pytest.raises(ex.GetTimeoutError):
        cluster.get(ref, timeout=0)
    release.touch()
    assert cluster.get(ref, timeout=60) == "done"
