"""A cluster across separate hosts: each a network namespace of its own with its own IP,
hostname and /dev/shm (tests/hosts.py, the ``make_hosts`` fixture). Nothing here reaches a
host's address from the test process; every driver runs on a host and prints what it saw."""

from __future__ import annotations

import ast
import json
import re
import sys
import textwrap
from pathlib import Path

import hosts

DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"

# Echoes each line back and says what it got (one line per message, on stdout).
ECHO_SERVER = textwrap.dedent(
    """
    import socket, sys
    server = socket.create_server((sys.argv[1], 0))
    print(server.getsockname()[1], flush=True)
    conn, _ = server.accept()
    for line in conn.makefile("rb"):
        print("received", line.decode().strip(), flush=True)
        conn.sendall(line)
    """
)

# Connects once; each command on stdin is "send X SECONDS" (send X, wait that long for its
# echo) or "wait X SECONDS" (wait for the echo of something sent before); answers "got X" or
# "nothing X". Any socket error ends it with "error ...": the connection must survive a cut.
ECHO_CLIENT = textwrap.dedent(
    """
    import socket, sys
    sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    print("connected", flush=True)
    received = b""
    for command in sys.stdin:
        verb, word, seconds = command.split()
        try:
            if verb == "send":
                sock.sendall(word.encode() + b"\\n")
            sock.settimeout(float(seconds))
            while b"\\n" not in received:
                chunk = sock.recv(4096)
                if not chunk:
                    sys.exit("error: the connection closed")
                received += chunk
        except TimeoutError:
            print("nothing", word, flush=True)
            continue
        except OSError as exc:
            sys.exit(f"error: {exc!r}")
        line, _, received = received.partition(b"\\n")
        print("got", line.decode(), flush=True)
    """
)


def test_cut_silences_a_link_without_closing_its_connections_and_heal_restores_it(make_hosts):
    net = make_hosts(2)
    a, b = net
    server = a.spawn([sys.executable, "-c", ECHO_SERVER, a.ip], pipes=True)
    port = server.readline(timeout=30)
    client = b.spawn([sys.executable, "-c", ECHO_CLIENT, a.ip, port], pipes=True)
    assert client.readline(timeout=30) == "connected"

    client.send("send before 30")
    assert client.readline() == "got before"
    assert server.readline() == "received before"

    net.cut(a)
    client.send("send during 3")  # TCP keeps retrying it; nothing arrives while the link is cut
    assert client.readline() == "nothing during"
    assert not server.has_output(), "the server received something through a cut link"

    net.heal(a)
    client.send("wait during 60")  # the same connection, never closed: its retry gets through
    assert client.readline(timeout=90) == "got during"
    assert server.readline() == "received during"
    client.send("send after 30")
    assert client.readline() == "got after"
    assert client.poll() is None and server.poll() is None


def test_hosts_have_their_own_address_hostname_and_shared_memory(make_hosts):
    net = make_hosts(2)
    seen = {}
    for host in net:
        seen[host.name] = host.python(textwrap.dedent(
            """
            import json, os, socket, sys
            open("/dev/shm/mark-" + socket.gethostname(), "w").close()
            socket.create_server((sys.argv[1], 0)).close()  # the address is this host's
            print(json.dumps({"hostname": socket.gethostname(), "shm": sorted(os.listdir("/dev/shm")),
                              "tmpdir": os.environ["CLUSTER_TMPDIR"],
                              "others": {name: socket.gethostbyname(name) for name in sys.argv[2:]}}))
            """), host.ip, *(h.name for h in net if h is not host)).stdout
    for host in net:
        assert json.loads(seen[host.name]) == {
            "hostname": host.name, "shm": [f"mark-{host.name}"], "tmpdir": str(host.tmpdir),
            "others": {h.name: h.ip for h in net if h is not host}}


