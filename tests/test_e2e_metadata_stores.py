"""The head's metadata store on Redis (cluster-redis), against a real head and a real redis-server.

Each test gets a throwaway redis-server (``cluster_redis.testing.RedisServer``: its own temp dir,
no persistence, stopped by its pid); the tests skip, saying why, where redis-server is not
installed (``nox -s tests`` installs it when run as root).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cluster_client import JobStatus, JobSubmissionClient
from cluster_redis.testing import RedisServer

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
