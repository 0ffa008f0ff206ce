"""Where work may run: scheduling strategies, label selectors, and what a policy sees and says.

The user's side: Ray's strategy classes (re-exported as ``cluster.util.scheduling_strategies``)
and the ``label_selector`` syntax, both turned into one :class:`Placement`, a small hashable
value an owner keys its queues by and sends with its lease requests.

The policy's side (``cluster_make_scheduler``, docs/design/0017): a :class:`SchedulingRequest`
and a :class:`ResourceView` in, a :class:`Decision` out. The view is built once per version of
the head's resource view, with the indexes a decision needs to stay flat as the cluster grows.

A leaf module: imports errors and resources only.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

from cluster.errors import ConfigError
from cluster.resources import fits

# (in the head's KV) the node types an autoscaler may launch: {name: {"resources", "labels"}}
AUTOSCALER_NODE_TYPES_KEY = "autoscaler/node_types"
NODE_ID_LABEL = "ray.io/node-id"  # Ray's default labels, so label selectors port unchanged
ACCELERATOR_LABEL = "ray.io/accelerator-type"

# ----------------------------------------------------------------------- label selectors

# One requirement on one label: (key, operator, values); operators "in", "not_in", "exists",
# "not_exists". Ray's {"zone": "a"} is ("zone", "in", ("a",)); {"zone": "!a"} is not_in.
Expression = tuple[str, str, tuple[str, ...]]


def _values(text: str, key: str) -> tuple[str, ...]:
    inner = text[text.index("(") + 1:-1] if text.endswith(")") else ""
    values = tuple(v.strip() for v in inner.split(",") if v.strip())
    if not values or any("(" in v or ")" in v or v.startswith("!") for v in values):
        raise ConfigError(f"label_selector[{key!r}]={text!r}: in(...) takes one or more plain values, like in(a,b)")
    return values


def parse_label_selector(selector: Any, what: str = "label_selector") -> tuple[Expression, ...]:
    """Ray's ``label_selector`` dict (``{"zone": "a"}``, ``"!a"``, ``"in(a,b)"``,
    ``"!in(a,b)"``) as expressions, sorted; ConfigError naming what is wrong."""
    if selector is None:
        return ()
    if not isinstance(selector, Mapping):
        raise ConfigError(f'{what} must be a dict of label names to values, like {{"zone": "a"}}, '
                          f"got {type(selector).__name__}")
    out = []
    for key, value in selector.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{what} keys must be non-empty label names, got {key!r}")
        if not isinstance(value, str):
            raise ConfigError(f'{what}[{key!r}] must be a string ("a", "!a", "in(a,b)" or "!in(a,b)"), '
                              f"got {value!r}")
        text = value.strip()
        negated = text.startswith("!")
        if negated:
            text = text[1:].strip()
        if text.startswith("in(") and text.endswith(")"):
            out.append((key, "not_in" if negated else "in", _values(text, key)))
        elif not text or text.startswith("!") or "(" in text or ")" in text or "," in text:
            raise ConfigError(f'{what}[{key!r}]={value!r} is not a label value: use "a", "!a", '
                              '"in(a,b)" or "!in(a,b)"')
        else:
            out.append((key, "not_in" if negated else "in", (text,)))
    return tuple(sorted(out))


def matches(expressions: Iterable[Expression], labels: Mapping[str, str]) -> bool:
    """Whether a node with ``labels`` meets every expression (a missing label is "not in"
    anything, as in Kubernetes)."""
    for key, op, values in expressions:
        value = labels.get(key)
        if op == "in" and value not in values:
            return False
        if op == "not_in" and value in values:
            return False
        if op == "exists" and value is None:
            return False
        if op == "not_exists" and value is not None:
            return False
    return True


def labels_to_wire(expressions: Iterable[Expression]) -> list[list[Any]]:
    """Label expressions as messages carry them (lists, for msgpack)."""
    return [[key, op, list(values)] for key, op, values in expressions]


def labels_from_wire(data: Iterable[Any] | None) -> tuple[Expression, ...]:
    """Label expressions back from :func:`labels_to_wire`'s form."""
    return tuple((key, op, tuple(values)) for key, op, values in data or ())


def describe_selector(expressions: Iterable[Expression]) -> str:
    """``{zone: in(a,b), gpu: !x}``: a selector for messages, in Ray's syntax."""
    parts = []
    for key, op, values in expressions:
        if op in ("exists", "not_exists"):
            text = "exists" if op == "exists" else "does not exist"
        else:
            text = values[0] if len(values) == 1 else "in(" + ",".join(values) + ")"
            text = "!" + text if op == "not_in" else text
        parts.append(f"{key}: {text}")
    return "{" + ", ".join(parts) + "}"


# ----------------------------------------------------------------- the strategies (Ray's)


