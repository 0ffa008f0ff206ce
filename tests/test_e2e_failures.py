"""What goes wrong, and how cluster says so: bad tokens, nothing listening, dead workers, bad options."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

import cluster
from cluster.exceptions import (
    AuthenticationError,
    ClusterConnectionError,
    ConfigError,
    WorkerCrashedError,
)


@cluster.remote
def die_on_first_attempt(folder: str) -> dict:
    """First attempt: write this worker's pid and hang. Any later attempt: return."""
    first = Path(folder, "first-attempt-pid")
    if first.exists():
        return {"pid": os.getpid(), "first_pid": int(first.read_text())}
    tmp = Path(folder, f".tmp-{os.getpid()}")
    tmp.write_text(str(os.getpid()))
    tmp.rename(first)  # atomically: the test never reads a half-written pid
    time.sleep(300)  # the test kills this process long before
    return {"pid": os.getpid(), "first_pid": None}


@cluster.remote
def whoami() -> int:
    return os.getpid()


def closed_port() -> int:
    """A port nothing listens on: bound by us a moment ago, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_worker_when_started(lc, folder: Path, e2e) -> int:
    pid_file = folder / "first-attempt-pid"
    e2e.wait_until(pid_file.exists, what="the task to start")
    pid = int(pid_file.read_text())
    assert pid in lc.process_tree(), "the pid is not one of the cluster's processes"
    os.kill(pid, signal.SIGKILL)
    return pid


# ---------------------------------------------------------------------- connecting


def test_a_driver_with_a_wrong_token_gets_authentication_error(make_cluster):
    lc = make_cluster(num_cpus=1)

    with pytest.raises(AuthenticationError) as excinfo:
        cluster.init(lc.address, token="wrong")
    assert "token" in str(excinfo.value)
    assert lc.address in str(excinfo.value)
    assert isinstance(excinfo.value, ClusterConnectionError)
    assert not cluster.is_initialized()

    # The right token still gets in, from the same process.
    cluster.init(lc.address, token=lc.token)
    assert cluster.get(whoami.remote(), timeout=60) > 0


def test_init_with_nothing_listening_names_the_address(tmp_path):
    address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(ClusterConnectionError) as excinfo:
        cluster.init(address, token="x")
    assert address in str(excinfo.value)
    assert isinstance(excinfo.value, ConnectionError)
    assert not cluster.is_initialized()


def test_init_auto_with_no_cluster_running_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("CLUSTER_TMPDIR", str(tmp_path))
    with pytest.raises(ClusterConnectionError) as excinfo:
        cluster.init("auto")
    assert "no running cluster" in str(excinfo.value)
    assert not cluster.is_initialized()
    assert not any(p.name.startswith("session") for p in tmp_path.iterdir())  # nothing was started


# --------------------------------------------------------------------- dead workers


def test_a_task_whose_worker_is_killed_is_retried(make_cluster, tmp_path, e2e):
    lc = make_cluster(num_cpus=1)
    lc.connect()
    ref = die_on_first_attempt.options(max_retries=1).remote(str(tmp_path))

    killed = kill_worker_when_started(lc, tmp_path, e2e)

    result = cluster.get(ref, timeout=120)
    assert result["first_pid"] == killed
    assert result["pid"] != killed
    assert e2e.still_running([killed]) == []


def test_a_task_whose_worker_is_killed_fails_without_retries(make_cluster, tmp_path, e2e):
    lc = make_cluster(num_cpus=1)
    lc.connect()
    ref = die_on_first_attempt.options(max_retries=0).remote(str(tmp_path))

    kill_worker_when_started(lc, tmp_path, e2e)

    with pytest.raises(WorkerCrashedError) as excinfo:
        cluster.get(ref, timeout=120)
    assert "die_on_first_attempt" in str(excinfo.value)
    # The node replaced its worker.
    assert cluster.get(whoami.remote(), timeout=60) > 0


# ----------------------------------------------------------------------- bad options


@pytest.mark.parametrize("options", [{"num_cpus": -1}, {"resources": {"x": "a"}}], ids=["num_cpus", "resources"])
def test_bad_options_raise_config_error(options, monkeypatch, tmp_path):
    monkeypatch.setenv("CLUSTER_TMPDIR", str(tmp_path))

    with pytest.raises(ConfigError):
        cluster.init(**options)
    assert not cluster.is_initialized()
    with pytest.raises(ConfigError):
        cluster.remote(**options)
    with pytest.raises(ConfigError):
        whoami.options(**options)


def test_a_rejected_init_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("CLUSTER_TMPDIR", str(tmp_path))
    with pytest.raises(ConfigError):
        cluster.init(num_cpus=-1)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("session")) == []


@pytest.mark.parametrize(
    ("resources", "message"),
    [("{bad json", "--resources must be a JSON object"), ('{"x": "a"}', "resource 'x' must be a non-negative number")],
    ids=["bad-json", "bad-amount"],
)
def test_cluster_start_with_bad_resources_fails_with_a_message(make_cluster, resources, message):
    lc = make_cluster(start=False)

    proc = lc.cli("start", "--head", "--port", "0", "--resources", resources, check=False)

    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert lc.daemon_records() == []
    assert not (lc.root / "current.json").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [(("--port", "70000"), "port 70000 is out of range (0-65535; 0 picks a free port)"),
     (("--port", "0", "--heartbeat-timeout", "-1"), "the heartbeat timeout must be a positive number of seconds")],
    ids=["port", "heartbeat-timeout"],
)
def test_a_daemon_refuses_a_bad_option_in_one_line(make_cluster, options, message):
    lc = make_cluster(start=False)

    proc = lc.cli("start", "--head", *options, check=False)

    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and "File " not in proc.stderr
    assert lc.daemon_records() == []


# --------------------------------------------------------------------- dead nodes


@cluster.remote
class Placed:
    def __init__(self) -> None:
        self.n = 0

    def incr(self) -> int:
        self.n += 1
        return self.n

    def where(self) -> tuple[str, int]:
        return os.environ["CLUSTER_NODE_ID"], os.getpid()


def test_an_actor_whose_node_dies_restarts_on_another_node(make_cluster, e2e):
    lc = make_cluster(num_cpus=1)
    node = lc.add_node(num_cpus=1)
    lc.connect()
    blocker = Placed.options(num_cpus=1).remote()  # fills the head, so the next one goes to the node
    head_node, _ = cluster.get(blocker.where.remote(), timeout=60)
    actor = Placed.options(num_cpus=1, max_restarts=1, max_task_retries=1).remote()
    first_node, first_pid = cluster.get(actor.where.remote(), timeout=60)
    assert first_node == node["node_id"] != head_node
    assert cluster.get(actor.incr.remote(), timeout=60) == 1
    cluster.kill(blocker)  # room on the head for the restart
    os.kill(node["pid"], signal.SIGKILL)  # the node daemon; its workers die with it
    e2e.wait_until(lambda: not e2e.is_running(first_pid), timeout=30, what="the actor's worker to die with its node")
    assert cluster.get(actor.where.remote(), timeout=60)[0] == head_node
    assert cluster.get(actor.incr.remote(), timeout=60) == 1  # a fresh instance: state rebuilt
    cluster.kill(actor)


@cluster.remote
def wait_for_path(path: str) -> str:
    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


def test_wait_raises_once_the_runtime_crashed_instead_of_hanging(make_cluster, tmp_path):
    import threading

    from cluster.objects import refs as object_ref

    lc = make_cluster(num_cpus=1)
    lc.connect()
    release = tmp_path / "release"
    ref = wait_for_path.remote(str(release))  # never ready while the test looks
    runtime = object_ref._runtime

    async def internal_error() -> None:
        raise RuntimeError("a bug in the runtime")

    outcome: list[BaseException] = []

    def wait_forever() -> None:
        try:
            cluster.wait([ref])  # no timeout
        except BaseException as exc:
            outcome.append(exc)

    try:
        waiter = threading.Thread(target=wait_forever, daemon=True)
        waiter.start()
        runtime.soon(runtime._nursery.start_soon, internal_error)  # the trio thread dies of it
        waiter.join(timeout=30)
        assert not waiter.is_alive(), "cluster.wait still waits after the runtime crashed"
        (exc,) = outcome
        assert isinstance(exc, ClusterConnectionError), repr(exc)
        assert "internal error" in str(exc) and "a bug in the runtime" in str(exc)
        with pytest.raises(ClusterConnectionError, match="internal error"):
            cluster.wait([ref], timeout=60)  # also with a timeout: at once, not after it
    finally:
        release.touch()
