"""The head goes away and comes back (docs/design/0013), on real processes.

- started again on its port and metadata store, it is the same cluster: same id and token,
  its nodes reconnect as themselves, and a ``--token`` that contradicts the store is refused;
- a node the head declared dead (stopped past its deadline) drops its identity and rejoins as
  a new node: old id dead, new id alive and usable, its workers and objects gone;
- what needs the head (a named-actor lookup, ``cluster.nodes()``, a job submission, a node
  joining) waits while it is down and goes on once it is back, or fails after
  ``$CLUSTER_HEAD_WAIT_S`` saying which head and what to do; tasks need no head at all;
- a node waiting for its head still stops with its ``cluster start --block``, or a signal.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest
from cluster_client import JobSubmissionClient

import cluster
from cluster.errors import HeadUnreachableError, ObjectLostError


@cluster.remote
def where() -> tuple[str, int]:
    import os

    return os.environ["CLUSTER_NODE_ID"], os.getpid()


@cluster.remote
def big() -> bytes:
    return b"x" * 2_000_000  # stored in the node's object store, not inline


@cluster.remote
class Named:
    def ping(self) -> str:
        return "pong"


def nodes_by_id(lc: Any, e2e: Any) -> dict[str, dict]:
    return {n["node_id"]: n for n in e2e.status_json(lc)}


def test_a_head_started_again_on_its_metadata_store_is_the_same_cluster(make_cluster, tmp_path, e2e):
    store = f"sqlite:///{tmp_path / 'metadata.db'}"
    lc = make_cluster(num_cpus=0, head_args=["--metadata-store", store, "--heartbeat-timeout", "3"])
    node = lc.add_node(num_cpus=1, resources={"b": 1})
    cluster_id, token = lc.cluster_id, lc.token
    assert cluster_id and (tmp_path / "metadata.db").stat().st_mode & 0o077 == 0  # it keeps the token

    dead = lc.kill_head()
    assert e2e.still_running([dead], timeout=30) == []

    wrong = lc.restart_head("--token", "f" * 64, check=False)
    assert wrong.returncode != 0
    assert f"not the token of cluster {cluster_id}, which the metadata store {store} keeps" in wrong.stderr
    assert "--token" in wrong.stderr and "Traceback" not in wrong.stderr

    again = lc.restart_head()
    assert f"Started the head of cluster {cluster_id} again" in again.stdout
    current = json.loads((lc.root / "current.json").read_text())
    assert current["cluster_id"] == cluster_id
    assert Path(current["token_file"]).read_text().strip() == token  # no new credentials to hand out

    # The node came back by itself, under its id, and stays past the restarted head's grace.
    lc.connect()  # with the token it always had
    assert cluster.get(where.options(resources={"b": 1}).remote(), timeout=60)[0] == node["node_id"]
    after_grace = e2e.wait_until(lambda: [n for n in nodes_by_id(lc, e2e).values() if n["is_head"]
                                          and n["state"] == "dead"], timeout=30, what="the old head's node to be dead")
    assert len(after_grace) == 1
    nodes = nodes_by_id(lc, e2e)
    assert nodes[node["node_id"]]["state"] == "alive" and nodes[node["node_id"]]["pid"] == node["pid"]


def test_a_node_declared_dead_while_stopped_comes_back_as_a_new_node(make_cluster, tmp_path, e2e):
    lc = make_cluster(num_cpus=1, head_args=["--heartbeat-timeout", "2"])
    node = lc.add_node(num_cpus=1, resources={"b": 1})
    lc.connect()
    old_id, old_worker = cluster.get(where.options(resources={"b": 1}).remote(), timeout=60)
    assert old_id == node["node_id"]
    stored = big.options(resources={"b": 1}, max_retries=0).remote()  # (not rebuilt: see below)
    cluster.wait([stored], timeout=60)
    store = Path(node["store_path"])
    assert [p for p in store.iterdir() if not p.name.startswith(".")], "the object should be in the node's store"

    os.kill(node["pid"], signal.SIGSTOP)  # the daemon only: its workers run on, cut off from it
    try:
        e2e.wait_until(lambda: nodes_by_id(lc, e2e)[old_id]["state"] == "dead", timeout=30,
                       what="the head to declare the stopped node dead")
    finally:
        os.kill(node["pid"], signal.SIGCONT)

    def new_identity() -> dict | None:
        return next((n for n in nodes_by_id(lc, e2e).values()
                     if n["pid"] == node["pid"] and n["node_id"] != old_id and n["state"] == "alive"), None)

    new = e2e.wait_until(new_identity, timeout=30, what="the node to rejoin under a new id")
    shown = {n["node_id"]: n["state"] for n in cluster.nodes()}
    assert shown[old_id] == "dead" and shown[new["node_id"]] == "alive"
    status = lc.cli("status").stdout
    assert old_id in status and new["node_id"] in status
    assert e2e.still_running([old_worker], timeout=30) == []  # its old workers were killed ...
    assert [p for p in store.iterdir() if not p.name.startswith(".")] == []  # ... its objects dropped
    with pytest.raises(ObjectLostError, match=f"lived on node {old_id}.*max_retries=0"):
        cluster.get(stored, timeout=60)  # (with retries, its owner would have rebuilt it)
    log = "".join(p.read_text() for p in lc.root.glob("node_*/logs/node-*.jsonl"))
    assert f"node {old_id} was declared dead (missed its heartbeat deadline (2s))" in log  # it says why

    new_id, _ = cluster.get(where.options(resources={"b": 1}).remote(), timeout=60)
    assert new_id == new["node_id"]  # its resources are usable under the new id
    assert new["resources"]["b"] == 1


def test_what_needs_the_head_waits_while_it_is_down_and_goes_on_when_it_is_back(
        make_cluster, tmp_path, capfd, e2e):
    store = f"sqlite:///{tmp_path / 'metadata.db'}"
    lc = make_cluster(num_cpus=0, head_args=["--metadata-store", store])
    node = lc.add_node(num_cpus=1, resources={"b": 1})
    lc.connect()
    actor = Named.options(name="named", resources={"b": 1}).remote()
    assert cluster.get(actor.ping.remote(), timeout=60) == "pong"
    lc.kill_head()
    assert e2e.still_running([lc.head_pid], timeout=30) == []

    outcomes: dict[str, Any] = {}

    def run(what: str, call: Any) -> threading.Thread:
        def body() -> None:
            try:
                outcomes[what] = call()
            except BaseException as exc:  # shown by the assertions below
                outcomes[what] = exc

        thread = threading.Thread(target=body, name=what, daemon=True)
        thread.start()
        return thread

    def submit() -> str:
        with JobSubmissionClient(lc.dashboard_url, lc.token, progress=False) as jobs:
            return jobs.submit_job(entrypoint="echo submitted while the head was down")

    callers = [
        run("get_actor", lambda: cluster.get(cluster.get_actor("named").ping.remote(), timeout=60)),
        run("nodes", cluster.nodes),
        run("submit", submit),
        run("join", lambda: lc.add_node(num_cpus=1)),
    ]
    printed: list[str] = []

    def told() -> bool:
        printed.append(capfd.readouterr().err)
        return "is unreachable since" in "".join(printed)

    e2e.wait_until(told, timeout=30, what="the driver to say it waits for the head")
    said = "".join(printed)
    assert f"the head at {lc.address} is unreachable since " in said and "waiting for it to come back" in said
    assert outcomes == {}  # all of them wait

    lc.restart_head()
    for thread in callers:
        thread.join(timeout=120)
    assert outcomes["get_actor"] == "pong"
    assert node["node_id"] in {n["node_id"] for n in outcomes["nodes"]}
    assert isinstance(outcomes["submit"], str)
    assert outcomes["join"]["pid"] in {n["pid"] for n in cluster.nodes() if n["state"] == "alive"}
    said += capfd.readouterr().err
    assert said.count("is unreachable since") == 1  # said once for the outage, however many waited


def test_a_call_that_needs_the_head_gives_up_naming_it_while_tasks_need_no_head(
        make_cluster, monkeypatch, e2e):
    lc = make_cluster(num_cpus=1)
    node = lc.add_node(num_cpus=1)
    monkeypatch.setenv("CLUSTER_NODE_ID", node["node_id"])  # this driver uses the node, not the head's
    lc.connect()
    assert cluster.get(where.remote(), timeout=60)[0] == node["node_id"]
    lc.kill_head()
    assert e2e.still_running([lc.head_pid], timeout=30) == []

    assert cluster.get(where.remote(), timeout=60)[0] == node["node_id"]  # tasks go on, the head away

    monkeypatch.setenv("CLUSTER_HEAD_WAIT_S", "2")
    with pytest.raises(HeadUnreachableError) as caught:
        cluster.nodes()
    message = str(caught.value)
    assert f"the head at {lc.address} has been unreachable" in message
    assert "gave up after waiting 2s" in message
    assert f"cluster start --head --port {lc.address.rpartition(':')[2]} --metadata-store URL" in message
    with pytest.raises(HeadUnreachableError):
        cluster.get_actor("anyone")


def test_a_node_waiting_for_its_head_still_stops_with_its_cluster_start_or_a_signal(tmp_path, e2e):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{sock.getsockname()[1]}"  # no head there (yet)
    env = {**os.environ, "CLUSTER_TMPDIR": str(tmp_path), "CLUSTER_TOKEN": "t" * 64, "CLUSTER_HEAD_WAIT_S": "120"}
    for stop in ("kill its cluster start --block", "SIGTERM the daemon"):
        start = subprocess.Popen([sys.executable, "-m", "cluster", "start", "--address", nowhere, "--block"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        tree: list[int] = []
        try:
            cli = psutil.Process(start.pid)
            daemon = e2e.wait_until(lambda cli=cli: next((c for c in cli.children() if _is_daemon(c)), None),
                                    timeout=30, what="the node daemon to start")
            tree = [daemon.pid, *(c.pid for c in daemon.children(recursive=True))]
            if stop == "SIGTERM the daemon":
                daemon.send_signal(signal.SIGTERM)
            else:
                start.kill()  # (its stdin pipe to the daemon closes with it)
            assert e2e.still_running(tree, timeout=20) == [], stop
        finally:
            start.kill()
            start.wait()
            e2e.kill_all(pid for pid in tree if e2e.is_running(pid))


def _is_daemon(process: psutil.Process) -> bool:
    try:
        return "cluster.daemon" in " ".join(process.cmdline())
    except psutil.Error:  # a child that already exited (a zombie until reaped), or is gone
        return False