class _LabelOperator:
    op = ""

    def __init__(self, *values: str) -> None:
        if self.op in ("in", "not_in") and not values:
            raise ConfigError(f"{type(self).__name__}() needs at least one value")
        if not all(isinstance(value, str) for value in values):
            raise ConfigError(f"{type(self).__name__} values must be strings, got {values!r}")
        self.values = tuple(values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(map(repr, self.values))})"


class In(_LabelOperator):
    """The label's value is one of these."""

    op = "in"


class NotIn(_LabelOperator):
    """The label's value is none of these (or the node lacks the label)."""

    op = "not_in"


class Exists(_LabelOperator):
    """The node has the label, whatever its value."""

    op = "exists"


class DoesNotExist(_LabelOperator):
    """The node lacks the label."""

    op = "not_exists"


def _label_expressions(mapping: Any, what: str) -> tuple[Expression, ...]:
    if mapping is None:
        return ()
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{what} must be a dict of label names to In/NotIn/Exists/DoesNotExist, "
                          f"got {type(mapping).__name__}")
    out = []
    for key, operator in mapping.items():
        if not isinstance(operator, _LabelOperator):
            raise ConfigError(f"{what}[{key!r}] must be In(...), NotIn(...), Exists() or DoesNotExist(), "
                              f"got {operator!r}")
        out.append((key, operator.op, operator.values))
    return tuple(sorted(out))


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (a hex id, as ``get_runtime_context().get_node_id()``).

    ``soft=False``: only there; if that node is dead, unknown or can never fit the work, the
    task or actor fails with TaskUnschedulableError / ActorUnschedulableError. ``soft=True``:
    there if it is alive and could fit, else anywhere. Either way, a busy node is waited for
    (``_spill_on_unavailable``: a soft one is not; ``_fail_on_unavailable``: a hard one fails)."""

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False) -> None:
        if hasattr(node_id, "hex") and not isinstance(node_id, str | bytes):
            node_id = node_id.hex()  # (a NodeID-like object)
        if not isinstance(node_id, str) or not node_id:
            raise ConfigError(f"NodeAffinitySchedulingStrategy needs a node id (a hex string, from "
                              f"cluster.get_runtime_context().get_node_id() or cluster.nodes()), got {node_id!r}")
        self.node_id = node_id
        self.soft = bool(soft)
        self._spill_on_unavailable = bool(_spill_on_unavailable)
        self._fail_on_unavailable = bool(_fail_on_unavailable)

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


class NodeLabelSchedulingStrategy:
    """Run on a node whose labels meet ``hard`` (``{"zone": In("a", "b")}``); among those,
    prefer nodes that also meet ``soft``."""

    def __init__(self, hard: Mapping[str, _LabelOperator], *, soft: Mapping[str, _LabelOperator] | None = None) -> None:
        self.hard = dict(hard or {})
        self.soft = dict(soft or {})
        self._expressions = (_label_expressions(self.hard, "NodeLabelSchedulingStrategy hard"),
                             _label_expressions(self.soft, "NodeLabelSchedulingStrategy soft"))
        if not self._expressions[0] and not self._expressions[1]:
            raise ConfigError("NodeLabelSchedulingStrategy needs hard or soft label expressions")

    def __repr__(self) -> str:
        return f"NodeLabelSchedulingStrategy(hard={self.hard!r}, soft={self.soft!r})"


class PlacementGroupSchedulingStrategy:
    """Run in a bundle of ``placement_group`` (``placement_group_bundle_index=-1``: any)."""

    def __init__(self, placement_group: Any, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None) -> None:
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks


# ------------------------------------------------------------ placement groups' resources
#
# As in Ray: bundle i of group G offers its resources R on its node as ``R_group_i_G`` (that
# bundle) and ``R_group_G`` (any bundle of the group), and ``bundle_group_i_G`` /
# ``bundle_group_G`` (1000 each); a task in the group asks for those names instead of its own,
# so leases, spillback and the policy need nothing new to place it.

BUNDLE_UNITS = 1000.0
IN_BUNDLE = 0.001  # what a task takes of its bundle's ``bundle_group_`` resource


def group_resources(pg_id: str, index: int, shape: Mapping[str, float]) -> dict[str, float]:
    """What bundle ``index`` of group ``pg_id`` offers on its node, by Ray's names."""
    out = {}
    for name, amount in shape.items():
        if amount:
            out[f"{name}_group_{index}_{pg_id}"] = amount
            out[f"{name}_group_{pg_id}"] = amount
    out[f"bundle_group_{index}_{pg_id}"] = BUNDLE_UNITS
    out[f"bundle_group_{pg_id}"] = BUNDLE_UNITS
    return out


