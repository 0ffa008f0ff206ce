"""The scaling policy, replayed on sequences of observations (no I/O, no clock)."""

from __future__ import annotations

from cluster_autoscaler.config import parse_config
from cluster_autoscaler.policy import (
    REMOVE_AFTER_ROUNDS,
    Demand,
    GroupDemand,
    LaunchError,
    NodeObservation,
    Observation,
    plan,
)

CONFIG = parse_config("""\
cluster_name: t
provider: {type: fake}
head_node_type: head
max_workers: 6
idle_timeout_s: 30
upscaling_speed: 1
node_types:
  head: {resources: {CPU: 1}}
  small: {resources: {CPU: 2}, max_workers: 4}
  big: {resources: {CPU: 8}, max_workers: 1}
  gpu: {resources: {CPU: 4, accel: 1}, max_workers: 1}
  keeper: {resources: {CPU: 1, keep: 1}, min_workers: 1, max_workers: 2}
""")

HEAD = NodeObservation("head", "head", "running", {"CPU": 1}, {"CPU": 1}, is_head=True)
KEEPER = NodeObservation("k1", "keeper", "running", {"CPU": 1, "keep": 1}, {"CPU": 0, "keep": 1})


def node(instance_id: str, node_type: str, *, state: str = "running", used: float = 0, idle_s: float = 0,
         objects: int = 0) -> NodeObservation:
    resources = dict(CONFIG.node_types[node_type].resources)
    available = {**resources, "CPU": resources["CPU"] - used}
    return NodeObservation(instance_id, node_type, state, resources, available, idle_s, objects)


def reasons(p) -> dict[str, str]:
    return {d.subject: d.reason for d in p.decisions}


def test_min_workers_are_launched_and_then_kept() -> None:
    first = plan(CONFIG, Observation(now=0, nodes=(HEAD,)))
    assert first.launch == {"keeper": 1}
    assert "min_workers is 1" in reasons(first)["keeper"]
    idle_keeper = NodeObservation("k1", "keeper", "running", {"CPU": 1, "keep": 1}, {"CPU": 1, "keep": 1}, idle_s=999)
    later = plan(CONFIG, Observation(now=100, nodes=(HEAD, idle_keeper)))
    assert later.launch == {} and later.terminate == ()
    assert "at min_workers (1)" in reasons(later)["k1"]


def test_demand_is_bin_packed_onto_the_smallest_type_that_fits() -> None:
    p = plan(CONFIG, Observation(now=0, nodes=(HEAD, KEEPER), demand=(Demand({"CPU": 1}, 5),)))
    assert p.launch == {"small": 2}  # 1 CPU fits on the head; 4 more on two 2-CPU nodes
    assert "2 for pending demand {CPU: 1}" in reasons(p)["small"]


def test_a_custom_resource_goes_to_its_type_only() -> None:
    p = plan(CONFIG, Observation(now=0, nodes=(HEAD, KEEPER), demand=(Demand({"CPU": 1, "accel": 1}, 1),)))
    assert p.launch == {"gpu": 1}


def test_capacity_already_launching_is_counted() -> None:
    launching = node("s1", "small", state="launching")
    p = plan(CONFIG, Observation(now=0, nodes=(HEAD, KEEPER, launching), demand=(Demand({"CPU": 2}, 1),)))
    assert p.launch == {}


def test_limits_are_explained_for_what_stays_pending() -> None:
    p = plan(CONFIG, Observation(now=0, nodes=(HEAD, KEEPER), demand=(Demand({"CPU": 8}, 3), Demand({"GPU": 1}, 2))))
    assert p.launch == {"big": 1}
    why = reasons(p)
    assert "max_workers reached for big (1)" in why["{CPU: 8}"]
    assert "no node type can fit {GPU: 1}" in why["{GPU: 1}"]
    assert why["{GPU: 1}"].startswith("2 x {GPU: 1} wait")


def test_the_cluster_max_workers_caps_every_type() -> None:
    p = plan(CONFIG, Observation(now=0, nodes=(HEAD, KEEPER), demand=(Demand({"CPU": 2}, 50),)))
    assert p.launch == {"small": 4, "big": 1}  # 5 launches + the keeper = max_workers 6
    assert "max_workers" in reasons(p)["{CPU: 2}"]


def test_upscaling_speed_limits_launches_per_round() -> None:
    config = parse_config("""\
cluster_name: t
provider: {type: fake}
head_node_type: head
max_workers: 100
upscaling_speed: 0.5
node_types:
  head: {resources: {CPU: 1}}
  small: {resources: {CPU: 1}, max_workers: 100}
""")
    p = plan(config, Observation(now=0, nodes=(HEAD,), demand=(Demand({"CPU": 1}, 40),)))
    assert p.launch == {"small": 5}  # at least 5 a round, however small the cluster
    assert "upscaling_speed" in reasons(p)["{CPU: 1}"]


