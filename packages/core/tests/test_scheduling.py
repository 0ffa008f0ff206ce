"""Resource arithmetic and the default spill policy: pure functions, no processes."""

from __future__ import annotations

import json

import pytest

from cluster.errors import ConfigError
from cluster.node.policy import SchedulingPolicy
from cluster.resources import (
    fits,
    format_shape,
    parse_size,
    resources_arg,
    total_demand,
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
    assert total_demand(reports) == [{"shape": {"CPU": 1, "a": 1}, "count": 5, "infeasible": False}]


def test_total_demand_keeps_infeasible_apart_from_feasible_and_skips_missing_reports() -> None:
    reports = [
        [{"shape": {"CPU": 1}, "count": 1, "infeasible": False},
         {"shape": {"CPU": 64}, "count": 4, "infeasible": True}],
        None,  # a node that has not reported yet
        [],
        [{"shape": {"CPU": 1}, "count": 1, "infeasible": True}],
    ]
    assert total_demand(reports) == [
        {"shape": {"CPU": 64}, "count": 4, "infeasible": True},
        {"shape": {"CPU": 1}, "count": 1, "infeasible": False},
        {"shape": {"CPU": 1}, "count": 1, "infeasible": True},
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


def node(node_id: str, available: dict, *, resources: dict | None = None, state: str = "alive") -> dict:
    return {"node_id": node_id, "address": f"10.0.0.{node_id}:7000", "state": state,
            "available": available, "resources": resources or available}


def test_spill_goes_to_the_fitting_node_with_the_most_free_cpu() -> None:
    nodes = [node("1", {"CPU": 1}), node("2", {"CPU": 6}), node("3", {"CPU": 3})]
    assert SchedulingPolicy().spill_target({"CPU": 1}, nodes, self_id="9") == "10.0.0.2:7000"


def test_spill_never_picks_the_asking_node_itself() -> None:
    nodes = [node("1", {"CPU": 8}), node("2", {"CPU": 1})]
    assert SchedulingPolicy().spill_target({"CPU": 1}, nodes, self_id="1") == "10.0.0.2:7000"


def test_spill_skips_dead_nodes_and_nodes_the_shape_does_not_fit() -> None:
    nodes = [
        node("1", {"CPU": 16, "a": 1}, state="dead"),
        node("2", {"CPU": 16}),  # lots of CPU, but no "a"
        node("3", {"CPU": 0.5, "a": 1}),  # too little CPU
        node("4", {"CPU": 1, "a": 1}),
    ]
    assert SchedulingPolicy().spill_target({"CPU": 1, "a": 1}, nodes, self_id="0") == "10.0.0.4:7000"


def test_spill_looks_at_what_is_available_now_not_at_the_node_size() -> None:
    nodes = [node("1", {"CPU": 4, "a": 0}, resources={"CPU": 4, "a": 1}),  # its "a" is leased out
             node("2", {"CPU": 1, "a": 1})]
    assert SchedulingPolicy().spill_target({"a": 1}, nodes, self_id="0") == "10.0.0.2:7000"


def test_spill_has_no_target_when_nothing_fits() -> None:
    nodes = [node("1", {"CPU": 8}), node("2", {"CPU": 0.5, "a": 1})]
    assert SchedulingPolicy().spill_target({"CPU": 1, "a": 1}, nodes, self_id="0") is None
    assert SchedulingPolicy().spill_target({"CPU": 1}, [], self_id="0") is None


def test_spill_between_equally_free_nodes_keeps_the_first() -> None:
    nodes = [node("1", {"CPU": 2}), node("2", {"CPU": 2})]
    assert SchedulingPolicy().spill_target({"CPU": 1}, nodes, self_id="0") == "10.0.0.1:7000"


def test_a_shape_is_feasible_if_some_live_node_could_ever_hold_it() -> None:
    policy = SchedulingPolicy()
    busy = node("1", {"CPU": 0}, resources={"CPU": 4, "a": 1})
    assert policy.feasible_somewhere({"CPU": 4, "a": 1}, [busy])  # busy now, but big enough
    assert not policy.feasible_somewhere({"CPU": 5}, [busy])
    gone = node("2", {"CPU": 64}, state="dead")
    assert not policy.feasible_somewhere({"CPU": 64}, [busy, gone])
