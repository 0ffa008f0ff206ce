"""The real scheduling policy (cluster.node.policy.SchedulingPolicy) at scale, without processes:
100,000 lease requests over 1,000 simulated nodes, every decision held to what the policy
promises (bench/policy_sim.py: the simulation and its oracle, also the benchmark's
policy_decisions_per_s).

Correctness only: the decisions/s figure is printed (pytest -s), never asserted on.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster.node.policy import SchedulingPolicy
from cluster.resources import fits
from cluster.scheduling import LOCAL, Decision, ResourceView, SchedulingRequest


def _load_simulation() -> Any:
    """bench/policy_sim.py, loaded from its file (bench/ is not a package, nor on sys.path)."""
    path = Path(__file__).resolve().parent.parent / "bench" / "policy_sim.py"
    spec = importlib.util.spec_from_file_location("policy_sim", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["policy_sim"] = module  # (its attrs classes look themselves up there)
    spec.loader.exec_module(module)
    return module


_sim = _load_simulation()
KINDS, SimulationResult, simulate = _sim.KINDS, _sim.SimulationResult, _sim.simulate

EPS = 1e-6


@pytest.fixture(scope="module")
def run() -> SimulationResult:
    result = simulate(requests=100_000, nodes=1_000, seed=0)
    print(f"\npolicy: {result.decisions_per_s:,.0f} decisions/s ({result.note()})")
    return result


def test_no_decision_breaks_a_promise_of_the_policy(run: SimulationResult) -> None:
    assert run.requests == 100_000 and sum(run.actions.values()) == 100_000
    assert run.violation_count == 0, "\n".join(run.violations)


def test_the_simulation_went_through_every_kind_of_decision(run: SimulationResult) -> None:
    # Else the oracle held nothing to its promises: every action, for every kind of request.
    assert {"local", "spill", "infeasible", "unschedulable"} <= set(run.actions)
    assert all(sum(run.by_kind[kind].values()) > 0 for _, kind in KINDS)
    assert run.by_kind["affinity-hard"]["unschedulable"] > 0  # pinned to nodes too small
    assert run.by_kind["affinity-hard"]["spill"] > 0
    assert run.by_kind["zone-b"]["local"] > 0 and run.by_kind["zone-b"]["spill"] > 0
    # The cluster was saturated at times (so requests waited) and never emptied.
    assert run.cpu_use_max > 0.95 and run.cpu_use_min > 0.2
    assert run.queued > 1_000


def test_what_no_node_can_run_is_infeasible_and_only_that(run: SimulationResult) -> None:
    assert set(run.by_kind["zone-d"]) == {"infeasible"}  # no node is in zone d
    assert "unschedulable" not in run.by_kind["default"]
    assert "unschedulable" not in run.by_kind["affinity-soft"]  # soft: placed anywhere instead


def test_spread_goes_round_the_nodes(run: SimulationResult) -> None:
    # ~11,000 SPREAD decisions by 16 nodes' round robins over the 1,000 nodes.
    assert run.spread_targets > 500


def test_the_nodes_ledgers_add_up(run: SimulationResult) -> None:
    """What each node has free is its total less what runs on it: never below zero, never
    above its total (the simulation started only what fit)."""
    used: dict[str, dict[str, float]] = {}
    for node, shape in run.running:
        mine = used.setdefault(node.node_id, {})
        for name, amount in shape.items():
            mine[name] = mine.get(name, 0.0) + amount
    for node in run.node_views:
        for name, total in node.total.items():
            free = node.available.get(name, 0.0)
            assert -EPS <= free <= total + EPS, (node.node_id, name, free, total)
            assert abs(total - free - used.get(node.node_id, {}).get(name, 0.0)) < 1e-3


def test_the_simulation_is_deterministic() -> None:
    first, second = simulate(5_000, 300, seed=7), simulate(5_000, 300, seed=7)
    assert first.actions == second.actions and first.by_kind == second.by_kind
    assert first.violation_count == second.violation_count == 0


# ------------------------------------------------------- the oracle catches broken policies


class _IgnoresLabels(SchedulingPolicy):
    """Runs everything here that fits here, whatever its labels say."""

    def decide(self, request: SchedulingRequest, view: ResourceView) -> Decision:
        local = view.local
        if local is not None and fits(request.shape, local.available):
            return LOCAL
        return super().decide(request, view)


class _NeverPacks(SchedulingPolicy):
    """Sends DEFAULT work to the next node even when this one has room."""

    def decide(self, request: SchedulingRequest, view: ResourceView) -> Decision:
        decision = super().decide(request, view)
        if decision.action == "local" and request.placement.kind == "DEFAULT":
            for node in view.order:
                if node is not view.local and fits(request.shape, node.available):
                    return Decision("spill", node.address)
        return decision


class _LiesAboutFeasibility(SchedulingPolicy):
    """Says large requests can never run, although some nodes could run them."""

    def decide(self, request: SchedulingRequest, view: ResourceView) -> Decision:
        if request.shape.get("CPU", 0.0) >= 32:
            return Decision("infeasible", reason="too large")
        return super().decide(request, view)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (_IgnoresLabels, "not meeting"),
        (_NeverPacks, "receiving node could run it and had room"),
        (_LiesAboutFeasibility, "infeasible, but"),
    ],
)
def test_the_oracle_catches_a_policy_that_breaks_a_promise(policy: type, message: str) -> None:
    result = simulate(3_000, 300, seed=1, policy_factory=policy)
    assert result.violation_count > 0
    assert any(message in violation for violation in result.violations), result.violations
