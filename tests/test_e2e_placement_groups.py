"""Placement groups on real multi-node clusters: bundles reserved all or none, by strategy,
work run inside them, groups that wait for nodes, and what removing a group ends.

Two nodes of 2 CPUs each unless a test says otherwise; every task reports its node.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

import cluster
from cluster.errors import ConfigError
from cluster.exceptions import ActorDiedError, TaskPlacementGroupRemoved
from cluster.util import (
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from cluster.util.scheduling_strategies import PlacementGroupSchedulingStrategy


@cluster.remote(num_cpus=1)
def where() -> str:
    return cluster.get_runtime_context().get_node_id()


@cluster.remote(num_cpus=1)
class Holder:
    def node(self) -> str:
        return cluster.get_runtime_context().get_node_id()


def two_nodes(make_cluster: Any) -> Any:
    lc = make_cluster(num_cpus=2)
    lc.node = lc.add_node(num_cpus=2)
    lc.connect()
    return lc


def in_bundle(pg: Any, index: int = -1) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index)


def nodes_of(pg: Any) -> list[str]:
    table = placement_group_table(pg)
    return [table["bundles_to_node_id"][i] for i in range(len(pg.bundle_specs))]


def test_pack_puts_the_bundles_on_one_node_and_spread_on_two(make_cluster, e2e):
    two_nodes(make_cluster)
    packed = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="PACK")
    assert cluster.get(packed.ready(), timeout=60) == packed
    assert len(set(nodes_of(packed))) == 1
    remove_placement_group(packed)  # (else only the other node has room for two)
    e2e.wait_until(lambda: cluster.available_resources().get("CPU") == 4, what="the packed group's CPUs back")
    spread = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
    assert spread.wait(60)
    assert len(set(nodes_of(spread))) == 2
    assert placement_group_table(spread)["state"] == "CREATED"


def test_tasks_and_actors_run_in_their_bundle(make_cluster):
    two_nodes(make_cluster)
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    assert pg.wait(60)
    bundle_nodes = nodes_of(pg)
    for index in (0, 1):
        ran = cluster.get([where.options(scheduling_strategy=in_bundle(pg, index)).remote() for _ in range(3)],
                          timeout=60)
        assert set(ran) == {bundle_nodes[index]}
    actor = Holder.options(scheduling_strategy=in_bundle(pg, 1)).remote()
    assert cluster.get(actor.node.remote(), timeout=60) == bundle_nodes[1]
    # The bundle's CPU is the actor's now: a task asking for bundle 1 waits, bundle 0 still runs.
    waiting = where.options(scheduling_strategy=in_bundle(pg, 1)).remote()
    assert cluster.get(where.options(scheduling_strategy=in_bundle(pg, 0)).remote(), timeout=60) == bundle_nodes[0]
    ready, _ = cluster.wait([waiting], timeout=1)
    assert not ready
    cluster.kill(actor)
    assert cluster.get(waiting, timeout=60) == bundle_nodes[1]


def test_a_task_too_big_for_every_bundle_is_refused_at_once(make_cluster):
    two_nodes(make_cluster)
    pg = placement_group([{"CPU": 1}])
    with pytest.raises(ConfigError, match=r"\{CPU: 2\} fits in no bundle"):
        where.options(num_cpus=2, scheduling_strategy=in_bundle(pg))
    with pytest.raises(ConfigError, match="placement_group_bundle_index must be"):
        where.options(scheduling_strategy=in_bundle(pg, 5))


def test_strict_spread_over_more_bundles_than_nodes_waits_until_a_node_joins(make_cluster):
    lc = two_nodes(make_cluster)
    pg = placement_group([{"CPU": 1}] * 3, strategy="STRICT_SPREAD", name="trio")
    ready = pg.ready()
    assert not pg.wait(1)
    table = placement_group_table(pg)
    assert table["state"] == "PENDING"
    assert "needs 3 distinct nodes" in table["stats"]["reason"], table
    assert get_placement_group("trio") == pg
    lc.add_node(num_cpus=1)
    assert cluster.get(ready, timeout=60) == pg
    assert len(set(nodes_of(pg))) == 3


def test_an_all_or_nothing_group_takes_nothing_while_it_cannot_be_placed(make_cluster, e2e):
    two_nodes(make_cluster)
    pg = placement_group([{"CPU": 2}, {"CPU": 2}, {"CPU": 2}], strategy="SPREAD")  # 6 CPUs of 4
    assert not pg.wait(1)
    assert "could ever hold" in placement_group_table(pg)["stats"]["reason"]
    e2e.wait_until(lambda: cluster.available_resources().get("CPU") == 4, what="no CPU held by the pending group")
    assert len(cluster.get([where.remote() for _ in range(8)], timeout=60)) == 8  # work runs meanwhile, on all 4 CPUs


def test_removing_a_group_frees_its_resources_and_ends_what_runs_in_it(make_cluster, e2e):
    two_nodes(make_cluster)
    pg = placement_group([{"CPU": 2}, {"CPU": 2}], strategy="STRICT_SPREAD")
    assert pg.wait(60)
    actor = Holder.options(scheduling_strategy=in_bundle(pg, 0)).remote()
    cluster.get(actor.node.remote(), timeout=60)
    e2e.wait_until(lambda: cluster.available_resources().get("CPU", 0) == 0, what="the group to hold every CPU")
    assert cluster.get(pg.ready(), timeout=60) == pg  # (ready, and known so here: removal must still be seen)
    remove_placement_group(pg)
    e2e.wait_until(lambda: cluster.available_resources().get("CPU") == 4, what="the group's CPUs to come back")
    with pytest.raises(ActorDiedError):
        cluster.get(actor.node.remote(), timeout=60)
    with pytest.raises(TaskPlacementGroupRemoved, match="was removed"):
        cluster.get(where.options(scheduling_strategy=in_bundle(pg)).remote(), timeout=60)
    with pytest.raises(TaskPlacementGroupRemoved):
        cluster.get(pg.ready(), timeout=60)
    assert placement_group_table(pg)["state"] == "REMOVED"


def test_a_group_goes_with_its_creator_unless_detached(make_cluster, tmp_path, e2e):
    lc = two_nodes(make_cluster)
    source = (
        "import cluster\n"
        "from cluster.util import placement_group\n"
        "cluster.init()\n"
        "assert placement_group([{'CPU': 1}], name='mine').wait(60)\n"
        "assert placement_group([{'CPU': 1}], name='kept', lifetime='detached').wait(60)\n"
    )
    e2e.run_driver(lc, source, tmp_path)
    e2e.wait_until(lambda: {r["name"]: r["state"] for r in placement_group_table().values()}.get("mine") == "REMOVED",
                   what="the driver's group to go with it")
    kept = get_placement_group("kept")
    assert placement_group_table(kept)["state"] == "CREATED"
    remove_placement_group(kept)


def test_bad_groups_are_refused_with_what_to_do(make_cluster):
    two_nodes(make_cluster)
    for bundles, strategy, said in [([], "PACK", "non-empty list of bundles"),
                                    ([{"CPU": 0}], "PACK", "asks for nothing"),
                                    ([{"CPU": -1}], "PACK", "non-negative number"),
                                    ([{"CPU": 1}], "CLUMP", "must be one of PACK")]:
        with pytest.raises(ConfigError, match=said):
            placement_group(bundles, strategy=strategy)
    placement_group([{"CPU": 1}], name="taken")
    with pytest.raises(ConfigError, match="already exists"):
        placement_group([{"CPU": 1}], name="taken")
    with pytest.raises(ValueError, match="Failed to look up placement group with name: nobody"):
        get_placement_group("nobody")


def test_many_groups_come_and_go_and_give_everything_back(make_cluster, e2e):
    two_nodes(make_cluster)
    for _ in range(50):
        pg = placement_group([{"CPU": 0.1}])
        assert pg.wait(60)
        remove_placement_group(pg)
    assert {record["state"] for record in placement_group_table().values()} == {"REMOVED"}
    e2e.wait_until(lambda: cluster.available_resources().get("CPU") == 4, what="every CPU back")


def test_bundles_lost_with_a_node_are_placed_again_elsewhere(make_cluster, e2e):
    lc = make_cluster(num_cpus=0, heartbeat_timeout=2)  # the head holds no bundle
    doomed = lc.add_node(num_cpus=1)
    lc.add_node(num_cpus=2)
    lc.connect()
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
    assert pg.wait(60)
    lost = [i for i, node in enumerate(nodes_of(pg)) if node == doomed["node_id"]]
    assert lost, nodes_of(pg)
    os.kill(doomed["pid"], signal.SIGKILL)
    def placed_again() -> bool:
        table = placement_group_table(pg)  # (one read: state and nodes of the same moment)
        return table["state"] == "CREATED" and doomed["node_id"] not in table["bundles_to_node_id"].values()

    e2e.wait_until(placed_again, what="the lost bundle to be placed again", timeout=60)
    survivor = set(nodes_of(pg))
    assert len(survivor) == 1 and doomed["node_id"] not in survivor
    assert cluster.get(where.options(scheduling_strategy=in_bundle(pg, lost[0])).remote(), timeout=60) in survivor
