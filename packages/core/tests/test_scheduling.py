"""Resource arithmetic and the default spill policy: pure functions, no processes."""

from __future__ import annotations

import json
import random

import pytest

from cluster.errors import ConfigError
from cluster.node.policy import MAX_SPILLS, SAMPLE, SchedulingPolicy
from cluster.resources import (
    fits,
    format_shape,
    parse_size,
    resources_arg,
    total_demand,
)
from cluster.scheduling import (
    DEFAULT_PLACEMENT,
    LOCAL,
    Decision,
    DoesNotExist,
    Exists,
    GroupRequest,
    In,
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    NodeView,
    NotIn,
    Placement,
    ResourceView,
    SchedulingRequest,
    describe_selector,
    group_of,
    group_resources,
    matches,
    parse_label_selector,
    placement_of,
    shape_in_group,
    with_default_labels,
)

# ----------------------------------------------------------------------------- format_shape


def test_format_shape_sorts_names_and_leaves_zero_amounts_out() -> None:
    assert format_shape({"accel": 2, "CPU": 1, "GPU": 0}) == "{CPU: 1, accel: 2}"


def test_format_shape_prints_fractions_without_trailing_zeros() -> None:
    assert format_shape({"CPU": 0.5, "mem": 2.0, "b": 1e-3}) == "{CPU: 0.5, b: 0.001, mem: 2}"


def test_format_shape_of_nothing_is_empty_braces() -> None:
    assert format_shape({}) == "{}"
    assert format_shape({"CPU": 0}) == "{}"


# ------------------------------------------------------------------------------------ fits


def test_a_shape_fits_exactly_the_room_left() -> None:
    assert fits({"CPU": 2, "a": 1}, {"CPU": 2, "a": 1, "b": 5})


def test_a_shape_does_not_fit_when_one_resource_is_short() -> None:
    assert not fits({"CPU": 1, "a": 2}, {"CPU": 8, "a": 1.5})


def test_a_resource_the_node_does_not_have_counts_as_zero() -> None:
    assert not fits({"accel": 1}, {"CPU": 4})
    assert fits({"accel": 0}, {"CPU": 4})  # asking for none of it is always fine
    assert fits({}, {})


def test_fits_forgives_float_rounding_but_not_a_real_shortfall() -> None:
    left = 1.0 - 0.9  # 0.09999999999999998: what is left of a CPU after a 0.9 lease
    assert left < 0.1
    assert fits({"CPU": 0.1}, {"CPU": left})
    assert not fits({"CPU": 0.1}, {"CPU": 0.099})


# ---------------------------------------------------------------------------- total_demand


def test_total_demand_adds_the_same_shape_across_nodes_whatever_the_key_order() -> None:
    reports = [
        [{"shape": {"CPU": 1, "a": 1}, "count": 3, "infeasible": False}],
        [{"shape": {"a": 1, "CPU": 1}, "count": 2, "infeasible": False}],
    ]
    assert total_demand(reports) == [{"shape": {"CPU": 1, "a": 1}, "count": 5, "infeasible": False, "labels": []}]


def test_total_demand_keeps_work_under_different_label_selectors_apart() -> None:
    in_b = [["zone", "in", ["b"]]]
    reports = [[{"shape": {"CPU": 1}, "count": 2, "infeasible": False, "labels": in_b},
                {"shape": {"CPU": 1}, "count": 3, "infeasible": False}]]
    assert total_demand(reports) == [
        {"shape": {"CPU": 1}, "count": 3, "infeasible": False, "labels": []},
        {"shape": {"CPU": 1}, "count": 2, "infeasible": False, "labels": in_b},
    ]


def test_total_demand_keeps_infeasible_apart_from_feasible_and_skips_missing_reports() -> None:
    reports = [
        [{"shape": {"CPU": 1}, "count": 1, "infeasible": False, "labels": []},
         {"shape": {"CPU": 64}, "count": 4, "infeasible": True}],
        None,  # a node that has not reported yet
        [],
        [{"shape": {"CPU": 1}, "count": 1, "infeasible": True}],
    ]
    assert total_demand(reports) == [
        {"shape": {"CPU": 64}, "count": 4, "infeasible": True, "labels": []},
        {"shape": {"CPU": 1}, "count": 1, "infeasible": False, "labels": []},
        {"shape": {"CPU": 1}, "count": 1, "infeasible": True, "labels": []},
    ]


