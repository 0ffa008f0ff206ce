"""Where work runs, on a real three-node cluster: SPREAD, node affinity, label selectors, and a
scheduling policy replaced by a plugin.

The cluster (shared by the module): the head (2 CPUs, zone a), node b (1 CPU, zone b, a
custom resource ``special: 2``, disk ssd) and node c (3 CPUs, zone c). Every task reports
the node it ran on.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import cluster
from cluster.exceptions import ActorUnschedulableError, TaskUnschedulableError
from cluster.util.scheduling_strategies import (
    DoesNotExist,
    In,
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    NotIn,
)

FIXTURE = Path(__file__).parent / "fixtures" / "cluster-plugin-pinned-scheduler"


@cluster.remote(num_cpus=0.25)
def where(pause: float = 0.0) -> str:
    time.sleep(pause)
    return cluster.get_runtime_context().get_node_id()


@cluster.remote(num_cpus=0)
class Locator:
    def node(self) -> str:
        return cluster.get_runtime_context().get_node_id()


def start_three(make: Any) -> Any:
    lc = make(num_cpus=2, labels={"zone": "a"})
    lc.b = lc.add_node(num_cpus=1, labels={"zone": "b", "disk": "ssd"}, resources={"special": 2})
    lc.c = lc.add_node(num_cpus=3, labels={"zone": "c"})
    head = next(r for r in lc.daemon_records() if r["pid"] == lc.head_pid)
    lc.ids = {"a": head["node_id"], "b": lc.b["node_id"], "c": lc.c["node_id"]}
    return lc


@pytest.fixture(scope="module")
def three(make_module_cluster) -> Any:
    lc = start_three(make_module_cluster)
    lc.connect()
    return lc


def zones(lc: Any, node_ids: list[str]) -> Counter:
    by_id = {node_id: zone for zone, node_id in lc.ids.items()}
    return Counter(by_id.get(node_id, node_id) for node_id in node_ids)


def test_nodes_carry_their_labels(three):
    labels = {n["node_id"]: n["labels"] for n in cluster.nodes() if n["state"] == "alive"}
    assert {labels[node_id]["zone"] for node_id in three.ids.values()} == {"a", "b", "c"}
    assert labels[three.ids["b"]]["disk"] == "ssd"


def test_default_packs_on_the_driver_s_node_while_it_has_room(three):
    assert zones(three, cluster.get([where.remote() for _ in range(8)], timeout=120)) == {"a": 8}


SPREAD_DRIVER = """
import collections, json, time
import cluster
cluster.init()

@cluster.remote(num_cpus=0.25, scheduling_strategy="SPREAD")
def where():
    time.sleep(0.05)
    return cluster.get_runtime_context().get_node_id()

