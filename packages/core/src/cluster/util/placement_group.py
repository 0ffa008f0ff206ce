"""Ray's ``ray.util.placement_group``: gangs of resource bundles reserved together.

``placement_group(bundles, strategy=...)`` asks the head to reserve every bundle (all or none,
docs/design/0018) and returns at once; ``pg.ready()`` is an ObjectRef that resolves when the
group is placed, ``pg.wait(timeout_seconds)`` says whether it was in time. Tasks and actors
run in a bundle with ``scheduling_strategy=PlacementGroupSchedulingStrategy(pg, index)``
(``-1``: any bundle), taking their resources out of it. ``remove_placement_group(pg)`` gives
the bundles back and stops what runs in them; a group also goes with the process that made
it, unless it is ``lifetime="detached"``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from cluster.api.lifecycle import current_runtime
from cluster.context import current_namespace
from cluster.errors import ConfigError, RemoteCallError
from cluster.objects.refs import ObjectRef
from cluster.owner.tasks import DEFAULT_NAMESPACE
from cluster.scheduling import GROUP_STRATEGIES, group_of, labels_to_wire, parse_label_selector
from cluster.wire import messages as m

__all__ = [
    "PlacementGroup",
    "PlacementGroupID",
    "get_current_placement_group",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
]


class PlacementGroupID:
    """A placement group's id (Ray's: 18 bytes, shown as 36 hex digits)."""

    __slots__ = ("_hex",)

    def __init__(self, hex_id: str) -> None:
        self._hex = hex_id

    def hex(self) -> str:
        return self._hex

    def binary(self) -> bytes:
        return bytes.fromhex(self._hex)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupID) and other._hex == self._hex

    def __hash__(self) -> int:
        return hash(self._hex)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self._hex})"


class PlacementGroup:
    """A handle to a placement group: its id and bundles. Picklable: pass it to tasks."""

    def __init__(self, id: PlacementGroupID, bundle_specs: list[dict[str, float]] | None = None) -> None:
        self.id = id
        self.bundle_specs = [dict(b) for b in bundle_specs or []]

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    @property
    def is_empty(self) -> bool:
        return not self.bundle_specs

    def ready(self) -> ObjectRef:
        """An ObjectRef that resolves (to this group) once every bundle is reserved; if the
        group is removed first, getting it raises TaskPlacementGroupRemoved."""
        ref: ObjectRef = _runtime().pending_ref(f"PlacementGroup.ready({self.id.hex()[:8]})", self._until_ready)
        return ref

    async def _until_ready(self) -> PlacementGroup:
        await _runtime().wait_placement_group(self.id.hex(), fresh=True)
        return self

    def wait(self, timeout_seconds: float = 30) -> bool:
        """Whether the group is placed within ``timeout_seconds`` (False: still pending, or removed)."""
        record = _head(m.WaitPlacementGroup(self.id.hex(), float(timeout_seconds)))
        return record is not None and record["state"] == "CREATED"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id.hex()}, {self.bundle_specs})"


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK", name: str = "",
                    lifetime: str | None = None, _soft_target_node_id: str | None = None,
                    bundle_label_selector: list[dict[str, str]] | None = None) -> PlacementGroup:
    """Reserve ``bundles`` (each a resource dict, like ``{"CPU": 2, "GPU": 1}``) together:
    ``PACK`` on as few nodes as possible, ``SPREAD`` over as many, ``STRICT_PACK`` all on one
    node, ``STRICT_SPREAD`` each on its own node. Returns at once; see ``ready()``."""
    _check_bundles(bundles)
    if strategy not in GROUP_STRATEGIES:
        raise ConfigError(f"placement group strategy must be one of {', '.join(GROUP_STRATEGIES)}, got {strategy!r}")
    if lifetime not in (None, "detached"):
        raise ConfigError(f'placement group lifetime must be None or "detached", got {lifetime!r}')
    if not isinstance(name, str):
        raise ConfigError(f"placement group name must be a string, got {name!r}")
    selectors = list(bundle_label_selector or [])
    if selectors and len(selectors) != len(bundles):
        raise ConfigError(f"bundle_label_selector has {len(selectors)} selectors for {len(bundles)} bundles: "
                          "give one per bundle")
    labels = [labels_to_wire(parse_label_selector(s, "bundle_label_selector")) for s in selectors]
    pg_id = secrets.token_hex(18)
    runtime = _runtime()
    namespace = current_namespace.get() or getattr(runtime, "namespace", "") or DEFAULT_NAMESPACE
    try:
        _head(m.CreatePlacementGroup(pg_id, name, namespace, strategy, [dict(b) for b in bundles], labels,
                                     lifetime == "detached"))
    except RemoteCallError as exc:
        raise ConfigError(str(exc)) from None
    return PlacementGroup(PlacementGroupID(pg_id), bundles)


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Give the group's bundles back; tasks and actors running in it are stopped."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group takes a PlacementGroup, got {type(placement_group).__name__}")
    try:
        _head(m.RemovePlacementGroup(placement_group.id.hex()))
    except RemoteCallError as exc:
        raise ValueError(str(exc)) from None
    _runtime().forget_placement_group(placement_group.id.hex())  # (its tasks here fail at once)


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group of that name in this job's namespace (ValueError if there is none)."""
    runtime = _runtime()
    namespace = current_namespace.get() or getattr(runtime, "namespace", "") or DEFAULT_NAMESPACE
    record = _head(m.GetPlacementGroup(name=placement_group_name, namespace=namespace))
    if record is None:
        raise ValueError(f"Failed to look up placement group with name: {placement_group_name}")
    return _from_record(record)


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict[str, Any]:
    """Every group's state (``{id: info}``), or one group's info: its ``state`` (PENDING,
    CREATED, REMOVED, RESCHEDULING), ``strategy``, ``bundles``, ``bundles_to_node_id``, and
    ``stats["reason"]`` while it waits."""
    if placement_group is not None:
        record = _head(m.GetPlacementGroup(pg_id=placement_group.id.hex()))
        return record or {}
    return {record["placement_group_id"]: record for record in _head(m.ListPlacementGroups())}