def test_total_demand_orders_by_count_then_by_shape() -> None:
    reports = [[
        {"shape": {"b": 1}, "count": 2, "infeasible": False},
        {"shape": {"a": 1}, "count": 2, "infeasible": False},
        {"shape": {"c": 1}, "count": 7, "infeasible": False},
    ]]
    assert [item["shape"] for item in total_demand(reports)] == [{"c": 1}, {"a": 1}, {"b": 1}]


def test_total_demand_does_not_change_the_reports() -> None:
    report = [{"shape": {"CPU": 1}, "count": 1, "infeasible": False}]
    snapshot = json.dumps(report)
    total_demand([report, report])
    assert json.dumps(report) == snapshot


# ------------------------------------------------------------------------------ parse_size


@pytest.mark.parametrize(("text", "expected"), [
    (1_000_000, 1_000_000),
    (2.5e9, 2_500_000_000),
    ("1000000", 1_000_000),
    ("200MB", 200_000_000),
    ("200M", 200_000_000),
    ("2 GB", 2_000_000_000),
    ("1.5GiB", 3 * 1024**3 // 2),
    ("64kib", 64 * 1024),
    ("1TB", 1000**4),
    ("10B", 10),
])
def test_parse_size_reads_numbers_and_decimal_and_binary_units(text: str | float, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", [0, -5, "0MB", "-1GB", "", "lots", "10XB", "GB", "1.5.0MB", True, False])
def test_parse_size_refuses_what_is_not_a_positive_size_and_names_the_setting(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^spill limit must be .*size like 2000000000 or '2GB'"):
        parse_size(bad, "spill limit")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- resources_arg


def test_resources_arg_adds_cpu_and_gpu_to_the_custom_resources() -> None:
    assert json.loads(resources_arg(2, None, '{"accel": 2}')) == {"accel": 2, "CPU": 2.0, "GPU": 0.0}
    assert json.loads(resources_arg(0.5, 1, {"b": 1})) == {"b": 1, "CPU": 0.5, "GPU": 1.0}


@pytest.mark.parametrize(("num_cpus", "num_gpus", "resources", "message"), [
    (1, None, "{accel: 2}", "--resources must be a JSON object"),
    (1, None, {"accel": -1}, "resource 'accel' must be a non-negative number, got -1"),
    (1, None, {"accel": "2"}, "resource 'accel' must be a non-negative number, got '2'"),
    (1, None, {"accel": True}, "resource 'accel' must be a non-negative number, got True"),
    (-1, None, {}, "num_cpus must be a non-negative number, got -1"),
    (1, "1", {}, "num_gpus must be a non-negative number, got '1'"),
])
def test_resources_arg_refuses_bad_amounts_with_the_name(num_cpus: object, num_gpus: object,
                                                         resources: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{")):
        resources_arg(num_cpus, num_gpus, resources)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ SchedulingPolicy


def nv(node_id: str, total: dict, available: dict | None = None, labels: dict | None = None) -> NodeView:
    return NodeView(node_id, f"10.0.0.{node_id}:7000", dict(total),
                    dict(total if available is None else available), dict(labels or {}))


def decide(view: ResourceView, shape: dict, placement: Placement = DEFAULT_PLACEMENT,
           spill_count: int = 0, policy: SchedulingPolicy | None = None) -> Decision:
    return (policy or SchedulingPolicy()).decide(SchedulingRequest(shape, placement, spill_count), view)


def spill(node_id: str) -> Decision:
    return Decision("spill", f"10.0.0.{node_id}:7000")


def affinity(node_id: str, soft: bool = False, **flags: bool) -> Placement:
    return placement_of(NodeAffinitySchedulingStrategy(node_id, soft, **flags))


# DEFAULT


def test_default_runs_locally_when_the_local_node_has_room() -> None:
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 16})], "1")
    assert decide(view, {"CPU": 1}) == LOCAL


def test_default_spills_to_the_node_with_the_most_free_cpu_when_local_is_full() -> None:
    view = ResourceView([nv("1", {"CPU": 4}, {"CPU": 0}), nv("2", {"CPU": 8}, {"CPU": 2}),
                         nv("3", {"CPU": 8}, {"CPU": 6}), nv("4", {"CPU": 8}, {"CPU": 0.5})], "1")
    assert decide(view, {"CPU": 1}) == spill("3")


def test_default_waits_locally_when_no_node_has_room_but_local_could_fit() -> None:
    view = ResourceView([nv("1", {"CPU": 4}, {"CPU": 0}), nv("2", {"CPU": 8}, {"CPU": 0})], "1")
    assert decide(view, {"CPU": 1}) == LOCAL


def test_default_stays_local_after_max_spills_even_if_another_node_has_room() -> None:
    view = ResourceView([nv("1", {"CPU": 4}, {"CPU": 0}), nv("2", {"CPU": 8})], "1")
    assert decide(view, {"CPU": 1}, spill_count=MAX_SPILLS - 1) == spill("2")
    assert decide(view, {"CPU": 1}, spill_count=MAX_SPILLS) == LOCAL


def test_default_goes_to_a_node_that_can_fit_when_local_never_can_even_if_it_is_busy() -> None:
    view = ResourceView([nv("1", {"CPU": 8}), nv("2", {"CPU": 4, "accel": 1}, {"CPU": 0, "accel": 0})],
                        "1", rng=random.Random(0))
    assert decide(view, {"CPU": 1, "accel": 1}) == spill("2")
    assert decide(view, {"CPU": 1, "accel": 1}, spill_count=MAX_SPILLS) == spill("2")


def test_default_is_infeasible_naming_the_shape_and_the_largest_node() -> None:
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 8, "accel": 1})], "1")
    decision = decide(view, {"CPU": 64})
    assert decision.action == "infeasible"
    assert decision.reason == "no node of the cluster can ever fit {CPU: 64} (largest node: {CPU: 8, accel: 1})"


