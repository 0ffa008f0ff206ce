"""cluster's scheduling policy at scale: the real ``SchedulingPolicy`` deciding lease requests
over a thousand simulated nodes, every decision checked against what the policy promises.

    from policy_sim import simulate
    result = simulate(requests=100_000, nodes=1_000)
    result.decisions_per_s, result.violations

Used by ``peer_cluster.py`` (the metric ``policy_decisions_per_s``) and by
``tests/test_scheduler_simulation.py``. No processes, no I/O: ``NodeView`` records in a few
``ResourceView`` objects, one per node that receives requests (each real node has a view and a
policy of its own), all sharing the same node records, so what one node's decision takes is
what the next decision sees.

The simulation: each request arrives at one of the viewing nodes, ``decide()`` answers, and the
answer is applied to the node it names (``local``: the viewing node; ``spill``: the node at that
address). A task starts there if the node has room now, else it queues there and starts when
room frees up. The oldest running task ends whenever more run than a cap that swings between 30%
and 150% of the tasks the cluster holds, so the cluster is in turn a third full and saturated.

The oracle (``check_decision``) holds every decision to what the policy promises, not to how
it finds it: nothing lands on a node whose total can never fit it or that lacks its hard labels;
hard node affinity goes to its node or is unschedulable when that node can never run it; soft
affinity goes to its node when that node could run it (and has room, with
``_spill_on_unavailable``); infeasible only when no node of the cluster could ever run it; a
request that may run on the receiving node and finds room there stays there (DEFAULT packs
locally); a request waits on a node without room only where it is allowed to wait (its pinned
node, the receiving node when that one could run it, or any node that could when the receiving
one never can), and, where the policy looks at every candidate (no more than ``SAMPLE`` of
them), only when none of them had room.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cluster.node.policy import MAX_SPILLS, SAMPLE, SchedulingPolicy
from cluster.resources import fits
from cluster.scheduling import (
    NODE_AFFINITY,
    SPREAD,
    Decision,
    In,
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    NodeView,
    Placement,
    ResourceView,
    SchedulingRequest,
    matches,
    placement_of,
)

CPU_SIZES = (4.0, 8.0, 16.0, 32.0, 64.0)
ZONES = ("a", "b", "c")
ACCEL = "accel"  # the custom resource some nodes offer
RARE = "fpga"  # a custom resource of about 1% of the nodes: fewer candidates than SAMPLE
VIEWS = 16  # nodes that receive requests, each with its own view and policy
MAX_VIOLATIONS_KEPT = 20  # messages kept (all are counted)

# (weight, shape): what the requests ask for. The last two fit no node at all.
SHAPES: tuple[tuple[float, dict[str, float]], ...] = (
    (50.0, {"CPU": 1.0}),
    (10.0, {"CPU": 0.5}),
    (14.0, {"CPU": 2.0}),
    (8.0, {"CPU": 4.0}),
    (4.0, {"CPU": 8.0}),
    (3.0, {"CPU": 2.0, "memory": 8e9}),
    (6.0, {"CPU": 1.0, ACCEL: 1.0}),
    (1.0, {"CPU": 1.0, RARE: 1.0}),  # on the few fpga nodes, one at a time each
    (2.0, {"CPU": 48.0}),  # only the 64-CPU nodes
    (0.2, {"CPU": 128.0}),  # larger than any node: infeasible
    (0.1, {ACCEL: 16.0}),  # more accel than any node has: infeasible
)

# (weight, kind): how the requests are placed.
KINDS: tuple[tuple[float, str], ...] = (
    (63.0, "default"),
    (10.0, "spread"),
    (4.0, "affinity-soft"),
    (1.0, "affinity-soft-spill"),  # soft, _spill_on_unavailable=True
    (5.0, "affinity-hard"),
    (0.5, "affinity-hard-zone-b"),  # hard, with label_selector {"zone": "b"}
    (7.0, "zone-b"),  # label_selector {"zone": "b"}
    (2.0, "zone-in-a-c"),  # {"zone": "in(a,c)"}
    (2.0, "zone-not-a"),  # {"zone": "!a"} (nodes without a zone too)
    (1.0, "spread-zone-c"),  # SPREAD within {"zone": "c"}
    (2.0, "labels-soft-spot"),  # NodeLabelSchedulingStrategy(hard zone in a,b; soft tier spot)
    (0.2, "zone-d"),  # {"zone": "d"}: no such node, infeasible
)

_FIXED_PLACEMENTS: dict[str, Placement] = {
    "default": placement_of(None),
    "spread": placement_of("SPREAD"),
    "zone-b": placement_of(None, {"zone": "b"}),
    "zone-in-a-c": placement_of(None, {"zone": "in(a,c)"}),
    "zone-not-a": placement_of(None, {"zone": "!a"}),
    "spread-zone-c": placement_of("SPREAD", {"zone": "c"}),
    "labels-soft-spot": placement_of(
        NodeLabelSchedulingStrategy({"zone": In("a", "b")}, soft={"tier": In("spot")})
    ),
    "zone-d": placement_of(None, {"zone": "d"}),
}


def make_nodes(count: int, rng: random.Random) -> list[NodeView]:
    """``count`` node records of 4-64 CPUs; about 10% offer ``accel`` and 1% ``fpga``, 95%
    have a zone (a, b or c), 30% the label ``tier: spot``. Built from head-view records, as a node builds them."""
    nodes = []
    for i in range(count):
        cpus = rng.choice(CPU_SIZES)
        resources = {"CPU": cpus, "memory": cpus * 4e9}
        if rng.random() < 0.1:
            resources[ACCEL] = float(rng.choice((1, 2, 4, 8)))
        if rng.random() < 0.01:
            resources[RARE] = 1.0
        labels = {}
        if rng.random() < 0.95:
            labels["zone"] = rng.choice(ZONES)
        if rng.random() < 0.3:
            labels["tier"] = "spot"
        record = {
            "node_id": f"{rng.getrandbits(128):032x}",
            "address": f"10.{i // 256 // 256}.{i // 256 % 256}.{i % 256}:7000",
            "resources": resources,
            "available": dict(resources),
            "labels": labels,
        }
        nodes.append(NodeView.of(record))
    return nodes


def _placement(kind: str, nodes: Sequence[NodeView], rng: random.Random) -> Placement:
    fixed = _FIXED_PLACEMENTS.get(kind)
    if fixed is not None:
        return fixed
    node_id = nodes[rng.randrange(len(nodes))].node_id
    if kind == "affinity-soft":
        return placement_of(NodeAffinitySchedulingStrategy(node_id, soft=True))
    if kind == "affinity-soft-spill":
        return placement_of(
            NodeAffinitySchedulingStrategy(node_id, soft=True, _spill_on_unavailable=True)
        )
    if kind == "affinity-hard":
        return placement_of(NodeAffinitySchedulingStrategy(node_id, soft=False))
    if kind == "affinity-hard-zone-b":
        return placement_of(NodeAffinitySchedulingStrategy(node_id, soft=False), {"zone": "b"})
    raise ValueError(f"unknown kind {kind!r}")


def check_decision(
    view: ResourceView,
    request: SchedulingRequest,
    decision: Decision,
    node: NodeView | None,
    feasible: Sequence[NodeView],
) -> str:
    """What is wrong with ``decision`` (``""``: nothing), made by ``view``'s node for
    ``request``; ``node`` is the node it names (None if none), ``feasible`` every node of the
    cluster whose total fits the shape and that meets the hard labels (found by brute force).
    Called before the decision is applied: the nodes' ``available`` is what the policy saw."""
    shape, p = request.shape, request.placement
    local = view.local
    action = decision.action
    pinned = view.nodes.get(p.node_id) if p.kind == NODE_AFFINITY else None
    pin_usable = (
        pinned is not None and fits(shape, pinned.total) and matches(p.labels, pinned.labels)
    )
    if p.kind == NODE_AFFINITY and not p.soft:
        if action == "unschedulable":
            return "hard affinity unschedulable, but its node could run it" if pin_usable else ""
        if not pin_usable:
            return f"hard affinity to a node that can never run it answered {action!r}"
        if node is not pinned:
            return f"hard affinity placed on another node ({action} {decision.address})"
        return ""  # (waiting on the pinned node while it is busy is what it asks for)
    if action == "unschedulable":
        return "unschedulable, but the request is not hard node affinity"
    if action == "infeasible":
        return f"infeasible, but {len(feasible)} node(s) could run it" if feasible else ""
    if action not in ("local", "spill"):
        return f"unknown action {action!r}"
    if node is None:
        return f"spilled to {decision.address!r}, which is no node of the cluster"
    if action == "spill" and node is local:
        return "spilled to the node that decided (should be local)"
    if not fits(shape, node.total):
        return f"placed on a node of {node.total} that can never fit {dict(shape)}"
    if not matches(p.labels, node.labels):
        return f"placed on a node with labels {node.labels}, not meeting {p.labels}"
    if (
        p.kind == NODE_AFFINITY
        and pinned is not None
        and pin_usable
        and (not p.spill_on_unavailable or fits(shape, pinned.available))
    ):
        return "" if node is pinned else "soft affinity left a node that could run it"
    # From here on: placed like DEFAULT (labels, SPREAD, or soft affinity that fell back).
    here = local is not None and fits(shape, local.total) and matches(p.labels, local.labels)
    if p.soft_labels:
        keeps_local = local is not None and matches(p.soft_labels, local.labels)
    else:
        keeps_local = p.kind != SPREAD or request.spill_count > 0
    if (
        keeps_local
        and local is not None
        and here
        and fits(shape, local.available)
        and node is not local
    ):
        return "sent away although the receiving node could run it and had room"
    if fits(shape, node.available):
        return ""
    # It waits on a node without room.
    if action == "local" and not here:
        return "waits on the receiving node, which can never run it"
    if action == "spill" and here:
        return "sent to wait on a busy node, although the receiving node could run it"
    looked_everywhere = len(feasible) <= SAMPLE and (
        action == "spill" or request.spill_count < MAX_SPILLS
    )
    if looked_everywhere:
        roomy = [n for n in feasible if fits(shape, n.available)]
        if roomy:
            return (
                f"waits although {len(roomy)} of the {len(feasible)} node(s) that could run it "
                "had room (all of them are looked at)"
            )
    return ""


