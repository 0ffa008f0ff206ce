"""Chaos: the head is killed (SIGKILL) in the middle of a workload and started again on its port
and metadata store. Nothing that does not need the head may be lost: every result arrives, and
what the head keeps (the node table, actor names, jobs and their logs) comes back with it.

The head has no CPU, so the work, the detached actor and the job run on a second node; the
driver (this process) is attached to the head's node, and moves to its successor.
"""

from __future__ import annotations

import sys
import textwrap

from cluster_client import JobStatus, JobSubmissionClient

import cluster
from cluster.testing import LocalCluster

TASKS = 3000


@cluster.remote
def square(x: int, pause: float) -> int:
    import time

    time.sleep(pause)
    return x * x


@cluster.remote  # (1 CPU: on the node, the head has none)
def length(data: bytes) -> int:
    return len(data)


@cluster.remote
class Counter:
    def __init__(self) -> None:
        self.count = 0

    def incr(self) -> int:
        self.count += 1
        return self.count


JOB = textwrap.dedent(
    """
    import os, sys, time
    print("before the restart", flush=True)
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.02)
    print("after the restart", flush=True)
    """
)


def wait_for_job(jobs: JobSubmissionClient, job_id: str, predicate, what: str, e2e) -> object:
    return e2e.wait_until(lambda: predicate(jobs.get_job_info(job_id), jobs.get_job_logs(job_id)),
                          timeout=60, what=what)


def test_a_head_killed_mid_workload_comes_back_and_nothing_is_lost(make_cluster, tmp_path, chaos, e2e):
    rng = chaos.rng
    store = f"sqlite:///{tmp_path / 'metadata.db'}"
    lc: LocalCluster = make_cluster(num_cpus=0, head_args=["--metadata-store", store])
    node = lc.add_node(num_cpus=2, resources={"chaos": 2})
    lc.connect()
    first_head = lc.head_pid

    counter = Counter.options(name="counter", namespace="chaos", lifetime="detached",
                              resources={"chaos": 1}).remote()
    increments = rng.randint(2, 6)
    for _ in range(increments):
        count = cluster.get(counter.incr.remote(), timeout=60)
    assert count == increments

    script, release = tmp_path / "job.py", tmp_path / "release"
    script.write_text(JOB)
    with JobSubmissionClient(lc.dashboard_url, lc.token, progress=False) as jobs:
        job_id = jobs.submit_job(entrypoint=f"{sys.executable} {script} {release}",
                                 entrypoint_resources={"chaos": 1})
        wait_for_job(jobs, job_id, lambda info, logs: "before the restart" in logs, "the job to print", e2e)

    pauses = [rng.uniform(0.001, 0.005) for _ in range(TASKS)]
    refs = [square.remote(i, pauses[i]) for i in range(TASKS)]
    kill_at = rng.randint(TASKS // 20, TASKS // 2)
    done_before, _ = cluster.wait(refs, num_returns=kill_at, timeout=120)

    lc.kill_head()
    chaos.fault(f"SIGKILL the head (pid {first_head}) after {len(done_before)} of {TASKS} results")
    assert e2e.still_running([first_head], timeout=30) == []
    more = min(TASKS, len(done_before) + rng.randint(50, 300))
    during, _ = cluster.wait(refs, num_returns=more, timeout=60)  # the head is not on the task path
    assert len(during) >= more
    chaos.verified(f"results went on arriving while the head was down ({len(during)} of {TASKS})")

    restarted = lc.restart_head()
    chaos.fault("started the head again on the same port and metadata store")
    assert f"Started the head of cluster {lc.cluster_id} again" in restarted.stdout
    current_token = (lc.root / "current.json").read_text()
    assert lc.token in restarted.stdout and lc.cluster_id in current_token  # same credentials
    chaos.verified("the head came back as the same cluster (id and token)")

    assert cluster.get(refs, timeout=120) == [i * i for i in range(TASKS)]
    chaos.verified(f"all {TASKS} results arrived and are right")

    assert cluster.get(square.remote(12, 0.0), timeout=60) == 144
    size = rng.randint(1 << 20, 4 << 20)
    assert cluster.get(length.remote(cluster.put(b"y" * size)), timeout=60) == size
    chaos.verified(f"tasks submitted after the restart ran (one on a {size}-byte object put since)")

    found = cluster.get_actor("counter", namespace="chaos")
    assert cluster.get(found.incr.remote(), timeout=60) == increments + 1
    chaos.verified(f"the detached actor was found by name and kept its state ({increments} -> {increments + 1})")

    def settled() -> list[dict] | None:
        nodes = {n["node_id"]: n for n in cluster.nodes()}
        heads = [n for n in nodes.values() if n["is_head"]]
        if nodes.get(node["node_id"], {}).get("state") != "alive" or len(heads) != 2:
            return None
        return heads

    heads = e2e.wait_until(settled, timeout=30, what="the node table to show the node and both heads")
    assert sorted(h["state"] for h in heads) == ["alive", "dead"]
    assert all(n["state"] == "alive" for n in e2e.status_json(lc) if n["node_id"] == node["node_id"])
    chaos.verified("the node is alive under its id; the old head's node is dead, the new one alive")

    with JobSubmissionClient(lc.dashboard_url, lc.token, progress=False) as jobs:
        listed = {job.submission_id: job for job in jobs.list_jobs()}
        assert listed[job_id].status == JobStatus.RUNNING
        assert "before the restart" in jobs.get_job_logs(job_id)
        chaos.verified("the job submitted before the kill is listed, still running, with its log")
        release.touch()
        wait_for_job(jobs, job_id, lambda info, logs: info.status == JobStatus.SUCCEEDED, "the job to end", e2e)
        logs = jobs.get_job_logs(job_id)
        assert logs.index("before the restart") < logs.index("after the restart")
        chaos.verified("the job finished under the new head, its whole log kept")
    cluster.kill(found)