# SPREAD


def test_spread_goes_round_robin_over_the_nodes_with_room() -> None:
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 4}), nv("3", {"CPU": 4})], "1")
    policy, placement = SchedulingPolicy(), placement_of("SPREAD")
    picked = []
    for _ in range(6):
        decision = decide(view, {"CPU": 1}, placement, policy=policy)
        picked.append("10.0.0.1:7000" if decision == LOCAL else decision.address)
    assert sorted(picked[:3]) == ["10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"]
    assert picked[3:] == picked[:3]


def test_spread_skips_nodes_without_room() -> None:
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 4}, {"CPU": 0}), nv("3", {"CPU": 4})], "1")
    policy, placement = SchedulingPolicy(), placement_of("SPREAD")
    picked = [decide(view, {"CPU": 1}, placement, policy=policy) for _ in range(4)]
    assert spill("2") not in picked
    assert picked.count(LOCAL) == 2 and picked.count(spill("3")) == 2


def test_a_spilled_spread_request_is_taken_locally_if_it_fits() -> None:
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 4}), nv("3", {"CPU": 4})], "2")
    policy, placement = SchedulingPolicy(), placement_of("SPREAD")
    assert [decide(view, {"CPU": 1}, placement, 1, policy) for _ in range(3)] == [LOCAL] * 3


# node affinity


def test_hard_affinity_to_the_local_node_runs_locally() -> None:
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 16})], "1")
    assert decide(view, {"CPU": 1}, affinity("1")) == LOCAL


def test_hard_affinity_to_another_node_spills_there_even_if_local_has_room() -> None:
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 4})], "1")
    assert decide(view, {"CPU": 1}, affinity("2")) == spill("2")


def test_hard_affinity_to_a_busy_node_waits_for_it() -> None:
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 4}, {"CPU": 0})], "1")
    assert decide(view, {"CPU": 1}, affinity("2")) == spill("2")


def test_hard_affinity_to_an_unknown_node_is_unschedulable() -> None:
    view = ResourceView([nv("1", {"CPU": 4})], "1")
    decision = decide(view, {"CPU": 1}, affinity("ff00"))
    assert decision.action == "unschedulable"
    assert "node ff00 is not a live node" in decision.reason


def test_hard_affinity_to_a_node_too_small_is_unschedulable() -> None:
    view = ResourceView([nv("1", {"CPU": 16}), nv("2", {"CPU": 2})], "1")
    decision = decide(view, {"CPU": 4}, affinity("2"))
    assert decision.action == "unschedulable"
    assert "node 2 can never fit {CPU: 4} (it has {CPU: 2})" in decision.reason


def test_soft_affinity_to_an_unknown_node_is_placed_as_default() -> None:
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 16})], "1")
    assert decide(view, {"CPU": 1}, affinity("ff00", soft=True)) == LOCAL