@dataclass
class SimulationResult:
    requests: int
    nodes: int
    views: int
    policy_s: float  # time spent inside decide()
    wall_s: float  # the whole simulation, bookkeeping and checks included
    actions: collections.Counter[str]
    by_kind: dict[str, collections.Counter[str]]
    started_at_once: int  # tasks that found room where the decision sent them
    queued: int  # tasks that waited there for room
    still_queued: int  # ... and were still waiting at the end
    spread_targets: int  # distinct nodes SPREAD requests went to
    cpu_use_min: float  # share of the cluster's CPUs in use, after the first cap was reached
    cpu_use_max: float
    violation_count: int
    violations: list[str]
    checked: bool
    node_views: list[NodeView] = field(repr=False, default_factory=list)
    running: list[tuple[NodeView, Mapping[str, float]]] = field(repr=False, default_factory=list)

    @property
    def decisions_per_s(self) -> float:
        return self.requests / self.policy_s if self.policy_s > 0 else float("inf")

    def note(self) -> str:
        share = ", ".join(
            f"{action} {count / self.requests:.1%}" for action, count in self.actions.most_common()
        )
        checked = (
            "every decision checked by the oracle, no violation"
            if self.checked and not self.violation_count
            else (f"{self.violation_count} violation(s)" if self.checked else "unchecked")
        )
        return (
            f"{self.requests:,} lease requests over {self.nodes:,} simulated nodes (4-64 CPUs, "
            f"custom resources on ~11%, zones a/b/c), arriving at {self.views} of them in "
            f"turn; mostly DEFAULT, with SPREAD, soft and hard node affinity and label selectors; "
            f"decide() took {self.policy_s:.2f} s of a {self.wall_s:.1f} s simulation; {share}; "
            f"CPU in use {self.cpu_use_min:.0%}-{self.cpu_use_max:.0%}; {self.queued:,} tasks "
            f"waited for room; {checked}"
        )