def shape_in_group(shape: tuple[tuple[str, float], ...], pg_id: str, index: int) -> tuple[tuple[str, float], ...]:
    """A task's shape inside bundle ``index`` (-1: any) of group ``pg_id``."""
    suffix = f"_group_{pg_id}" if index < 0 else f"_group_{index}_{pg_id}"
    amounts = {name + suffix: amount for name, amount in shape}
    amounts["bundle" + suffix] = IN_BUNDLE
    return tuple(sorted(amounts.items()))


def group_of(shape: Iterable[str]) -> str:
    """The placement group a shape's resources belong to ("": none)."""
    for name in shape:
        if name.startswith("bundle_group_"):
            return name.rpartition("_")[2]
    return ""


# --------------------------------------------------------------------------- placement

DEFAULT = "DEFAULT"
SPREAD = "SPREAD"
NODE_AFFINITY = "NODE_AFFINITY"
PLACEMENT_MARK = "placement:"  # a shape's pseudo-resource naming its placement (owners key queues by it)


@attrs.frozen
class Placement:
    """Where a task or actor may run, and how to choose among those places: what an owner
    sends with each lease request (``to_wire``), and part of its queue key (``key``)."""

    kind: str = DEFAULT  # DEFAULT | SPREAD | NODE_AFFINITY
    node_id: str = ""  # NODE_AFFINITY's node
    soft: bool = False  # NODE_AFFINITY: fall back to any node when that one is dead or cannot fit
    spill_on_unavailable: bool = False
    fail_on_unavailable: bool = False
    labels: tuple[Expression, ...] = ()  # hard: only nodes that meet these
    soft_labels: tuple[Expression, ...] = ()  # preferred among those

    @property
    def key(self) -> str:
        return repr(attrs.astuple(self))

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "node_id": self.node_id, "soft": self.soft,
                "spill_on_unavailable": self.spill_on_unavailable, "fail_on_unavailable": self.fail_on_unavailable,
                "labels": labels_to_wire(self.labels), "soft_labels": labels_to_wire(self.soft_labels)}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any] | None) -> Placement:
        if not data:
            return DEFAULT_PLACEMENT
        return cls(data.get("kind", DEFAULT), data.get("node_id", ""), bool(data.get("soft")),
                   bool(data.get("spill_on_unavailable")), bool(data.get("fail_on_unavailable")),
                   labels_from_wire(data.get("labels")), labels_from_wire(data.get("soft_labels")))


DEFAULT_PLACEMENT = Placement()


def placement_of(strategy: Any, label_selector: Any = None) -> Placement:
    """The placement of ``scheduling_strategy=`` and ``label_selector=`` (Ray's options);
    ConfigError for what is neither."""
    labels = parse_label_selector(label_selector)
    if strategy is None or strategy == DEFAULT:
        return Placement(labels=labels) if labels else DEFAULT_PLACEMENT
    if strategy == SPREAD:
        return Placement(SPREAD, labels=labels)
    if isinstance(strategy, NodeAffinitySchedulingStrategy):
        return Placement(NODE_AFFINITY, strategy.node_id, strategy.soft, strategy._spill_on_unavailable,
                         strategy._fail_on_unavailable, labels)
    if isinstance(strategy, NodeLabelSchedulingStrategy):
        hard, soft = strategy._expressions
        return Placement(labels=tuple(sorted(set(labels + hard))), soft_labels=soft)
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        if not hasattr(getattr(strategy.placement_group, "id", None), "hex"):
            raise ConfigError("PlacementGroupSchedulingStrategy needs a PlacementGroup (from "
                              f"cluster.util.placement_group), got {strategy.placement_group!r}")
        return Placement(labels=labels) if labels else DEFAULT_PLACEMENT  # (its bundles' resource names place it)
    raise ConfigError(
        f"scheduling_strategy={strategy!r} is not one of \"DEFAULT\", \"SPREAD\", "
        "NodeAffinitySchedulingStrategy(node_id, soft) or NodeLabelSchedulingStrategy(hard, soft=) "
        "(from cluster.util.scheduling_strategies)")


def shape_with_placement(shape: tuple[tuple[str, float], ...], placement: Placement) -> tuple[tuple[str, float], ...]:
    """The owner's queue key of tasks of ``shape`` placed by ``placement``: the shape and a
    pseudo-resource naming the placement (stripped before a node sees the shape)."""
    if placement == DEFAULT_PLACEMENT:
        return shape
    return (*shape, (PLACEMENT_MARK + placement.key, 0.0))


# ------------------------------------------------------------------- what a policy sees


@attrs.define(eq=False, slots=True)
class NodeView:
    """One live node as the policy sees it."""

    node_id: str
    address: str
    total: dict[str, float]
    available: dict[str, float]
    labels: dict[str, str]  # its own, and Ray's default ones (``ray.io/node-id``)

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> NodeView:
        """From a node of the head's view (``node_id``, ``address``, ``resources``, ``available``, ``labels``)."""
        return cls(record["node_id"], record["address"], dict(record["resources"]), dict(record["available"]),
                   with_default_labels(record.get("labels") or {}, record["node_id"], record["resources"]))