def test_hard_affinity_failing_on_unavailable_to_a_busy_node_is_unschedulable() -> None:
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 4}, {"CPU": 0})], "1")
    decision = decide(view, {"CPU": 1}, affinity("2", _fail_on_unavailable=True))
    assert decision.action == "unschedulable"
    assert "node 2 has no room for {CPU: 1} now" in decision.reason


def test_soft_affinity_spilling_on_unavailable_from_a_busy_node_is_placed_elsewhere() -> None:
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 4}, {"CPU": 0})], "1")
    assert decide(view, {"CPU": 1}, affinity("2", soft=True, _spill_on_unavailable=True)) == LOCAL
    view = ResourceView([nv("1", {"CPU": 4}, {"CPU": 0}), nv("2", {"CPU": 4}), nv("3", {"CPU": 4})], "2")
    placement = affinity("1", soft=True, _spill_on_unavailable=True)
    assert decide(view, {"CPU": 1}, placement) == LOCAL  # at node 2: not sent to the busy node 1


# labels


def test_hard_labels_spill_to_the_matching_node_even_if_local_has_room() -> None:
    view = ResourceView([nv("1", {"CPU": 4}, labels={"zone": "a"}),
                         nv("2", {"CPU": 4}, labels={"zone": "b"})], "1")
    assert decide(view, {"CPU": 1}, placement_of(None, {"zone": "b"})) == spill("2")
    assert decide(view, {"CPU": 1}, placement_of(None, {"zone": "a"})) == LOCAL


def test_hard_labels_no_node_matches_is_infeasible_naming_the_labels() -> None:
    view = ResourceView([nv("1", {"CPU": 4}, labels={"zone": "a"})], "1")
    decision = decide(view, {"CPU": 1}, placement_of(None, {"zone": "mars"}))
    assert decision.action == "infeasible"
    assert decision.reason == "no live node has labels {zone: mars}"


def test_hard_labels_matching_nodes_too_small_is_infeasible_naming_the_largest() -> None:
    view = ResourceView([nv("1", {"CPU": 64}), nv("2", {"CPU": 2}, labels={"zone": "a"})], "1")
    decision = decide(view, {"CPU": 4}, placement_of(None, {"zone": "a"}))
    assert decision.action == "infeasible"
    assert decision.reason == "no node with labels {zone: a} can ever fit {CPU: 4} (largest: {CPU: 2})"


def test_soft_labels_prefer_a_matching_node_with_room() -> None:
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 4}, labels={"zone": "a"})], "1")
    placement = placement_of(NodeLabelSchedulingStrategy({}, soft={"zone": In("a")}))
    assert decide(view, {"CPU": 1}, placement) == spill("2")


def test_soft_labels_fall_back_to_other_nodes_when_the_matching_ones_are_full() -> None:
    placement = placement_of(NodeLabelSchedulingStrategy({}, soft={"zone": In("a")}))
    view = ResourceView([nv("1", {"CPU": 4}), nv("2", {"CPU": 4}, {"CPU": 0}, {"zone": "a"})], "1")
    assert decide(view, {"CPU": 1}, placement) == LOCAL
    view = ResourceView([nv("1", {"CPU": 4}, {"CPU": 0}), nv("2", {"CPU": 4}, {"CPU": 0}, {"zone": "a"}),
                         nv("3", {"CPU": 4})], "1")
    assert decide(view, {"CPU": 1}, placement) == spill("3")


def test_a_soft_label_request_settles_after_max_spills() -> None:
    # Two nodes in zone a, each with room for the task, each with a stale view in which the
    # other one has far more free CPU.
    at_1 = ResourceView([nv("1", {"CPU": 8}, {"CPU": 1}, {"zone": "a"}),
                         nv("2", {"CPU": 8}, {"CPU": 8}, {"zone": "a"})], "1")
    at_2 = ResourceView([nv("1", {"CPU": 8}, {"CPU": 8}, {"zone": "a"}),
                         nv("2", {"CPU": 8}, {"CPU": 1}, {"zone": "a"})], "2")
    views = {"10.0.0.1:7000": at_1, "10.0.0.2:7000": at_2}
    placement = placement_of(NodeLabelSchedulingStrategy({}, soft={"zone": In("a")}))
    view, spills = at_1, 0
    decision = decide(view, {"CPU": 1}, placement, spills)
    while decision.action == "spill" and spills < 10:
        view, spills = views[decision.address], spills + 1
        decision = decide(view, {"CPU": 1}, placement, spills)
    assert decision == LOCAL
    assert spills <= MAX_SPILLS


