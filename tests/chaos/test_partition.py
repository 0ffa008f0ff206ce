"""Scenario 4: a node cut off from the cluster (its link down, no socket closes) for longer than
the heartbeat deadline, then healed. On separate hosts (tests/hosts.py): the driver runs on
the head's host and talks to the test through its stdin/stdout."""

from __future__ import annotations

import json
import sys
import textwrap
import time

# Submits 200 tasks that need the resource both worker nodes have; says "started" once some
# results are in, then waits for all and prints them with where each ran.
DRIVER = textwrap.dedent(
    """
    import json, os, sys, time
    import cluster

    @cluster.remote(resources={"pool": 0.01})
    def square(i):
        import time
        time.sleep(0.05)
        return i * i, os.environ["CLUSTER_NODE_ID"]

    cluster.init()
    refs = [square.remote(i) for i in range(200)]
    while len(cluster.wait(refs, num_returns=len(refs), timeout=0)[0]) < 20:
        time.sleep(0.01)
    print("started", flush=True)
    results = cluster.get(refs, timeout=180)
    print(json.dumps({"results": results, "nodes": cluster.nodes()}), flush=True)
    sys.stdin.readline()  # once the cut-off node is back: more work, on both nodes
    again = cluster.get([square.remote(i) for i in range(200)], timeout=180)
    print(json.dumps(again), flush=True)
    """
)


def node_states(host, head) -> dict:
    out = host.cluster("status", "--json", "--address", head.address, "--token", head.token).stdout
    return {n["node_id"]: n for n in json.loads(out)}


def test_a_partitioned_node_is_declared_dead_its_work_redone_and_it_rejoins_as_new(make_hosts, chaos):
    net = make_hosts(["head", "cut", "spare"])
    head_host, cut_host, spare_host = net
    head = head_host.start_head("--num-cpus", "1", "--heartbeat-timeout", "2")
    cut = cut_host.join(head, "--num-cpus", "2", "--resources", '{"pool": 1}')
    spare = spare_host.join(head, "--num-cpus", "2", "--resources", '{"pool": 1}')
    driver = head_host.spawn([sys.executable, "-c", DRIVER], env=head.env(), pipes=True)
    assert driver.readline(timeout=120) == "started"

    net.cut(cut_host)
    cut_at = time.monotonic()
    chaos.fault(f"cut the link of node {cut['node_id']} ({cut_host.ip}) mid-workload")
    deadline = time.monotonic() + 30
    while node_states(head_host, head)[cut["node_id"]]["state"] != "dead":
        assert time.monotonic() < deadline, "the cut-off node was never declared dead"
        time.sleep(0.1)
    chaos.verified(f"declared dead {time.monotonic() - cut_at:.1f}s after the cut (deadline 2s)")

    out = json.loads(driver.readline(timeout=180))  # every result, while it is still cut off
    results = out["results"]
    assert [value for value, _ in results] == [i * i for i in range(200)]
    assert any(node == spare["node_id"] for _, node in results)
    chaos.verified("200/200 results right, the cut-off node's share run again on the spare node")

    time.sleep(max(0.0, 8 - (time.monotonic() - cut_at)))  # longer than the deadline, then heal
    net.heal(cut_host)
    chaos.fault(f"heal the link after {time.monotonic() - cut_at:.0f}s")
    deadline = time.monotonic() + 60
    while True:
        states = node_states(head_host, head)
        rejoined = [n for n in states.values() if n["pid"] == cut["pid"] and n["node_id"] != cut["node_id"]
                    and n["state"] == "alive"]
        if rejoined:
            break
        assert time.monotonic() < deadline, f"the healed node never rejoined: {states}"
        time.sleep(0.2)
    assert states[cut["node_id"]]["state"] == "dead"
    assert "missed its heartbeat deadline" in states[cut["node_id"]]["death_reason"]
    chaos.verified(f"the healed node rejoined as new node {rejoined[0]['node_id']}; its old id stays dead")
    log = "".join(p.read_text() for p in cut_host.tmpdir.glob("node_*/logs/node-*.jsonl"))
    assert "node_rejoining_as_new" in log
    driver.send("again")
    again = json.loads(driver.readline(timeout=180))
    assert [value for value, _ in again] == [i * i for i in range(200)]
    ran_on = {node for _, node in again}
    assert cut["node_id"] not in ran_on and ran_on <= {spare["node_id"], rejoined[0]["node_id"]}
    chaos.verified(f"200/200 later results right, on {sorted(ran_on)}: nothing ran under the old id")
    assert driver.wait(timeout=60) == 0