def test_an_idle_node_is_removed_only_after_several_rounds_in_a_row() -> None:
    idle = node("s1", "small", idle_s=60)
    memory = None
    for round_ in range(1, REMOVE_AFTER_ROUNDS):
        p = plan(CONFIG, Observation(now=round_, nodes=(HEAD, KEEPER, idle)), memory)
        assert p.terminate == ()
        assert f"removal chosen {round_} of {REMOVE_AFTER_ROUNDS}" in reasons(p)["s1"]
        memory = p.memory
    busy_again = plan(CONFIG, Observation(now=10, nodes=(HEAD, KEEPER, node("s1", "small", used=1))), memory)
    assert busy_again.memory.removal_votes == {}  # the streak is broken
    memory = busy_again.memory
    for round_ in range(REMOVE_AFTER_ROUNDS):
        p = plan(CONFIG, Observation(now=20 + round_, nodes=(HEAD, KEEPER, idle)), memory)
        memory = p.memory
    assert p.terminate == ("s1",)
    assert "chosen 3 rounds in a row" in reasons(p)["s1"]


def test_idle_nodes_that_are_still_useful_are_kept_with_a_reason() -> None:
    too_fresh = node("s1", "small", idle_s=10)
    holding = node("s2", "small", idle_s=60, objects=3)
    wanted = node("s3", "small", idle_s=60)
    p = plan(CONFIG, Observation(now=0, nodes=(HEAD, KEEPER, wanted, holding, too_fresh),
                                 demand=(Demand({"CPU": 2}, 1),)))
    why = reasons(p)
    assert "s1" not in why  # not idle long enough to be considered at all
    assert "primary copy of 3 live object(s)" in why["s2"]
    assert "pending demand fits on it" in why["s3"]
    assert p.terminate == () and p.launch == {}


def test_failing_launches_back_off_and_recover() -> None:
    demand = (Demand({"CPU": 8}, 1),)
    failed = plan(CONFIG, Observation(now=0, nodes=(HEAD, KEEPER), demand=demand,
                                      launch_errors=(LaunchError("big", "quota exceeded"),)))
    assert failed.launch == {}
    assert "launches of big are failing (quota exceeded); backing off for 5s more" in reasons(failed)["{CPU: 8}"]
    again = plan(CONFIG, Observation(now=6, nodes=(HEAD, KEEPER), demand=demand,
                                     launch_errors=(LaunchError("big", "quota exceeded"),)), failed.memory)
    assert "backing off for 10s more" in reasons(again)["{CPU: 8}"]  # doubled
    retry = plan(CONFIG, Observation(now=17, nodes=(HEAD, KEEPER), demand=demand), again.memory)
    assert retry.launch == {"big": 1}
    joined = plan(CONFIG, Observation(now=30, nodes=(HEAD, KEEPER, node("b1", "big", used=8))), retry.memory)
    assert "big" not in joined.memory.failures  # a node of the type came up: the slate is clean


def test_a_strict_spread_group_launches_a_node_for_each_bundle_without_its_own_node() -> None:
    small = node("s1", "small")  # 2 CPUs free: room for both bundles, but one may go there
    group = GroupDemand(({"CPU": 1}, {"CPU": 1}, {"CPU": 1}), "STRICT_SPREAD")
    p = plan(CONFIG, Observation(now=0, nodes=(HEAD, KEEPER, small), groups=(group,)))
    assert p.launch == {"small": 1}  # the head and s1 take one bundle each; the third needs a node
    assert "STRICT_SPREAD placement group's bundle {CPU: 1}" in reasons(p)["small"]


def test_a_strict_pack_group_needs_one_node_for_all_its_bundles() -> None:
    group = GroupDemand(({"CPU": 3}, {"CPU": 3}), "STRICT_PACK")
    assert plan(CONFIG, Observation(now=0, nodes=(HEAD, KEEPER), groups=(group,))).launch == {"big": 1}
    packed = GroupDemand(({"CPU": 2}, {"CPU": 2}), "PACK")  # may split: two small nodes
    assert plan(CONFIG, Observation(now=0, nodes=(HEAD, KEEPER), groups=(packed,))).launch == {"small": 2}



LABELLED = parse_config("""\
cluster_name: t
provider: {type: fake}
head_node_type: head
max_workers: 4
node_types:
  head: {resources: {CPU: 4}}
  plain: {resources: {CPU: 2}, max_workers: 2}
  zoned: {resources: {CPU: 2}, labels: {zone: b}, max_workers: 2}
""")


def test_demand_under_a_label_selector_launches_a_type_with_those_labels() -> None:
    head = NodeObservation("head", "head", "running", {"CPU": 4}, {"CPU": 4}, is_head=True)
    in_b = (("zone", "in", ("b",)),)
    p = plan(LABELLED, Observation(now=0, nodes=(head,), demand=(Demand({"CPU": 1}, 1, in_b),)))
    assert p.launch == {"zoned": 1}  # the head has room, but not the label
    p = plan(LABELLED, Observation(now=0, nodes=(head,), demand=(Demand({"CPU": 1}, 1, (("zone", "in", ("z",)),)),)))
    assert p.launch == {} and "no node type with labels {zone: z} can fit {CPU: 1}" in reasons(p)["{CPU: 1}"]