# label selectors


@pytest.mark.parametrize(("selector", "expected"), [
    ({"zone": "a"}, (("zone", "in", ("a",)),)),
    ({"zone": "!a"}, (("zone", "not_in", ("a",)),)),
    ({"zone": "in(a,b)"}, (("zone", "in", ("a", "b")),)),
    ({"zone": "!in(a, b)"}, (("zone", "not_in", ("a", "b")),)),
    ({"zone": "a", "gpu": "!x"}, (("gpu", "not_in", ("x",)), ("zone", "in", ("a",)))),
    (None, ()),
])
def test_parse_label_selector_reads_rays_syntax(selector: object, expected: tuple) -> None:
    assert parse_label_selector(selector) == expected


@pytest.mark.parametrize("bad", [{"zone": "in()"}, {"zone": "!in()"}, {"zone": 3}, {"zone": "a,b"},
                                 {"zone": ""}, {"zone": "!"}, {"": "a"}, {"zone": "a(b"}, ["zone"], "zone=a"])
def test_parse_label_selector_refuses_what_is_malformed(bad: object) -> None:
    with pytest.raises(ConfigError, match="label_selector"):
        parse_label_selector(bad)


@pytest.mark.parametrize("bad", [{"zone": "in(a,b))"}, {"zone": "in(a(b)"}, {"zone": "!!a"}, {"zone": "in(!a)"}])
def test_parse_label_selector_refuses_stray_parentheses_inside_in(bad: object) -> None:
    with pytest.raises(ConfigError):
        parse_label_selector(bad)


def test_matches_treats_a_missing_label_as_not_in_anything() -> None:
    assert matches(parse_label_selector({"zone": "!a"}), {})
    assert not matches(parse_label_selector({"zone": "a"}), {})
    assert not matches(parse_label_selector({"zone": "in(a,b)"}), {"other": "a"})
    assert not matches(parse_label_selector({"zone": "!in(a,b)"}), {"zone": "b"})
    assert matches(parse_label_selector({"zone": "in(a,b)"}), {"zone": "b"})


def test_matches_exists_and_does_not_exist() -> None:
    exists = (("gpu", "exists", ()),)
    absent = (("gpu", "not_exists", ()),)
    assert matches(exists, {"gpu": "x"}) and not matches(exists, {})
    assert matches(absent, {}) and not matches(absent, {"gpu": "x"})


def test_matches_needs_every_expression() -> None:
    expressions = parse_label_selector({"zone": "a", "gpu": "!x"})
    assert matches(expressions, {"zone": "a", "gpu": "y"})
    assert not matches(expressions, {"zone": "a", "gpu": "x"})
    assert matches((), {})


def test_describe_selector_writes_rays_syntax() -> None:
    expressions = (*parse_label_selector({"zone": "in(a,b)", "gpu": "!x"}), ("k", "exists", ()))
    assert describe_selector(expressions) == "{gpu: !x, zone: in(a,b), k: exists}"


# placement_of


def test_placement_of_nothing_or_default_is_the_default_placement() -> None:
    assert placement_of(None) is DEFAULT_PLACEMENT
    assert placement_of("DEFAULT") is DEFAULT_PLACEMENT
    assert placement_of(None, {"zone": "a"}) == Placement(labels=(("zone", "in", ("a",)),))


def test_placement_of_spread() -> None:
    assert placement_of("SPREAD") == Placement("SPREAD")
    assert placement_of("SPREAD", {"zone": "a"}) == Placement("SPREAD", labels=(("zone", "in", ("a",)),))


def test_placement_of_node_affinity_keeps_its_flags() -> None:
    strategy = NodeAffinitySchedulingStrategy("ab12", soft=True, _spill_on_unavailable=True)
    assert placement_of(strategy) == Placement("NODE_AFFINITY", "ab12", soft=True, spill_on_unavailable=True)
    hard = NodeAffinitySchedulingStrategy("ab12", soft=False, _fail_on_unavailable=True)
    assert placement_of(hard) == Placement("NODE_AFFINITY", "ab12", fail_on_unavailable=True)