def with_default_labels(labels: Mapping[str, str], node_id: str, resources: Mapping[str, float]) -> dict[str, str]:
    """A node's labels with Ray's defaults: ``ray.io/node-id``, and ``ray.io/accelerator-type``
    for a node offering ``accelerator_type:X`` (unless its own labels say otherwise)."""
    defaults = {NODE_ID_LABEL: node_id}
    for name in resources:
        if name.startswith("accelerator_type:"):
            defaults[ACCELERATOR_LABEL] = name.partition(":")[2]
    return {**defaults, **labels, NODE_ID_LABEL: node_id}


@attrs.frozen
class SchedulingRequest:
    """A lease request, as the node that received it asks its policy about it."""

    shape: Mapping[str, float]
    placement: Placement = DEFAULT_PLACEMENT
    spill_count: int = 0  # how many nodes sent it on already (a spilled request settles sooner)


@attrs.frozen
class Decision:
    """``local``: run it here (now, or once this node has room); ``spill``: ask the node at
    ``address``; ``infeasible``: no live node can ever fit it (it waits for one to join, and
    counts as demand); ``unschedulable``: it can never run as asked (the work fails)."""

    action: str
    address: str = ""
    reason: str = ""


LOCAL = Decision("local")


class ResourceView:
    """The cluster's live nodes, with what they have and have free (as of the head's last view,
    and this node's own ledger): what a policy decides from. Indexed once per view, so a
    decision looks at a bounded number of nodes however many there are."""

    def __init__(self, nodes: Iterable[NodeView], local_id: str, rng: random.Random | None = None) -> None:
        self.nodes: dict[str, NodeView] = {node.node_id: node for node in nodes}
        self.local_id = local_id
        self.order: list[NodeView] = sorted(self.nodes.values(), key=lambda node: node.node_id)
        self.rng = rng or random.Random()
        self._by_label: dict[tuple[str, str], list[NodeView]] = {}
        self._feasible: dict[tuple, list[NodeView]] = {}  # (shape, labels) -> nodes that could run it
        for node in self.order:
            for item in node.labels.items():
                self._by_label.setdefault(item, []).append(node)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], local_id: str) -> ResourceView:
        """From the head's view (node dicts with ``node_id``, ``address``, ``state``,
        ``resources``, ``available``, ``labels``): its live nodes."""
        return cls((NodeView.of(r) for r in records if r["state"] == "alive"), local_id)

    @property
    def local(self) -> NodeView | None:
        return self.nodes.get(self.local_id)

    def candidates(self, labels: tuple[Expression, ...]) -> list[NodeView]:
        """The nodes meeting ``labels``: through the index when an "in" expression narrows them."""
        narrowest: list[NodeView] | None = None
        for key, op, values in labels:
            if op == "in":
                found = [node for value in values for node in self._by_label.get((key, value), ())]
                if narrowest is None or len(found) < len(narrowest):
                    narrowest = found
        pool = self.order if narrowest is None else narrowest
        return pool if not labels else [node for node in pool if matches(labels, node.labels)]

    def feasible(self, shape: Mapping[str, float], labels: tuple[Expression, ...] = ()) -> list[NodeView]:
        """The nodes meeting ``labels`` whose total resources fit ``shape`` (kept for the view's life)."""
        key = (tuple(sorted(shape.items())), labels)
        found = self._feasible.get(key)
        if found is None:
            pool = self.candidates(labels) if labels else self.order
            found = self._feasible[key] = [node for node in pool if fits(shape, node.total)]
        return found

    def sample(self, pool: list[NodeView], k: int) -> Iterator[NodeView]:
        """Up to ``k`` nodes of ``pool``, at random (all of them when there are few)."""
        if len(pool) <= k:
            yield from pool
            return
        for index in self.rng.sample(range(len(pool)), k):
            yield pool[index]


# ------------------------------------------------------------------ placement group requests

GROUP_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


@attrs.frozen
class GroupRequest:
    """Bundles of a placement group to place (all of them, or those a dead node lost)."""

    bundles: list[dict[str, float]]
    strategy: str  # one of GROUP_STRATEGIES
    labels: list[tuple[Expression, ...]] = attrs.Factory(list)  # per bundle: its label selector
    used: list[str] = attrs.Factory(list)  # nodes the group's other bundles are on (STRICT_* keep to them)


@attrs.frozen
class GroupDecision:
    """A node id per bundle, in order; or None, and why the group waits."""

    nodes: list[str] | None
    reason: str = ""