def simulate(
    requests: int = 100_000,
    nodes: int = 1_000,
    *,
    seed: int = 0,
    check: bool = True,
    policy_factory: Callable[[], Any] = SchedulingPolicy,
) -> SimulationResult:
    """Drive ``SchedulingPolicy.decide`` with ``requests`` lease requests over ``nodes``
    simulated nodes (see the module's docstring); ``check``: hold every decision to
    ``check_decision``. Deterministic for a given seed. ``policy_factory`` makes each viewing
    node's policy (another policy, to see the oracle catch it)."""
    started = time.perf_counter()
    rng = random.Random(seed)
    node_views = make_nodes(nodes, rng)
    by_address = {node.address: node for node in node_views}
    locals_ = rng.sample(node_views, min(VIEWS, nodes))
    views = [
        ResourceView(node_views, local.node_id, rng=random.Random(seed * 7919 + i))
        for i, local in enumerate(locals_)
    ]
    policies = [policy_factory() for _ in views]

    shape_weights = [w for w, _ in SHAPES]
    shapes = [s for _, s in SHAPES]
    kind_names = [k for _, k in KINDS]
    kind_weights = [w for w, _ in KINDS]
    shape_picks = rng.choices(range(len(shapes)), shape_weights, k=requests)
    kind_picks = rng.choices(range(len(kind_names)), kind_weights, k=requests)
    plan: list[tuple[int, SchedulingRequest, int, int]] = []  # (view, request, kind, shape)
    for i in range(requests):
        roll = rng.random()
        spill_count = 0 if roll < 0.95 else (1 if roll < 0.98 else MAX_SPILLS)
        kind = kind_picks[i]
        placement = _placement(kind_names[kind], node_views, rng)
        request = SchedulingRequest(shapes[shape_picks[i]], placement, spill_count)
        plan.append((rng.randrange(len(views)), request, kind, shape_picks[i]))

    # The cap on running tasks swings between 30% and 150% of the tasks the cluster holds.
    total_cpu = sum(node.total["CPU"] for node in node_views)
    usable = [(w, s) for w, s in SHAPES if any(fits(s, n.total) for n in node_views)]
    mean_cpu = sum(w * s.get("CPU", 0.0) for w, s in usable) / sum(w for w, _ in usable)
    capacity = total_cpu / mean_cpu
    period = 40_000

    feasible_of: dict[tuple[int, tuple[Any, ...]], list[NodeView]] = {}
    running: collections.deque[tuple[NodeView, Mapping[str, float]]] = collections.deque()
    queues: dict[str, collections.deque[Mapping[str, float]]] = {}
    actions: collections.Counter[str] = collections.Counter()
    by_kind: dict[str, collections.Counter[str]] = {k: collections.Counter() for k in kind_names}
    spread_targets: set[str] = set()
    violations: list[str] = []
    violation_count = 0
    started_at_once = queued = 0
    cpu_used = 0.0
    cpu_min, cpu_max = 1.0, 0.0
    capped = False
    policy_s = 0.0
    clock = time.perf_counter

    def start(node: NodeView, shape: Mapping[str, float]) -> None:
        nonlocal cpu_used
        available = node.available
        for name, amount in shape.items():
            available[name] = available.get(name, 0.0) - amount
        cpu_used += shape.get("CPU", 0.0)
        running.append((node, shape))

    for i, (v, request, kind, shape_index) in enumerate(plan):
        view = views[v]
        t0 = clock()
        decision = policies[v].decide(request, view)
        policy_s += clock() - t0

        action = decision.action
        if action == "local":
            node = view.local
        elif action == "spill":
            node = by_address.get(decision.address)
        else:
            node = None
        actions[action] += 1
        by_kind[kind_names[kind]][action] += 1
        shape = request.shape
        if check:
            key = (shape_index, request.placement.labels)
            feasible = feasible_of.get(key)
            if feasible is None:
                labels = request.placement.labels
                feasible = feasible_of[key] = [
                    n for n in node_views if fits(shape, n.total) and matches(labels, n.labels)
                ]
            problem = check_decision(view, request, decision, node, feasible)
            if problem:
                violation_count += 1
                if len(violations) < MAX_VIOLATIONS_KEPT:
                    violations.append(
                        f"request {i} ({kind_names[kind]}, {dict(shape)}, spill_count "
                        f"{request.spill_count}) at node {view.local_id[:8]}: {problem}"
                    )
        if node is not None:
            if request.placement.kind == SPREAD:
                spread_targets.add(node.node_id)
            if fits(shape, node.available):
                start(node, shape)
                started_at_once += 1
            else:
                queues.setdefault(node.node_id, collections.deque()).append(shape)
                queued += 1

        phase = (i % period) / period
        cap = capacity * (0.3 + 1.2 * (1.0 - abs(2.0 * phase - 1.0)))
        while len(running) > cap:
            capped = True
            done_node, done_shape = running.popleft()
            available = done_node.available
            for name, amount in done_shape.items():
                available[name] += amount
            cpu_used -= done_shape.get("CPU", 0.0)
            waiting = queues.get(done_node.node_id)
            while waiting and fits(waiting[0], available):
                start(done_node, waiting.popleft())
        if capped:
            share = cpu_used / total_cpu
            cpu_min, cpu_max = min(cpu_min, share), max(cpu_max, share)

    return SimulationResult(
        requests=requests,
        nodes=nodes,
        views=len(views),
        policy_s=policy_s,
        wall_s=time.perf_counter() - started,
        actions=actions,
        by_kind=by_kind,
        started_at_once=started_at_once,
        queued=queued,
        still_queued=sum(len(q) for q in queues.values()),
        spread_targets=len(spread_targets),
        cpu_use_min=cpu_min if capped else 0.0,
        cpu_use_max=cpu_max,
        violation_count=violation_count,
        violations=violations,
        checked=check,
        node_views=node_views,
        running=list(running),
    )