def test_placement_of_node_labels_combines_hard_labels_with_the_label_selector() -> None:
    strategy = NodeLabelSchedulingStrategy({"zone": In("a", "b"), "gpu": Exists()},
                                           soft={"disk": NotIn("hdd"), "spot": DoesNotExist()})
    assert placement_of(strategy, {"region": "eu"}) == Placement(
        labels=(("gpu", "exists", ()), ("region", "in", ("eu",)), ("zone", "in", ("a", "b"))),
        soft_labels=(("disk", "not_in", ("hdd",)), ("spot", "not_exists", ())))


def test_placement_of_an_unknown_strategy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="PACK"):
        placement_of("PACK")


def test_a_placement_survives_the_wire() -> None:
    strategy = NodeLabelSchedulingStrategy({"zone": In("a", "b")}, soft={"disk": NotIn("hdd")})
    for placement in [DEFAULT_PLACEMENT, placement_of("SPREAD", {"zone": "!a"}), placement_of(strategy),
                      placement_of(NodeAffinitySchedulingStrategy("ab12", True, _spill_on_unavailable=True))]:
        assert Placement.from_wire(json.loads(json.dumps(placement.to_wire()))) == placement
    assert Placement.from_wire(None) is DEFAULT_PLACEMENT


# ResourceView


def test_feasible_is_the_nodes_whose_totals_fit_and_whose_labels_match() -> None:
    view = ResourceView([nv("1", {"CPU": 4}, {"CPU": 0}, {"zone": "a"}), nv("2", {"CPU": 2}, labels={"zone": "a"}),
                         nv("3", {"CPU": 8}, labels={"zone": "b"}), nv("4", {"CPU": 8})], "1")
    assert [n.node_id for n in view.feasible({"CPU": 3})] == ["1", "3", "4"]
    assert [n.node_id for n in view.feasible({"CPU": 3}, parse_label_selector({"zone": "a"}))] == ["1"]
    assert [n.node_id for n in view.feasible({"CPU": 1}, parse_label_selector({"zone": "!a"}))] == ["3", "4"]
    assert view.feasible({"CPU": 3, "accel": 1}) == []


def test_from_records_keeps_only_the_live_nodes_and_adds_ray_s_node_id_label() -> None:
    records = [{"node_id": "1", "address": "10.0.0.1:7000", "state": "alive", "resources": {"CPU": 4},
                "available": {"CPU": 1}, "labels": {"zone": "a"}},
               {"node_id": "2", "address": "10.0.0.2:7000", "state": "dead", "resources": {"CPU": 4},
                "available": {"CPU": 4}}]
    view = ResourceView.from_records(records, "1")
    assert list(view.nodes) == ["1"]
    assert view.local is not None and view.local.available == {"CPU": 1}
    assert view.local.labels == {"zone": "a", "ray.io/node-id": "1"}


def test_sample_yields_at_most_k_distinct_nodes() -> None:
    view = ResourceView([nv(str(i), {"CPU": 1}) for i in range(100)], "0", rng=random.Random(0))
    picked = list(view.sample(view.order, SAMPLE))
    assert len(picked) == SAMPLE and len({n.node_id for n in picked}) == SAMPLE
    assert list(view.sample(view.order[:5], SAMPLE)) == view.order[:5]


class _Watched(dict):
    """A node's ``available`` that notes which node was looked at."""

    def __init__(self, node_id: str, amounts: dict, seen: set[str]) -> None:
        super().__init__(amounts)
        self.node_id, self.seen = node_id, seen

    def get(self, *args: object) -> object:
        self.seen.add(self.node_id)
        return super().get(*args)  # type: ignore[call-overload]

    def __getitem__(self, key: object) -> object:
        self.seen.add(self.node_id)
        return super().__getitem__(key)


def test_a_default_decision_from_a_full_node_looks_at_no_more_than_sample_nodes() -> None:
    seen: set[str] = set()
    nodes = [nv(str(i), {"CPU": 4}) for i in range(1000)]
    for node in nodes:
        node.available = _Watched(node.node_id, {"CPU": 0 if node.node_id != "777" else 4}, seen)
    view = ResourceView(nodes, "0", rng=random.Random(0))
    decision = decide(view, {"CPU": 1})
    assert decision in (LOCAL, spill("777"))
    assert len(seen - {"0"}) <= SAMPLE


# ------------------------------------------------------------------------ placement groups


def place(view: ResourceView, bundles: list, strategy: str, **extra: object) -> list[str] | None:
    return SchedulingPolicy().place_group(GroupRequest(bundles, strategy, **extra), view).nodes  # type: ignore[arg-type]


