"""Remote client mode: cluster.init("cluster://HOST:PORT") talks to the head only; a proxy driver
on the head runs its tasks, actors, puts and gets (cluster-client)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

CLIENT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import psutil
    import cluster
    from cluster.exceptions import ActorDiedError

    @cluster.remote
    def add(a, b):
        print("adding", a, b)
        return a + b

    @cluster.remote(resources={"b": 1})
    def node_and_sum(array):
        return os.environ["CLUSTER_NODE_ID"], int(array.sum())

    @cluster.remote
    def fails():
        raise KeyError("the key is missing")

    @cluster.remote
    def deref(refs):
        return sum(cluster.get(refs))

    @cluster.remote
    class Counter:
        def __init__(self, start):
            self.n = start

        def incr(self):
            self.n += 1
            return self.n

    cluster.init(sys.argv[1], token=sys.argv[2])
    out = {}
    out["sums"] = cluster.get([add.remote(i, i) for i in range(10)])
    big = cluster.put(np.ones(2_000_000, dtype=np.int64))  # 16 MB, through the head
    out["far"] = cluster.get(node_and_sum.remote(big))
    out["chained"] = cluster.get(add.remote(add.remote(1, 2), 10))
    out["nested"] = cluster.get(deref.remote([cluster.put(5), add.remote(1, 1)]))
    ready, not_ready = cluster.wait([add.remote(1, 1)], num_returns=1, timeout=60)
    out["waited"] = len(ready)
    try:
        cluster.get(fails.remote())
    except KeyError as exc:
        out["error"] = str(exc)
    counter = Counter.options(name="tally").remote(100)
    out["calls"] = cluster.get([counter.incr.remote() for _ in range(50)])[-1]
    out["named"] = cluster.get(cluster.get_actor("tally").incr.remote())
    cluster.kill(counter)
    try:
        cluster.get(counter.incr.remote())
    except ActorDiedError:
        out["killed"] = True
    me = psutil.Process()
    out["listening"] = [c.laddr for c in me.net_connections("inet") if c.status == "LISTEN"]
    out["peers"] = sorted({"%s:%d" % c.raddr for c in me.net_connections("inet") if c.raddr})
    out["nodes"] = len(cluster.nodes())
    print("RESULT " + json.dumps(out), flush=True)
    cluster.shutdown()
    """
)


def _client_env(lc) -> dict:
    env = {k: v for k, v in lc.env.items() if not k.startswith("CLUSTER_")}
    env["CLUSTER_LOCAL_SOCKETS"] = "0"  # as on another machine: TCP to the head, nothing else
    return env


def test_a_remote_client_runs_tasks_actors_and_objects_through_the_head_alone(make_cluster, tmp_path):
    lc = make_cluster(num_cpus=2)
    node = lc.add_node(num_cpus=1, resources={"b": 1})
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    proc = subprocess.run([sys.executable, str(script), f"cluster://{lc.address}", lc.token],
                          env=_client_env(lc), cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.split("RESULT ")[1])
    assert out["sums"] == [2 * i for i in range(10)]
    assert out["far"] == [node["node_id"], 2_000_000]
    assert out["chained"] == 13
    assert out["nested"] == 7
    assert out["waited"] == 1
    assert "the key is missing" in out["error"]
    assert out["calls"] == 150 and out["named"] == 151
    assert out["killed"] is True
    assert out["nodes"] == 2
    assert out["listening"] == []  # nothing listens on the client's side
    assert out["peers"] == [lc.address]  # and it talks to the head only
    assert "adding 1 1" in proc.stdout  # workers' prints reach the client, through the head


HOLD = textwrap.dedent(
    """
    import sys, time
    import cluster

    @cluster.remote
    def one():
        return 1

    cluster.init(sys.argv[1], token=sys.argv[2])
    from cluster import api
    assert cluster.get(one.remote()) == 1
    print("PROXY", api.current_runtime().proxy_pid, flush=True)
    sys.stdin.readline()  # the test kills the proxy meanwhile
    try:
        cluster.get(one.remote())
    except cluster.exceptions.ClusterConnectionError as exc:
        print("LOST", exc, flush=True)
    """
)


def test_a_lost_proxy_surfaces_as_a_clear_error_and_a_gone_client_stops_its_proxy(make_cluster, tmp_path, e2e):
    lc = make_cluster(num_cpus=1)
    script = tmp_path / "hold.py"
    script.write_text(HOLD)

    def start() -> tuple[subprocess.Popen, int]:
        client = subprocess.Popen([sys.executable, str(script), f"cluster://{lc.address}", lc.token],
                                  env=_client_env(lc), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        line = client.stdout.readline()
        assert line.startswith("PROXY"), line + client.stderr.read()
        return client, int(line.split()[1])

    client, proxy_pid = start()
    try:
        os.kill(proxy_pid, signal.SIGKILL)
        e2e.wait_until(lambda: not e2e.is_running(proxy_pid), timeout=10, what="the proxy to die")
        out, err = client.communicate("go\n", timeout=60)
        assert "LOST" in out and "proxy driver" in out and "cluster.init() again" in out, out + err
        assert "Traceback" not in err
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()

    client, proxy_pid = start()
    try:
        client.kill()  # the client vanishes without a word: its proxy must go too
        client.wait()
        e2e.wait_until(lambda: not e2e.is_running(proxy_pid), timeout=30, what="the orphaned proxy to stop")
    finally:
        client.stdout.close()
        client.stderr.close()
        client.stdin.close()
