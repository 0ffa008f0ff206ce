"""A task's exception reaches its caller: as cluster.TaskError, as its own type, with the remote traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import cluster

THIS_FILE = os.path.basename(__file__)


class InventoryError(Exception):
    """A user's own exception class, defined at module level the way users write them."""


@cluster.remote
def parse_quantity(x: int) -> int:
    if x > 0:
        raise ValueError(f"bad quantity {x}")
    return x


@cluster.remote
def reserve_inventory(item: str) -> None:
    raise InventoryError(f"{item} is out of stock")


@cluster.remote
def identity(x: object) -> object:
    return x


@cluster.remote
def fail_twice_then_succeed(folder: str) -> int:
    """Counts its attempts in ``folder``; raises on the first two."""
    attempt = len(list(Path(folder).iterdir())) + 1
    Path(folder, f"attempt-{attempt}").write_text(str(os.getpid()))
    if attempt <= 2:
        raise RuntimeError(f"flaky failure on attempt {attempt}")
    return attempt


def test_a_task_exception_is_raised_by_get_as_task_error_and_as_its_type(shared_cluster):
    with pytest.raises(ValueError) as excinfo:
        cluster.get(parse_quantity.remote(3), timeout=60)

    err = excinfo.value
    assert isinstance(err, cluster.TaskError)
    assert isinstance(err, cluster.exceptions.ClusterError)
    assert err.function_name == "parse_quantity"
    assert err.args == ("bad quantity 3",)
    assert isinstance(err.cause, ValueError)
    text = str(err)
    assert "parse_quantity" in text
    assert "Traceback (most recent call last)" in text
    assert "ValueError: bad quantity 3" in text
    assert "in parse_quantity" in text  # the user's frame is in the remote traceback
    # The worker that raised is fine.
    assert cluster.get(parse_quantity.remote(0), timeout=60) == 0


def test_the_remote_traceback_shows_the_raise_line(shared_cluster):
    with pytest.raises(ValueError) as excinfo:
        cluster.get(parse_quantity.remote(3), timeout=60)
    text = str(excinfo.value)
    assert 'raise ValueError(f"bad quantity {x}")' in text
    assert THIS_FILE in text


def test_a_custom_exception_class_from_the_test_is_raised_as_itself(shared_cluster):
    class OutOfStock(Exception):
        pass

    @cluster.remote
    def reserve(item: str) -> None:
        raise OutOfStock(f"no {item} left")

    with pytest.raises(OutOfStock) as excinfo:
        cluster.get(reserve.remote("widgets"), timeout=60)
    assert isinstance(excinfo.value, cluster.TaskError)
    assert excinfo.value.args == ("no widgets left",)
    assert "reserve" in str(excinfo.value)
    assert "OutOfStock: no widgets left" in str(excinfo.value)


def test_a_custom_exception_class_defined_at_module_level_is_raised_as_itself(shared_cluster):
    with pytest.raises(InventoryError) as excinfo:
        cluster.get(reserve_inventory.remote("gizmo"), timeout=60)
    assert isinstance(excinfo.value, cluster.TaskError)
    assert "gizmo is out of stock" in str(excinfo.value)


def test_a_failed_dependency_fails_the_tasks_that_use_it(shared_cluster):
    failed = parse_quantity.remote(5)
    dependent = identity.options(resources={"b": 1}).remote(failed)  # on the other node
    with pytest.raises(ValueError) as excinfo:
        cluster.get(dependent, timeout=60)
    assert "bad quantity 5" in str(excinfo.value)


def test_an_argument_that_already_failed_fails_the_task_with_its_error(shared_cluster):
    failed = parse_quantity.remote(7)
    assert cluster.wait([failed], timeout=60)[0] == [failed]  # finished (with an error)
    dependent = identity.options(resources={"b": 1}).remote(failed)
    with pytest.raises(ValueError) as excinfo:
        cluster.get(dependent, timeout=60)
    assert "bad quantity 7" in str(excinfo.value)
    assert "task parse_quantity raised" in str(excinfo.value)


def test_retry_exceptions_retries_a_failing_task(shared_cluster, tmp_path):
    ref = fail_twice_then_succeed.options(retry_exceptions=True, max_retries=2).remote(str(tmp_path))
    assert cluster.get(ref, timeout=60) == 3

    once = tmp_path / "once"
    once.mkdir()
    with pytest.raises(RuntimeError, match="flaky failure on attempt 1"):
        cluster.get(fail_twice_then_succeed.remote(str(once)), timeout=60)  # default: no retry on exceptions
    assert len(list(once.iterdir())) == 1


@cluster.remote
def fail_unpicklably() -> None:
    import threading

    class HoldsALock(Exception):
        pass

    err = HoldsALock("the lock is held")
    err.lock = threading.Lock()  # a lock cannot be pickled
    raise err


def test_an_exception_that_cannot_be_pickled_reaches_the_caller_as_a_task_error_naming_it(shared_cluster):
    with pytest.raises(cluster.TaskError) as excinfo:
        cluster.get(fail_unpicklably.remote(), timeout=60)
    err = excinfo.value
    text = str(err)
    assert err.function_name == "fail_unpicklably" and err.cause is None
    assert text.count("task fail_unpicklably raised") == 1, text
    assert text.count("HoldsALock: the lock is held") == 1, text  # type and message, once
    assert "in fail_unpicklably" in text  # the remote traceback
    assert "HoldsALock could not be pickled" in text and "_thread.lock" in text, text
