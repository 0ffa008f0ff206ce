"""The head's metadata stores against a real head: core's SQLite file and Redis (cluster-redis).

Each test on Redis gets a throwaway redis-server (``cluster_redis.testing.RedisServer``: its own temp dir,
no persistence, stopped by its pid); the tests skip, saying why, where redis-server is not
installed (``nox -s tests`` installs it when run as root).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_client import JobStatus, JobSubmissionClient
from cluster_redis.testing import RedisServer

import cluster
from cluster.testing import LocalCluster


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with RedisServer.started(tcp=True) as server:
        yield server


def job(lc: LocalCluster, *args: str) -> subprocess.CompletedProcess:
    """``cluster job ARGS`` against ``lc``'s head."""
    env = {**lc.env, "CLUSTER_API_ADDRESS": lc.dashboard_url, "CLUSTER_TOKEN": lc.token}
    return subprocess.run([sys.executable, "-m", "cluster", "job", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_job_records_kept_in_redis_outlive_the_head(make_cluster, redis_server):
    url = redis_server.tcp_url(prefix="e2e:")
    first = make_cluster(num_cpus=1, head_args=["--metadata-store", url])
    submitted = job(first, "submit", "--submission-id", "kept-in-redis", "--", "echo", "done")
    assert submitted.returncode == 0, submitted.stderr
    assert "done" in submitted.stdout and "SUCCEEDED" in submitted.stderr
    record = json.loads(redis_server.client().hget("e2e:rows:jobs", "kept-in-redis"))
    assert record["submission_id"] == "kept-in-redis" and record["status"] == "SUCCEEDED"
    first.stop()

    second = make_cluster(num_cpus=1, head_args=["--metadata-store", url])
    listed = job(second, "list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [["kept-in-redis", "SUCCEEDED"]]
    with JobSubmissionClient(second.dashboard_url, second.token) as client:
        assert [(j.submission_id, j.status) for j in client.list_jobs()] == [("kept-in-redis", JobStatus.SUCCEEDED)]
    assert job(second, "logs", "kept-in-redis").returncode == 0  # the record, not only its name


def test_a_head_whose_redis_is_down_or_locked_does_not_start_and_says_why(make_cluster, redis_server):
    lc = make_cluster(start=False)
    down = f"unix://{redis_server.root / 'nobody.sock'}?prefix=e2e:"
    locked = RedisServer(redis_server.binary, password="s3cret")
    try:
        locked.start()
        for url, said in ((down, f"cannot reach Redis at {down}"),
                          (locked.url(password="wrong"), "refused the user name or password")):
            proc = lc.cli("start", "--head", "--port", "0", "--metadata-store", url, check=False, timeout=60)
            assert proc.returncode != 0
            assert said in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
            assert "wrong" not in proc.stderr
    finally:
        locked.stop()
    assert not lc.daemon_records()  # no head was left running


def wait_for(client: JobSubmissionClient, job_id: str, state: JobStatus, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (info := client.get_job_info(job_id)).status != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {info.status} ({info.message}), not {state}")
        time.sleep(0.1)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_a_restarted_head_lists_its_jobs_oldest_first_as_the_one_before(make_cluster, tmp_path, kind, request):
    """The older job ends last, so its record is written last: the store must keep it first."""
    url = (f"sqlite:///{tmp_path / 'jobs.db'}" if kind == "sqlite"
           else request.getfixturevalue("redis_server").url(prefix="order:"))
    go = tmp_path / "go"
    waits = f"while [ ! -e {go} ]; do sleep 0.05; done"
    first = make_cluster(num_cpus=1, head_args=["--metadata-store", url])
    with JobSubmissionClient(first.dashboard_url, first.token) as client:
        older = client.submit_job(entrypoint=waits, submission_id="older")
        wait_for(client, older, JobStatus.RUNNING)
        newer = client.submit_job(entrypoint="echo newer", submission_id="newer")
        wait_for(client, newer, JobStatus.SUCCEEDED)
        Path(go).touch()
        wait_for(client, older, JobStatus.SUCCEEDED)
        assert [j.submission_id for j in client.list_jobs()] == ["older", "newer"]
    first.stop()
    second = make_cluster(num_cpus=1, head_args=["--metadata-store", url])
    listed = job(second, "list")
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == ["older", "newer"], listed.stdout


def test_a_head_whose_redis_goes_away_says_so_to_job_clients_and_keeps_running(make_cluster, redis_server, e2e):
    lc = make_cluster(num_cpus=1, head_args=["--metadata-store", redis_server.tcp_url(prefix="gone:")])
    lc.connect()
    redis_server.stop()  # by its pid: the store is gone while the head runs
    with JobSubmissionClient(lc.dashboard_url, lc.token) as client, pytest.raises(Exception) as excinfo:
        client.submit_job(entrypoint="echo never")
    message = str(excinfo.value)
    assert "Redis" in message or "redis" in message, message
    assert "Traceback" not in message, message
    head = lc.pids[0]
    assert e2e.is_running(head), "the head died with its metadata store"

    @cluster.remote
    def still_works() -> int:
        return 7

    assert cluster.get(still_works.remote(), timeout=60) == 7  # the head is not on the task path


@cluster.remote
class Tally:
    def __init__(self) -> None:
        self.n = 0

    def add(self) -> int:
        self.n += 1
        return self.n


def test_a_head_killed_and_started_again_on_redis_is_the_same_cluster(make_cluster, redis_server, e2e):
    """Head fault tolerance through the Redis store, as Ray's GCS fault tolerance uses Redis."""
    url = redis_server.tcp_url(prefix="ft:")
    lc = make_cluster(num_cpus=0, head_args=["--metadata-store", url, "--heartbeat-timeout", "3"])
    node = lc.add_node(num_cpus=1, resources={"b": 1})
    lc.connect()
    tally = Tally.options(name="tally", lifetime="detached", resources={"b": 0.01}).remote()
    assert cluster.get([tally.add.remote() for _ in range(3)], timeout=60) == [1, 2, 3]
    cluster_id, token = lc.cluster_id, lc.token
    cluster.shutdown()

    assert e2e.still_running([lc.kill_head()], timeout=30) == []
    again = lc.restart_head()
    assert f"Started the head of cluster {cluster_id} again" in again.stdout
    current = json.loads((lc.root / "current.json").read_text())
    assert current["cluster_id"] == cluster_id and Path(current["token_file"]).read_text().strip() == token

    lc.connect()
    e2e.wait_until(lambda: any(n["node_id"] == node["node_id"] and n["state"] == "alive" for n in cluster.nodes()),
                   timeout=60, what="the node to come back under its id")
    assert cluster.get(cluster.get_actor("tally").add.remote(), timeout=60) == 4  # found by name, state kept