print("RAN", json.dumps(collections.Counter(cluster.get([where.remote() for _ in range(30)], timeout=120))))
"""


def test_spread_puts_thirty_tasks_ten_on_each_node(make_cluster, tmp_path, e2e):
    """On a cluster of its own: nothing left over from other tests holds workers anywhere."""
    lc = start_three(make_cluster)
    proc = e2e.run_driver(lc, SPREAD_DRIVER, tmp_path)
    counts = zones(lc, list(Counter(json.loads(proc.stdout.split("RAN ")[1])).elements()))
    assert set(counts) == {"a", "b", "c"}, counts
    assert all(8 <= counts[zone] <= 12 for zone in "abc"), counts


def test_spread_actors_land_one_per_node(three):
    actors = [Locator.options(scheduling_strategy="SPREAD").remote() for _ in range(3)]
    try:
        assert zones(three, cluster.get([a.node.remote() for a in actors], timeout=120)) == {"a": 1, "b": 1, "c": 1}
    finally:
        for actor in actors:
            cluster.kill(actor)


def test_hard_node_affinity_runs_only_on_that_node(three):
    pinned = where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(three.ids["c"], soft=False))
    assert zones(three, cluster.get([pinned.remote() for _ in range(6)], timeout=120)) == {"c": 6}
    actor = Locator.options(scheduling_strategy=NodeAffinitySchedulingStrategy(three.ids["b"], soft=False)).remote()
    assert cluster.get(actor.node.remote(), timeout=120) == three.ids["b"]
    cluster.kill(actor)


def test_node_affinity_to_a_dead_node_fails_hard_and_falls_back_soft(three, e2e):
    gone = three.add_node(num_cpus=1)
    os.kill(gone["pid"], 9)
    e2e.wait_until(lambda: any(n["node_id"] == gone["node_id"] and n["state"] == "dead" for n in cluster.nodes()),
                   what="the head to declare the killed node dead", timeout=60)
    hard = NodeAffinitySchedulingStrategy(gone["node_id"], soft=False)
    with pytest.raises(TaskUnschedulableError, match=f"node {gone['node_id']} is not a live node"):
        cluster.get(where.options(scheduling_strategy=hard).remote(), timeout=60)
    with pytest.raises(ActorUnschedulableError, match="soft=True would"):
        cluster.get(Locator.options(scheduling_strategy=hard).remote().node.remote(), timeout=60)
    soft = NodeAffinitySchedulingStrategy(gone["node_id"], soft=True)
    assert cluster.get(where.options(scheduling_strategy=soft).remote(), timeout=60) in three.ids.values()


def test_hard_affinity_to_a_node_too_small_is_unschedulable(three):
    too_big = where.options(num_cpus=3, scheduling_strategy=NodeAffinitySchedulingStrategy(three.ids["b"], soft=False))
    with pytest.raises(TaskUnschedulableError, match=r"can never fit \{CPU: 3\}"):
        cluster.get(too_big.remote(), timeout=60)


def test_label_selectors_pick_the_matching_nodes(three, e2e):
    def ran(**options: Any) -> Counter:
        return zones(three, cluster.get([where.options(**options).remote() for _ in range(6)], timeout=120))

    assert ran(label_selector={"zone": "b"}) == {"b": 6}
    assert set(ran(label_selector={"zone": "in(b,c)"})) <= {"b", "c"}
    assert set(ran(label_selector={"zone": "!a"})) <= {"b", "c"}
    assert set(ran(label_selector={"zone": "!in(a,b)"})) == {"c"}
    assert ran(label_selector={"ray.io/node-id": three.ids["c"]}) == {"c": 6}
    assert ran(scheduling_strategy=NodeLabelSchedulingStrategy({"disk": In("ssd")})) == {"b": 6}
    assert "b" not in ran(scheduling_strategy=NodeLabelSchedulingStrategy({"zone": NotIn("b")}))
    assert ran(scheduling_strategy=NodeLabelSchedulingStrategy({"disk": DoesNotExist(), "zone": In("c")})) == {"c": 6}
    # soft labels: preferred while they have room (so first let the leases above go back from c,
    # its CPUs would be busy for a moment yet), else anywhere the hard ones allow
    def c_is_free() -> bool:
        return next(n for n in cluster.nodes() if n["node_id"] == three.ids["c"])["available"].get("CPU") == 3

    e2e.wait_until(c_is_free, what="node c's CPUs to be free")
    soft = NodeLabelSchedulingStrategy({"zone": NotIn("a")}, soft={"zone": In("c")})
    assert ran(scheduling_strategy=soft) == {"c": 6}


def test_a_custom_resource_and_labels_together(three):
    special = where.options(resources={"special": 1}, label_selector={"zone": "b"})
    assert zones(three, cluster.get([special.remote() for _ in range(4)], timeout=120)) == {"b": 4}


def test_a_selector_nothing_matches_is_infeasible_and_says_so(three, capfd):
    ref = where.options(label_selector={"zone": "mars"}).remote()
    ready, pending = cluster.wait([ref], timeout=3)
    assert not ready and pending == [ref]
    cluster.cancel(ref)
    err = capfd.readouterr().err
    assert "cannot be scheduled: no live node has labels {zone: mars}" in err, err


def test_a_malformed_selector_or_strategy_is_refused_at_once(three):
    with pytest.raises(cluster.errors.ConfigError, match="in\\(a,b\\)"):
        where.options(label_selector={"zone": "in()"})
    with pytest.raises(cluster.errors.ConfigError, match="NodeAffinitySchedulingStrategy"):
        where.options(scheduling_strategy="PACK")
    with pytest.raises(cluster.errors.ConfigError, match="must be a string"):
        where.options(label_selector={"zone": 3})


def test_a_policy_plugin_replaces_the_built_in_one(make_cluster, plugin_installer, e2e):
    """The pinned-scheduler plugin sends every request to the node labelled policy=target;
    the built-in policy would have run them all on the driver's node (it has room)."""
    with plugin_installer(FIXTURE, "cluster_plugin_pinned_scheduler") as path:
        pythonpath = os.pathsep.join(p for p in (path, os.environ.get("PYTHONPATH")) if p)
        lc = make_cluster(num_cpus=4, env={"PYTHONPATH": pythonpath})
        target = lc.add_node(num_cpus=1, labels={"policy": "target"})
        source = (
            "import cluster\n"
            "cluster.init()\n"
            "@cluster.remote\n"
            "def where():\n"
            "    return cluster.get_runtime_context().get_node_id()\n"
            "print('RAN', sorted(set(cluster.get([where.remote() for _ in range(6)], timeout=120))))\n"
        )
        proc = e2e.run_driver(lc, source, Path(path))
        assert f"RAN ['{target['node_id']}']" in proc.stdout, proc.stdout + proc.stderr

