"""Jobs against a real head: the HTTP API, the SDK and `cluster job` (cluster-client)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
import trio
from cluster_client import JobStatus, JobSubmissionClient, JobSubmissionError

DRIVER = textwrap.dedent(
    """
    import os
    import cluster

    @cluster.remote
    def square(x):
        return x * x

    cluster.init()
    print("greeting:", os.environ["GREETING"], flush=True)
    print("sum of squares:", sum(cluster.get([square.remote(i) for i in range(20)])), flush=True)
    """
)


@pytest.fixture
def jobs_cluster(make_cluster):
    """A head with 2 CPUs (stop grace 1 s) and a client for its HTTP API."""
    lc = make_cluster(num_cpus=2, env={"CLUSTER_JOB_STOP_GRACE_S": "1"})
    with JobSubmissionClient(lc.dashboard_url, lc.token) as client:
        yield lc, client


def wait_for(client: JobSubmissionClient, job_id: str, *states: str, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while True:
        info = client.get_job_info(job_id)
        if info.status in states:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {info.status} ({info.message}), not {states}")
        time.sleep(0.1)


def test_a_job_with_env_vars_runs_tasks_succeeds_and_keeps_its_logs(jobs_cluster, tmp_path):
    _, client = jobs_cluster
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    job_id = client.submit_job(entrypoint=f"python {script}", runtime_env={"env_vars": {"GREETING": "hello"}},
                               metadata={"owner": "tests"})
    info = wait_for(client, job_id, "SUCCEEDED", "FAILED")
    assert info.status == JobStatus.SUCCEEDED, client.get_job_logs(job_id)
    assert info.driver_exit_code == 0 and info.metadata == {"owner": "tests"}
    logs = client.get_job_logs(job_id)
    assert "greeting: hello" in logs
    assert f"sum of squares: {sum(i * i for i in range(20))}" in logs  # its driver ran tasks on the cluster
    assert [j.submission_id for j in client.list_jobs()] == [job_id]
    assert client.delete_job(job_id) is True
    with pytest.raises(JobSubmissionError, match="no job") as excinfo:
        client.get_job_info(job_id)
    assert excinfo.value.status == 404


def test_a_failing_job_is_failed_with_its_exit_code_and_last_lines(jobs_cluster):
    _, client = jobs_cluster
    job_id = client.submit_job(entrypoint="echo 'about to fail'; echo 'disk full' >&2; exit 3")
    info = wait_for(client, job_id, "SUCCEEDED", "FAILED")
    assert info.status == JobStatus.FAILED
    assert info.driver_exit_code == 3
    assert "exited with code 3" in info.message
    assert "about to fail" in info.message and "disk full" in info.message


def test_an_infeasible_job_stays_pending_saying_why_and_stops_from_pending(jobs_cluster):
    _, client = jobs_cluster
    job_id = client.submit_job(entrypoint="echo never", entrypoint_num_cpus=64)
    deadline = time.monotonic() + 30
    while "no node" not in client.get_job_info(job_id).message and time.monotonic() < deadline:
        time.sleep(0.1)
    info = client.get_job_info(job_id)
    assert info.status == JobStatus.PENDING
    assert "no node of the cluster can fit {CPU: 64}" in info.message
    assert client.stop_job(job_id) is True
    assert client.get_job_status(job_id) == JobStatus.STOPPED
    assert client.stop_job(job_id) is False  # a terminal state never changes
    assert client.get_job_logs(job_id) == ""


def test_stop_ends_a_running_job_and_every_process_of_it(jobs_cluster, e2e):
    _, client = jobs_cluster
    # The shell ignores SIGTERM, so stopping needs the SIGKILL that follows the grace period;
    # its child sleeps in the same process group and must go too.
    job_id = client.submit_job(entrypoint="trap '' TERM; echo started; sleep 600 & wait; sleep 600")
    info = wait_for(client, job_id, "RUNNING")
    deadline = time.monotonic() + 30
    while "started" not in client.get_job_logs(job_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    import psutil

    group = [info.driver_pid] + [p.pid for p in psutil.Process(info.driver_pid).children(recursive=True)]
    assert len(group) >= 2
    assert client.stop_job(job_id) is True
    info = wait_for(client, job_id, "STOPPED", "FAILED", "SUCCEEDED", timeout=30)
    assert info.status == JobStatus.STOPPED
    e2e.wait_until(lambda: not e2e.still_running(group), timeout=10, what="the job's processes to go")


def test_the_api_refuses_a_missing_or_wrong_token_and_malformed_requests(jobs_cluster):
    lc, client = jobs_cluster
    api = lc.dashboard_url
    assert httpx.get(f"{api}/api/jobs/").status_code == 401
    wrong = httpx.get(f"{api}/api/jobs/", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "token" in wrong.json()["error"]
    auth = {"Authorization": f"Bearer {lc.token}"}
    assert httpx.get(f"{api}/api/version", headers=auth).json()["api_version"] == 1
    for body, complaint in [
        (b"{not json", "not valid JSON"),
        (json.dumps({"entrypoint": ""}).encode(), "'entrypoint' must be a non-empty string"),
        (json.dumps({"entrypoint": "true", "colour": "red"}).encode(), "unknown field(s) colour"),
        (json.dumps({"entrypoint": "true", "entrypoint_num_cpus": -1}).encode(), "non-negative"),
        (json.dumps({"entrypoint": "true", "runtime_env": {"env_vars": {"A": 1}}}).encode(), "strings to strings"),
    ]:
        response = httpx.post(f"{api}/api/jobs/", content=body, headers=auth)
        assert response.status_code == 400, body
        assert complaint in response.json()["error"]
    assert client.list_jobs() == []  # nothing was submitted by the bad requests
    first = client.submit_job(entrypoint="true", submission_id="same")
    with pytest.raises(JobSubmissionError, match="already exists"):
        client.submit_job(entrypoint="true", submission_id="same")
    wait_for(client, first, "SUCCEEDED")


def test_logs_can_be_followed_as_the_job_prints(jobs_cluster):
    _, client = jobs_cluster
    job_id = client.submit_job(entrypoint="for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done")

    async def follow() -> str:
        return "".join([text async for text in client.tail_job_logs(job_id)])

    text = trio.run(follow)
    assert text.splitlines() == [f"line {i}" for i in range(1, 6)]
    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED


def test_cluster_job_submit_follows_the_output_and_exits_with_the_job_s_status(jobs_cluster):
    lc, _ = jobs_cluster
    env = {**lc.env, "CLUSTER_API_ADDRESS": lc.dashboard_url, "CLUSTER_TOKEN": lc.token}

    def job(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cluster", "job", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    ok = job("submit", "--submission-id", "fine", "--", "python", "-c", "print('all good')")
    assert ok.returncode == 0, ok.stderr
    assert "all good" in ok.stdout and "SUCCEEDED" in ok.stderr
    bad = job("submit", "--", "python -c 'import sys; print(\"bad luck\"); sys.exit(4)'")
    assert bad.returncode == 4, bad.stderr
    assert "bad luck" in bad.stdout and "FAILED" in bad.stderr
    listed = job("list")
    assert "fine" in listed.stdout and "SUCCEEDED" in listed.stdout
    logs = job("logs", "fine")
    assert logs.stdout == "all good\n"
    status = job("status", "nobody")
    assert status.returncode != 0 and "no job with submission_id 'nobody'" in status.stderr
    assert "Traceback" not in status.stderr


def test_job_records_outlive_the_head_when_the_metadata_store_is_kept(make_cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    first = make_cluster(num_cpus=1, head_args=["--metadata-store", url])
    with JobSubmissionClient(first.dashboard_url, first.token) as client:
        job_id = client.submit_job(entrypoint="echo done")
        wait_for(client, job_id, "SUCCEEDED")
    first.stop()
    second = make_cluster(num_cpus=1, head_args=["--metadata-store", url])
    with JobSubmissionClient(second.dashboard_url, second.token) as client:
        assert [(j.submission_id, j.status) for j in client.list_jobs()] == [(job_id, JobStatus.SUCCEEDED)]


WORKING_DIR_MAIN = textwrap.dedent(
    """
    import os
    import cluster
    import helper  # from the working dir, on the job's sys.path

    @cluster.remote(resources={"b": 1})  # on the other node, which never saw the working dir
    def far(x):
        return helper.square(x), os.environ["CLUSTER_NODE_ID"]

    @cluster.remote(resources={"b": 1})
    def far_import():
        import lazy  # imported by the worker only: the working dir is on its sys.path
        return lazy.read_data()

    cluster.init()
    print("files:", sorted(os.listdir(".")))
    print("data:", open("data.txt").read().strip(), os.environ["GREETING"])
    value, node = cluster.get(far.remote(7))
    print("far square:", value, "on", node)
    print("far data:", cluster.get(far_import.remote()))
    """
)


def test_a_job_runs_in_its_uploaded_working_dir_whose_code_reaches_other_nodes(make_cluster, tmp_path):
    lc = make_cluster(num_cpus=1)
    other = lc.add_node(num_cpus=1, resources={"b": 1})
    work = tmp_path / "project"
    (work / "cache").mkdir(parents=True)
    (work / "main.py").write_text(WORKING_DIR_MAIN)
    (work / "helper.py").write_text("def square(x):\n    return x * x\n")
    (work / "lazy.py").write_text(
        "import os\n\ndef read_data():\n"
        "    return open(os.path.join(os.path.dirname(__file__), 'data.txt')).read().strip()\n")
    (work / "data.txt").write_text("forty-two\n")
    (work / "secret.txt").write_text("not for the cluster\n")
    (work / ".gitignore").write_text("secret.txt\n")
    (work / "cache" / "big.bin").write_bytes(b"\0" * 1_000_000)
    env = {**lc.env, "CLUSTER_API_ADDRESS": lc.dashboard_url, "CLUSTER_TOKEN": lc.token}

    def submit() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "cluster", "job", "submit", "--working-dir", str(work), "--exclude", "cache/",
             "--env", "GREETING=hi", "--", "python", "main.py"], env=env, capture_output=True, text=True, timeout=120)

    first = submit()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "files: ['.gitignore', 'data.txt', 'helper.py', 'lazy.py', 'main.py']" in first.stdout  # excludes held
    assert "data: forty-two hi" in first.stdout
    assert "far data: forty-two" in first.stdout
    assert f"far square: 49 on {other['node_id']}" in first.stdout
    assert "Uploading working dir" in first.stderr and "100%" in first.stderr
    with JobSubmissionClient(lc.dashboard_url, lc.token) as client:  # kept after the job ended
        (done,) = client.list_jobs()
        assert done.status == JobStatus.SUCCEEDED
        assert "far square: 49" in client.get_job_logs(done.submission_id)
    second = submit()
    assert second.returncode == 0, second.stdout + second.stderr
    assert "the head has it already" in second.stderr and "Uploading" not in second.stderr


def test_a_working_dir_over_the_limit_is_refused_before_upload_saying_how_to_fix_it(jobs_cluster, tmp_path):
    lc, _ = jobs_cluster
    work = tmp_path / "big"
    work.mkdir()
    (work / "blob.bin").write_bytes(b"\1" * 3_000_000)
    with JobSubmissionClient(lc.dashboard_url, lc.token, max_working_dir_bytes=1_000_000) as client:
        with pytest.raises(JobSubmissionError, match=r"more than 976\.6 KiB") as excinfo:
            client.submit_job(entrypoint="true", runtime_env={"working_dir": str(work)})
        assert "excludes" in str(excinfo.value)
        assert client.list_jobs() == []