# A driver with a node on its host: tasks, results and objects between all three hosts.
THREE_HOSTS = textwrap.dedent(
    """
    import json, os, socket
    import numpy as np
    import cluster

    @cluster.remote
    def where():
        return socket.gethostname(), os.environ["CLUSTER_NODE_ID"]

    @cluster.remote(resources={"a": 1})
    def make(n):
        return np.ones(n, dtype=np.int64)

    @cluster.remote
    def total(array):
        return socket.gethostname(), int(array.sum())

    @cluster.remote
    def total_borrowed(refs):  # the ref travels inside a list: this worker borrows it
        return socket.gethostname(), int(cluster.get(refs[0]).sum())

    @cluster.remote(resources={"b": 1})
    def put_here(n):  # this worker owns the object; the driver asks it for the value
        return [cluster.put(np.full(n, 2, dtype=np.int64))]

    @cluster.remote(resources={"a": 1})
    def nested():  # a worker on the head's host submits to the node on another host
        return cluster.get(where.options(resources={"b": 1}).remote())

    cluster.init()
    out = {"driver": socket.gethostname()}
    out["nodes"] = [{k: n[k] for k in ("node_id", "address", "hostname", "is_head")} for n in cluster.nodes()]
    out["where"] = {r: cluster.get(where.options(resources={r: 1}).remote(), timeout=120) for r in "abc"}
    n = 50_000_000 // 8
    made = make.remote(n)  # 50 MB in the head's host's store
    out["pulled"] = cluster.get([total.options(resources={r: 1}).remote(made) for r in "bc"], timeout=120)
    out["driver_read"] = int(cluster.get(made, timeout=120).sum())
    mine = cluster.put(np.full(n, 3, dtype=np.int64))  # 50 MB in the driver's host's store
    out["from_driver"] = cluster.get([total.options(resources={"b": 1}).remote(mine),
                                      total_borrowed.options(resources={"a": 1}).remote([mine])], timeout=120)
    out["from_worker"] = int(cluster.get(cluster.get(put_here.remote(n), timeout=120)[0], timeout=120).sum())
    out["nested"] = cluster.get(nested.remote(), timeout=120)
    print(json.dumps(out))
    """
)


def test_tasks_and_a_50_mb_object_cross_three_hosts(make_hosts):
    net = make_hosts(3)
    h1, h2, h3 = net
    # Three ways to say where a daemon is: every interface and --node-ip (as in a pod), one
    # interface, every interface and nothing else (the address on the route to the head).
    head = h1.start_head("--host", "0.0.0.0", "--node-ip", h1.ip, "--num-cpus", "1", "--resources", '{"a": 1}')
    node2 = h2.join(head, "--num-cpus", "1", "--resources", '{"b": 1}')
    node3 = h3.join(head, "--host", "0.0.0.0", "--num-cpus", "1", "--resources", '{"c": 1}')
    assert head.address.startswith(f"{h1.ip}:")
    assert node2["address"].startswith(f"{h2.ip}:")
    assert node3["address"].startswith(f"{h3.ip}:")

    out = json.loads(h3.python(THREE_HOSTS, env=head.env(), timeout=300).stdout)

    by_host = {n["hostname"]: n for n in out["nodes"]}
    assert set(by_host) == {"h1", "h2", "h3"}
    for host in net:
        assert by_host[host.name]["address"].rpartition(":")[0] == host.ip
    assert by_host["h1"]["is_head"]
    assert {r: tuple(w) for r, w in out["where"].items()} == {
        r: (h, by_host[h]["node_id"]) for r, h in zip("abc", ["h1", "h2", "h3"], strict=True)}
    n = 50_000_000 // 8
    assert out["pulled"] == [["h2", n], ["h3", n]]
    assert out["driver_read"] == n
    assert out["from_driver"] == [["h2", 3 * n], ["h1", 3 * n]]
    assert out["from_worker"] == 2 * n
    assert out["nested"] == ["h2", by_host["h2"]["node_id"]]