def get_current_placement_group() -> PlacementGroup | None:
    """The group the task or actor running now is in (None: none, or in a driver)."""
    executor = getattr(_runtime(), "executor", None)
    if executor is None:
        return None
    group = group_of(executor.assigned_resources())
    if not group:
        return None
    record = _head(m.GetPlacementGroup(pg_id=group))
    return _from_record(record) if record is not None else PlacementGroup(PlacementGroupID(group))


def _from_record(record: Mapping[str, Any]) -> PlacementGroup:
    bundles = record["bundles"]
    ordered = [bundles[key] for key in sorted(bundles, key=int)]
    return PlacementGroup(PlacementGroupID(record["placement_group_id"]), ordered)


def _check_bundles(bundles: Any) -> None:
    if not isinstance(bundles, list) or not bundles:
        raise ConfigError("a placement group needs a non-empty list of bundles, like [{\"CPU\": 1}, {\"CPU\": 1}]")
    for i, bundle in enumerate(bundles):
        if not isinstance(bundle, Mapping) or not bundle:
            raise ConfigError(f"bundle {i} must be a non-empty dict of resource amounts, got {bundle!r}")
        for key, amount in bundle.items():
            if not isinstance(key, str) or isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
                raise ConfigError(f"bundle {i}: {key!r} must map to a non-negative number, got {amount!r}")
        if not any(bundle.values()):
            raise ConfigError(f"bundle {i} asks for nothing ({bundle!r}): every bundle needs some resource")


def _runtime() -> Any:
    """This process's runtime (a driver's or a worker's: both own work and reach the head)."""
    runtime = current_runtime()
    if not hasattr(runtime, "pending_ref"):
        raise ConfigError("placement groups cannot be used through a remote client (cluster://...) yet: run the "
                          "driver on a node of the cluster (cluster.init() there), or submit it as a job")
    return runtime


def _head(msg: m.Message) -> Any:
    runtime = _runtime()
    return runtime.call_async(runtime.head_request, msg)
