"""The scaling policy: pure code, observations in and a plan out (no I/O, no clock).

``plan(config, observation, memory)`` returns a ``Plan``:
- the node types to launch, and the instances to terminate;
- a ``Decision`` for each thing it considered, with a reason that `cluster status --explain`
  shows;
- the ``Memory`` to pass to the next round.

Memory is how removal waits for several rounds of agreement and how failing launches back
off. Replaying a sequence of observations replays the autoscaler.

Scale up: the demand is the shapes of pending work, ``request_resources`` bundles and the
bundles of placement groups waiting to be placed (a STRICT_PACK group's as one shape, a
STRICT_SPREAD group's each on a node of its own). It is first packed into what is free on live
nodes and on nodes still launching; what is left is bin-packed onto new nodes of the smallest
type that fits. Limits: each type's
``max_workers``, the config's ``max_workers``, and ``upscaling_speed``. Each type is also
brought up to its ``min_workers``.

Scale down: a worker node is removed when all of these hold:
- it has been idle (nothing used) for ``idle_timeout_s``;
- it holds no primary copies of live objects;
- nothing in the demand would fit on it;
- its type stays at or above ``min_workers``;
- it was chosen ``REMOVE_AFTER_ROUNDS`` rounds in a row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

from cluster.resources import add_shapes, format_shape
from cluster.scheduling import describe_selector, matches
from cluster_autoscaler.config import ClusterConfig, NodeType

REMOVE_AFTER_ROUNDS = 3
BACKOFF_START_S = 5.0
BACKOFF_MAX_S = 300.0
MIN_LAUNCH_BATCH = 5  # upscaling_speed scales this up with the cluster's size, as in Ray
MAX_BUNDLES_PER_SHAPE = 10_000  # enough to size any real launch; keeps a huge backlog cheap


@attrs.frozen
class NodeObservation:
    """A node of the cluster, or an instance the provider is still starting."""

    instance_id: str
    node_type: str
    state: str  # "running" (joined the cluster) or "launching"
    resources: Mapping[str, float] = attrs.Factory(dict)
    available: Mapping[str, float] = attrs.Factory(dict)
    idle_s: float = 0.0  # how long it has used nothing
    primary_objects: int = 0  # primary copies of live objects it holds
    is_head: bool = False
    labels: Mapping[str, str] = attrs.Factory(dict)


@attrs.frozen
class Demand:
    shape: Mapping[str, float]
    count: int = 1
    labels: tuple = ()  # the label selector its work must run under (cluster.scheduling expressions)


@attrs.frozen
class GroupDemand:
    """A placement group waiting for nodes: its bundles (those not placed) and strategy."""

    bundles: tuple[Mapping[str, float], ...]
    strategy: str = "PACK"


@attrs.frozen
class LaunchError:
    node_type: str
    message: str


@attrs.frozen
class Observation:
    now: float
    nodes: tuple[NodeObservation, ...] = ()
    demand: tuple[Demand, ...] = ()
    requested: tuple[Demand, ...] = ()  # request_resources(): capacity to have, used or not
    groups: tuple[GroupDemand, ...] = ()  # placement groups waiting to be placed
    launch_errors: tuple[LaunchError, ...] = ()  # from the provider since the last round


@attrs.frozen
class Decision:
    kind: str  # "launch", "terminate", "keep", "pending", "backoff"
    subject: str  # a node type, an instance id, or a shape
    reason: str


@attrs.frozen
class Memory:
    removal_votes: Mapping[str, int] = attrs.Factory(dict)  # instance id -> rounds in a row
    failures: Mapping[str, int] = attrs.Factory(dict)  # node type -> launch failures in a row
    backoff_until: Mapping[str, float] = attrs.Factory(dict)  # node type -> time
    last_errors: Mapping[str, str] = attrs.Factory(dict)


@attrs.frozen
class Plan:
    launch: Mapping[str, int]  # node type -> how many
    terminate: tuple[str, ...]
    decisions: tuple[Decision, ...]
    memory: Memory


def _fits(shape: Mapping[str, float], room: Mapping[str, float]) -> bool:
    return all(room.get(k, 0.0) >= v - 1e-9 for k, v in shape.items() if v > 0)


def _take(shape: Mapping[str, float], room: dict[str, float]) -> None:
    for k, v in shape.items():
        room[k] = room.get(k, 0.0) - v


def _size(resources: Mapping[str, float]) -> tuple:
    """Order of node types from the cheapest: fewer GPUs and custom resources, then CPUs."""
    special = sum(v for k, v in resources.items() if k not in ("CPU", "memory", "object_store_memory"))
    return (special, resources.get("CPU", 0.0), resources.get("memory", 0.0), sorted(resources.items()))


def plan(config: ClusterConfig, obs: Observation, memory: Memory | None = None) -> Plan:
    memory = memory or Memory()
    decisions: list[Decision] = []
    failures = dict(memory.failures)
    backoff_until = dict(memory.backoff_until)
    last_errors = dict(memory.last_errors)
    for error in obs.launch_errors:
        n = failures[error.node_type] = failures.get(error.node_type, 0) + 1
        delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** (n - 1))
        backoff_until[error.node_type] = obs.now + delay
        last_errors[error.node_type] = error.message
    for node in obs.nodes:  # a node of the type came up: its launches work again
        if node.state == "running" and node.node_type in failures and not any(
                e.node_type == node.node_type for e in obs.launch_errors):
            failures.pop(node.node_type, None)
            backoff_until.pop(node.node_type, None)

    workers = [n for n in obs.nodes if not n.is_head]
    count = {t.name: 0 for t in config.node_types.values()}
    for node in workers:
        count[node.node_type] = count.get(node.node_type, 0) + 1
    total_workers = len(workers)
    budget = max(MIN_LAUNCH_BATCH, math.ceil(config.upscaling_speed * max(1, len(obs.nodes))))
    budget -= sum(1 for n in workers if n.state == "launching")
    launch: dict[str, int] = {}
    launch_reasons: dict[str, dict[str, int]] = {}  # node type -> reason -> nodes

    def can_launch(node_type: NodeType) -> str | None:
        """None if one more node of this type may be launched now, else why not."""
        if obs.now < backoff_until.get(node_type.name, 0.0):
            wait = backoff_until[node_type.name] - obs.now
            return (f"launches of {node_type.name} are failing ({last_errors.get(node_type.name, 'no detail')}); "
                    f"backing off for {wait:.0f}s more")
        if count.get(node_type.name, 0) >= node_type.max_workers:
            return f"max_workers reached for {node_type.name} ({node_type.max_workers})"
        if total_workers >= config.max_workers:
            return f"the cluster's max_workers is reached ({config.max_workers})"
        if budget <= 0:
            return f"upscaling_speed allows no more launches this round (upscaling_speed={config.upscaling_speed:g})"
        return None

    def add_launch(node_type: NodeType, reason: str) -> None:
        nonlocal total_workers, budget
        launch[node_type.name] = launch.get(node_type.name, 0) + 1
        reasons = launch_reasons.setdefault(node_type.name, {})
        reasons[reason] = reasons.get(reason, 0) + 1
        count[node_type.name] = count.get(node_type.name, 0) + 1
        total_workers += 1
        budget -= 1

    # 1. min_workers first.
    new_bins: list[tuple[NodeType, dict[str, float]]] = []
    for node_type in sorted(config.worker_types, key=lambda t: t.name):
        while count.get(node_type.name, 0) < node_type.min_workers:
            why_not = can_launch(node_type)
            if why_not is not None:
                decisions.append(Decision("backoff" if "failing" in why_not else "pending", node_type.name,
                                          f"below min_workers ({node_type.min_workers}), but {why_not}"))
                break
            add_launch(node_type, f"min_workers is {node_type.min_workers}")
            new_bins.append((node_type, dict(node_type.resources)))

    # 2. Pack the demand into what exists or is coming, then onto new nodes.
    bins = [(n, dict(n.available if n.state == "running" else n.resources)) for n in obs.nodes]
    used_ids: set[str] = set()
    bundles: list[tuple[Mapping[str, float], tuple]] = []
    for item in (*obs.demand, *obs.requested):
        bundles += [(item.shape, item.labels)] * min(item.count, MAX_BUNDLES_PER_SHAPE)
    spread_groups = []
    for group in obs.groups:  # a group's bundles are demand too; STRICT_ ones keep their rule
        if group.strategy == "STRICT_SPREAD":
            spread_groups.append(group)
        elif group.strategy == "STRICT_PACK":
            bundles.append((add_shapes(group.bundles), ()))
        else:
            bundles += [(bundle, ()) for bundle in group.bundles]
    bundles.sort(key=lambda s: _size(s[0]), reverse=True)  # first fit, largest first
    unplaced: dict[tuple, list] = {}

    def place(shape: Mapping[str, float], why: str, avoid: set[int], labels: tuple = ()) -> dict[str, float] | None:
        """Room for ``shape`` (not one of ``avoid``; on a node whose labels meet ``labels``):
        on a node, coming or new (launched)."""
        for node, room in bins:
            if id(room) not in avoid and _fits(shape, room) and matches(labels, node.labels):
                used_ids.add(node.instance_id)  # demand will run there: not a node to remove
                _take(shape, room)
                return room
        for new_type, room in new_bins:
            if id(room) not in avoid and _fits(shape, room) and matches(labels, new_type.labels):
                _take(shape, room)
                return room
        fitting = sorted((t for t in config.worker_types if _fits(shape, t.resources) and matches(labels, t.labels)),
                         key=lambda t: _size(t.resources))
        if not fitting:
            wanted = f" with labels {describe_selector(labels)}" if labels else ""
            unplaced.setdefault(tuple(sorted(shape.items())), []).append(
                f"no node type{wanted} can fit {format_shape(shape)} (node types: "
                + "; ".join(f"{t.name} {format_shape(t.resources)}" for t in config.worker_types) + ")")
            return None
        reasons = []
        for node_type in fitting:
            why_not = can_launch(node_type)
            if why_not is None:
                add_launch(node_type, why)
                room = dict(node_type.resources)
                _take(shape, room)
                new_bins.append((node_type, room))
                return room
            reasons.append(why_not)
        unplaced.setdefault(tuple(sorted(shape.items())), []).append("; ".join(reasons))
        return None

    for group in spread_groups:  # each bundle on a node of its own
        taken: set[int] = set()
        for shape in sorted(group.bundles, key=lambda s: _size(s), reverse=True):
            room = place(shape, f"a STRICT_SPREAD placement group's bundle {format_shape(shape)}", taken)
            if room is not None:
                taken.add(id(room))
    for shape, labels in bundles:
        place(shape, f"pending demand {format_shape(shape)}", set(), labels)
    for name, reasons in sorted(launch_reasons.items()):
        why = "; ".join(f"{n} for {reason}" for reason, n in reasons.items())
        decisions.append(Decision("launch", name, f"{launch[name]} node(s): {why}"))
    for key, reasons in unplaced.items():
        shape = dict(key)
        decisions.append(Decision("pending", format_shape(shape), f"{len(reasons)} x {format_shape(shape)} wait: {reasons[0]}"))

    # 3. Scale down idle nodes, after several rounds of agreement.
    votes: dict[str, int] = {}
    terminate: list[str] = []
    remaining = dict(count)
    for node in sorted(workers, key=lambda n: n.instance_id):
        if node.state != "running":
            continue
        node_type = config.node_types.get(node.node_type)
        busy = any(node.available.get(k, 0.0) < v - 1e-9 for k, v in node.resources.items())
        if busy or node.idle_s < config.idle_timeout_s:
            continue
        if node.instance_id in used_ids:
            decisions.append(Decision("keep", node.instance_id, "idle, but pending demand fits on it"))
            continue
        if node.primary_objects:
            decisions.append(Decision("keep", node.instance_id,
                                      f"idle, but it holds the primary copy of {node.primary_objects} live object(s)"))
            continue
        low = node_type.min_workers if node_type is not None else 0
        if remaining.get(node.node_type, 0) <= low:
            decisions.append(Decision("keep", node.instance_id, f"idle, but {node.node_type} is at min_workers ({low})"))
            continue
        n = votes[node.instance_id] = memory.removal_votes.get(node.instance_id, 0) + 1
        if n >= REMOVE_AFTER_ROUNDS:
            terminate.append(node.instance_id)
            remaining[node.node_type] -= 1
            decisions.append(Decision("terminate", node.instance_id,
                                      f"idle for {node.idle_s:.0f}s (idle_timeout_s={config.idle_timeout_s:g}), "
                                      f"chosen {n} rounds in a row"))
        else:
            decisions.append(Decision("keep", node.instance_id,
                                      f"idle for {node.idle_s:.0f}s; removal chosen {n} of {REMOVE_AFTER_ROUNDS} rounds"))
    new_memory = Memory({k: v for k, v in votes.items() if k not in terminate}, failures, backoff_until, last_errors)
    return Plan(launch, tuple(terminate), tuple(decisions), new_memory)