def test_a_driver_on_a_host_with_no_node_is_told_how_to_connect(make_hosts):
    net = make_hosts(2)
    head = net[0].start_head("--num-cpus", "1")
    proc = net[1].python("import cluster; cluster.init()", env=head.env(), check=False, timeout=120)
    assert proc.returncode != 0
    error = proc.stderr.strip().splitlines()[-1]
    assert f"no node of the cluster at {head.address} runs on this machine" in error
    assert f"cluster start --address {head.address} --host" in error
    assert f"cluster.init('cluster://{head.address}')" in error

    joined = net[1].cluster("start", "--address", head.address, "--token", head.token)  # on 127.0.0.1
    assert f"this node will listen on 127.0.0.1 only, but it joins a head at {head.address}" in joined.stderr


def test_the_demo_runs_with_head_node_and_driver_on_three_hosts(make_hosts):
    """The acceptance test: examples/demo.py's workload (pi over 200 tasks on two nodes, a 100 MB
    matrix from the head's store to the node's) driven from a third host that runs no node, as a
    remote client (its calls go through the head)."""
    net = make_hosts(["head", "node", "laptop"])
    head_host, node_host, laptop = net
    head = head_host.start_head("--num-cpus", "1", "--resources", '{"producer": 1}')
    node = node_host.join(head, "--num-cpus", "1", "--resources", '{"consumer": 1}')
    head_id = next(r["node_id"] for r in head_host.daemons())

    proc = laptop.run([sys.executable, str(DEMO), "--address", f"cluster://{head.address}"],
                      env={"CLUSTER_TOKEN": head.token}, timeout=600)

    out = proc.stdout
    assert f"node {head_id} at {head.address} on head:" in out
    assert f"node {node['node_id']} at {node['address']} on node:" in out
    per_node = ast.literal_eval(re.search(r"tasks per node: (\{.*\})", out).group(1))
    assert sum(per_node.values()) == 200 and set(per_node) <= {head_id, node["node_id"]}
    assert "(expected 7.8125e+13, OK)" in out
    assert f"reduced on node(s) ['{node['node_id']}']" in out
    assert "building a 1250x10000 matrix (100 MB)" in out  # the worker's print, relayed to the laptop


JOB = ("import socket, cluster; cluster.init(); "
       "f = cluster.remote(resources={'far': 1})(lambda: socket.gethostname()); "
       "print('driver on', socket.gethostname(), 'task on', cluster.get(f.remote()))")


def test_the_job_api_serves_other_hosts_on_the_dashboard_host(make_hosts):
    net = make_hosts(["head", "node", "laptop"])
    head_host, node_host, laptop = net
    head = head_host.start_head("--num-cpus", "1", "--dashboard-host", "0.0.0.0")
    node_host.join(head, "--num-cpus", "1", "--resources", '{"far": 1}')
    assert head.dashboard_url.startswith(f"http://{head_host.ip}:")  # where others reach it, not 0.0.0.0
    proc = laptop.run([sys.executable, "-m", "cluster", "job", "submit", "--address", head.dashboard_url,
                       "--", "python", "-c", JOB], env={"CLUSTER_TOKEN": head.token}, timeout=300)
    assert "driver on head task on node" in proc.stdout


def test_where_hosts_cannot_be_made_the_reason_names_the_fix(monkeypatch):
    probe = hosts.unavailable.__wrapped__  # (unavailable() itself remembers its first answer)
    monkeypatch.setattr(hosts.os, "geteuid", lambda: 1000)
    assert "need root" in probe()
    monkeypatch.setattr(hosts.os, "geteuid", lambda: 0)
    real = hosts.shutil.which
    monkeypatch.setattr(hosts.shutil, "which", lambda tool: None if tool == "ip" else real(tool))
    assert probe() == "separate hosts need ip (iproute2): apt-get install iproute2 util-linux"