def four_nodes(cpus: tuple = (4, 4, 4, 4)) -> ResourceView:
    return ResourceView([nv(str(i + 1), {"CPU": c}) for i, c in enumerate(cpus)], "")


def test_strict_pack_puts_every_bundle_on_one_node_or_waits() -> None:
    view = four_nodes((2, 6, 3, 1))
    assert place(view, [{"CPU": 2}] * 3, "STRICT_PACK") == ["2", "2", "2"]
    assert place(view, [{"CPU": 4}] * 2, "STRICT_PACK") is None


def test_pack_fills_few_nodes_and_spreads_only_when_it_must() -> None:
    view = four_nodes((4, 4, 4, 4))
    nodes = place(view, [{"CPU": 1}] * 4, "PACK")
    assert nodes is not None and len(set(nodes)) == 1
    nodes = place(view, [{"CPU": 3}] * 3, "PACK")
    assert nodes is not None and len(set(nodes)) == 3


def test_strict_spread_needs_a_node_per_bundle() -> None:
    view = four_nodes()
    nodes = place(view, [{"CPU": 1}] * 4, "STRICT_SPREAD")
    assert nodes is not None and len(set(nodes)) == 4
    decision = SchedulingPolicy().place_group(GroupRequest([{"CPU": 1}] * 5, "STRICT_SPREAD"), view)
    assert decision.nodes is None and "needs 5 distinct nodes" in decision.reason


def test_spread_uses_distinct_nodes_first_then_doubles_up() -> None:
    view = four_nodes((2, 2, 2, 2))
    nodes = place(view, [{"CPU": 1}] * 4, "SPREAD")
    assert nodes is not None and len(set(nodes)) == 4
    nodes = place(view, [{"CPU": 1}] * 6, "SPREAD")
    assert nodes is not None and len(set(nodes)) == 4


def test_a_group_waits_saying_whether_it_could_ever_fit() -> None:
    busy = ResourceView([nv("1", {"CPU": 4}, {"CPU": 0}), nv("2", {"CPU": 4}, {"CPU": 1})], "")
    waiting = SchedulingPolicy().place_group(GroupRequest([{"CPU": 2}, {"CPU": 2}], "PACK"), busy)
    assert waiting.nodes is None and "no room" in waiting.reason
    never = SchedulingPolicy().place_group(GroupRequest([{"CPU": 8}], "PACK"), busy)
    assert never.nodes is None and "could ever hold" in never.reason


def test_bundles_keep_to_their_label_selectors() -> None:
    view = ResourceView([nv("1", {"CPU": 4}, labels={"zone": "a"}), nv("2", {"CPU": 4}, labels={"zone": "b"})], "")
    b_only = parse_label_selector({"zone": "b"})
    assert place(view, [{"CPU": 1}, {"CPU": 1}], "SPREAD", labels=[b_only, ()]) == ["2", "1"]


def test_strict_spread_after_a_node_died_avoids_the_nodes_still_used() -> None:
    view = four_nodes()
    assert place(view, [{"CPU": 1}], "STRICT_SPREAD", used=["1", "2", "3"]) == ["4"]


def test_a_bundle_s_resources_and_a_task_s_shape_inside_it_use_ray_s_names() -> None:
    offered = group_resources("ab12", 1, {"CPU": 2})
    assert offered == {"CPU_group_1_ab12": 2, "CPU_group_ab12": 2, "bundle_group_1_ab12": 1000,
                       "bundle_group_ab12": 1000}
    assert shape_in_group((("CPU", 1.0),), "ab12", -1) == (("CPU_group_ab12", 1.0), ("bundle_group_ab12", 0.001))
    assert shape_in_group((("CPU", 1.0),), "ab12", 1) == (("CPU_group_1_ab12", 1.0), ("bundle_group_1_ab12", 0.001))
    assert group_of(dict(shape_in_group((), "ab12", 0))) == "ab12" and group_of({"CPU": 1}) == ""



def test_nodes_carry_ray_s_default_labels() -> None:
    labels = with_default_labels({"zone": "a"}, "n1", {"CPU": 4, "accelerator_type:A100": 1})
    assert labels == {"zone": "a", "ray.io/node-id": "n1", "ray.io/accelerator-type": "A100"}
    assert with_default_labels({"ray.io/node-id": "forged"}, "n1", {})["ray.io/node-id"] == "n1"
