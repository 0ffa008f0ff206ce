"""The built-in scheduling policy: where a node runs or sends the lease requests it receives.

Pure (DESIGN.md §7, docs/design/0017): a :class:`~cluster.scheduling.SchedulingRequest` and a
:class:`~cluster.scheduling.ResourceView` in, a :class:`~cluster.scheduling.Decision` out; no
I/O, and it looks at no more than ``SAMPLE`` nodes with room however large the cluster is.
Replaceable through the ``cluster_make_scheduler`` hook (the built-in plugin ``scheduler``
makes this one).

- **DEFAULT**: here while this node has room; else the node with the most free CPU among a
  sample of those that could run it; if none has room, wait here (or, when this node can
  never run it, go to one that can).
- **SPREAD**: round robin over the nodes that could run it and have room now.
- **Node affinity**: that node (waiting there while it is busy). Dead, unknown or too small:
  soft falls back to DEFAULT, hard is unschedulable.
- **Labels**: only nodes meeting the hard selector; among them, those meeting the soft one first.

Imports: cluster.scheduling, cluster.resources.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from cluster.resources import add_shapes, fits, format_shape
from cluster.scheduling import (
    DEFAULT,
    LOCAL,
    NODE_AFFINITY,
    SPREAD,
    Decision,
    GroupDecision,
    GroupRequest,
    NodeView,
    Placement,
    ResourceView,
    SchedulingRequest,
    describe_selector,
    matches,
)

SAMPLE = 16  # nodes looked at for room, at most, per decision
MAX_SPILLS = 2  # a request sent on this often settles where it is (no ping-pong on stale views)


@attrs.define
class SchedulingPolicy:
    """Pack on the local node while it has room; spread, pin or select by labels when asked."""

    _cursor: int = 0  # SPREAD's place in the round

    def decide(self, request: SchedulingRequest, view: ResourceView) -> Decision:
        shape, placement = request.shape, request.placement
        local = view.local
        if (placement.kind == DEFAULT and not placement.labels and not placement.soft_labels
                and local is not None and fits(shape, local.available)):
            return LOCAL  # the common case, first and cheap
        if placement.kind == NODE_AFFINITY:
            pinned = self._affinity(shape, placement, view)
            if pinned is not None:
                return pinned
        feasible = view.feasible(shape, placement.labels)
        if not feasible:
            return Decision("infeasible", reason=self._why_infeasible(shape, placement, view))
        if placement.soft_labels:
            preferred = [node for node in feasible if matches(placement.soft_labels, node.labels)]
            if local is not None and local in preferred and fits(shape, local.available):
                return LOCAL
            roomy = self._roomiest(preferred, shape, view) if request.spill_count < MAX_SPILLS else None
            if roomy is not None:
                return self._to(roomy, view)
        if placement.kind == SPREAD and request.spill_count == 0:
            chosen = self._next_with_room(feasible, shape)
            if chosen is not None:
                return self._to(chosen, view)
        return self._pack(feasible, shape, placement, request.spill_count, view)

    # ------------------------------------------------------------------------ strategies

    def _pack(self, feasible: list[NodeView], shape: Mapping[str, float], placement: Placement,
              spill_count: int, view: ResourceView) -> Decision:
        local = view.local
        here = local is not None and fits(shape, local.total) and matches(placement.labels, local.labels)
        if here and local is not None and fits(shape, local.available):
            return LOCAL
        if spill_count < MAX_SPILLS or not here:
            roomy = self._roomiest(feasible, shape, view)
            if roomy is not None:
                return self._to(roomy, view)
        if here:
            return LOCAL  # wait here for room
        # Nobody has room, and this node can never run it: wait at one that can.
        return self._to(feasible[view.rng.randrange(len(feasible))], view)

    def _affinity(self, shape: Mapping[str, float], placement: Placement, view: ResourceView) -> Decision | None:
        """The pinned node's decision, or None to place it as DEFAULT (soft, node unusable)."""
        target = view.nodes.get(placement.node_id)
        problem = ""
        if target is None:
            problem = f"node {placement.node_id} is not a live node of the cluster (dead, or never joined)"
        elif not fits(shape, target.total):
            problem = (f"node {placement.node_id} can never fit {format_shape(shape)} "
                       f"(it has {format_shape(target.total)})")
        elif not matches(placement.labels, target.labels):
            problem = f"node {placement.node_id} does not have labels {describe_selector(placement.labels)}"
        elif not fits(shape, target.available):
            if placement.soft and placement.spill_on_unavailable:
                return None
            if not placement.soft and placement.fail_on_unavailable:
                problem = f"node {placement.node_id} has no room for {format_shape(shape)} now"
        if not problem:
            return self._to(target, view) if target is not None else None
        if placement.soft:
            return None
        return Decision("unschedulable", reason=f"{problem}; NodeAffinitySchedulingStrategy(soft=False) "
                                                "runs it nowhere else (soft=True would)")

    def _next_with_room(self, feasible: list[NodeView], shape: Mapping[str, float]) -> NodeView | None:
        """SPREAD: the next node in the round that has room now (looking at SAMPLE at most)."""
        for step in range(min(len(feasible), SAMPLE)):
            node = feasible[(self._cursor + step) % len(feasible)]
            if fits(shape, node.available):
                self._cursor = (self._cursor + step + 1) % len(feasible)
                return node
        self._cursor = (self._cursor + 1) % len(feasible)
        return None

    @staticmethod
    def _roomiest(pool: list[NodeView], shape: Mapping[str, float], view: ResourceView) -> NodeView | None:
        """Of a sample of ``pool``, the node with room for ``shape`` and the most free CPU."""
        best, best_room = None, -1.0
        for node in view.sample(pool, SAMPLE):
            if fits(shape, node.available):
                room = node.available.get("CPU", 0.0)
                if room > best_room:
                    best, best_room = node, room
        return best

    @staticmethod
    def _to(node: NodeView, view: ResourceView) -> Decision:
        return LOCAL if node.node_id == view.local_id else Decision("spill", node.address)

    @staticmethod
    def _why_infeasible(shape: Mapping[str, float], placement: Placement, view: ResourceView) -> str:
        if placement.labels:
            matching = view.candidates(placement.labels)
            if not matching:
                return f"no live node has labels {describe_selector(placement.labels)}"
            largest = max((node.total for node in matching), key=lambda r: r.get("CPU", 0.0))
            return (f"no node with labels {describe_selector(placement.labels)} can ever fit "
                    f"{format_shape(shape)} (largest: {format_shape(largest)})")
        largest = max((node.total for node in view.order), key=lambda r: r.get("CPU", 0.0), default={})
        return f"no node of the cluster can ever fit {format_shape(shape)} (largest node: {format_shape(largest)})"

    # ------------------------------------------------------------------ placement groups

    def place_group(self, request: GroupRequest, view: ResourceView) -> GroupDecision:
        """A node for each bundle, by the group's strategy, from what nodes have free now; or
        why not (it waits: infeasible when even empty nodes could not hold it)."""
        bundles = request.bundles
        labels = request.labels or [()] * len(bundles)
        room = {node.node_id: dict(node.available) for node in view.order}
        nodes = view.order
        if request.strategy == "STRICT_PACK":
            chosen = self._one_node_for_all(bundles, labels, nodes, room, request.used)
            picks = None if chosen is None else [chosen] * len(bundles)
        elif request.strategy == "STRICT_SPREAD":
            picks = self._each_its_own_node(bundles, labels, nodes, room, set(request.used))
        elif request.strategy == "PACK":
            chosen = self._one_node_for_all(bundles, labels, nodes, room, request.used)
            picks = [chosen] * len(bundles) if chosen is not None else self._greedy(bundles, labels, nodes, room, False)
        else:  # SPREAD: distinct nodes while there are, then any with room
            picks = self._each_its_own_node(bundles, labels, nodes, dict(room), set(request.used))
            if picks is None:
                picks = self._greedy(bundles, labels, nodes, room, True)
        if picks is not None:
            return GroupDecision(picks)
        return GroupDecision(None, self._why_group_waits(request, view))

    @staticmethod
    def _one_node_for_all(bundles: list[dict[str, float]], labels: list, nodes: list[NodeView],
                          room: dict[str, dict[str, float]], used: list[str]) -> str | None:
        total = add_shapes(bundles)
        pool = [node for node in nodes if node.node_id in used] if used else nodes
        fitting = [node for node in pool if fits(total, room[node.node_id])
                   and all(matches(selector, node.labels) for selector in labels)]
        return max(fitting, key=lambda node: room[node.node_id].get("CPU", 0.0)).node_id if fitting else None

    @staticmethod
    def _each_its_own_node(bundles: list[dict[str, float]], labels: list, nodes: list[NodeView],
                           room: dict[str, dict[str, float]], taken: set[str]) -> list[str] | None:
        """A distinct node per bundle (largest bundles first), none of ``taken``."""
        picks: list[str] = [""] * len(bundles)
        order = sorted(range(len(bundles)), key=lambda i: -sum(bundles[i].values()))
        for i in order:
            fitting = [node for node in nodes if node.node_id not in taken and fits(bundles[i], room[node.node_id])
                       and matches(labels[i], node.labels)]
            if not fitting:
                return None
            node = max(fitting, key=lambda n: room[n.node_id].get("CPU", 0.0))
            taken.add(node.node_id)
            picks[i] = node.node_id
        return picks

    @staticmethod
    def _greedy(bundles: list[dict[str, float]], labels: list, nodes: list[NodeView],
                room: dict[str, dict[str, float]], spread: bool) -> list[str] | None:
        """Each bundle (largest first) to a node with room: PACK keeps filling the node it
        used last, SPREAD moves on to the emptiest."""
        picks: list[str] = [""] * len(bundles)
        last = ""
        for i in sorted(range(len(bundles)), key=lambda i: -sum(bundles[i].values())):
            fitting = [node for node in nodes if fits(bundles[i], room[node.node_id]) and matches(labels[i], node.labels)]
            if not fitting:
                return None
            same = [node for node in fitting if node.node_id == last]
            node = same[0] if same and not spread else max(fitting, key=lambda n: room[n.node_id].get("CPU", 0.0))
            for name, amount in bundles[i].items():
                room[node.node_id][name] = room[node.node_id].get(name, 0.0) - amount
            picks[i] = last = node.node_id
        return picks

    @staticmethod
    def _why_group_waits(request: GroupRequest, view: ResourceView) -> str:
        shapes = ", ".join(format_shape(b) for b in request.bundles)
        empty = {node.node_id: dict(node.total) for node in view.order}
        labels = request.labels or [()] * len(request.bundles)
        if request.strategy == "STRICT_SPREAD":
            usable = [n for n in view.order if n.node_id not in request.used]
            if len(usable) < len(request.bundles):
                return (f"STRICT_SPREAD needs {len(request.bundles)} distinct nodes for bundles [{shapes}] and "
                        f"the cluster has {len(usable)}: it waits for more nodes to join")
        could = SchedulingPolicy._greedy(request.bundles, labels, view.order, empty, True)
        if request.strategy == "STRICT_PACK":
            could = [""] if SchedulingPolicy._one_node_for_all(request.bundles, labels, view.order, empty, []) else None
        if could is None:
            return f"no node of the cluster could ever hold bundles [{shapes}] ({request.strategy}): it waits for one to join"
        return f"the nodes have no room for bundles [{shapes}] ({request.strategy}) now: it waits for resources to free up"
