"""Cluster configs: YAML validated into frozen types, errors naming the key and its line.

    cluster_name: demo
    provider: {type: local}
    head_node_type: head
    max_workers: 10
    idle_timeout_s: 60
    upscaling_speed: 1.0
    node_types:
      head: {resources: {CPU: 2}}
      cpu_worker:
        resources: {CPU: 4}
        min_workers: 0
        max_workers: 5
      gpu_worker:
        resources: {CPU: 4, accel: 1}
        labels: {kind: gpu}
        max_workers: 2
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from cluster_autoscaler.errors import ClusterConfigError, InvalidField

_TOP_KEYS = {"cluster_name", "provider", "node_types", "head_node_type", "max_workers", "idle_timeout_s",
             "upscaling_speed"}
_NODE_TYPE_KEYS = {"resources", "labels", "min_workers", "max_workers", "node_config"}


def _frozen_mapping(value: Mapping) -> Mapping:
    return types.MappingProxyType(dict(value))


def _resource_amounts(instance: Any, attribute: attrs.Attribute, value: Mapping[str, Any]) -> None:
    for key, amount in value.items():
        if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount) or amount < 0:
            raise InvalidField(f"resources.{key}", f"must be a non-negative number, got {amount!r}")


def _label_values(instance: Any, attribute: attrs.Attribute, value: Mapping[str, Any]) -> None:
    for key, label in value.items():
        if not isinstance(label, str):
            raise InvalidField(f"labels.{key}", f"must be a string, got {label!r}")


def _at_least(minimum: float) -> Any:
    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            kind = "an integer" if attribute.type in ("int", int) else "a number"
            raise InvalidField(attribute.name, f"must be {kind} >= {minimum:g}, got {value!r}")

    return check


@attrs.frozen
class NodeType:
    """A kind of node the autoscaler may launch; its rules hold from construction on."""

    name: str
    resources: Mapping[str, float] = attrs.field(converter=_frozen_mapping, validator=_resource_amounts)
    labels: Mapping[str, str] = attrs.field(converter=_frozen_mapping, factory=dict, validator=_label_values)
    min_workers: int = attrs.field(default=0, validator=_at_least(0))
    max_workers: int = attrs.field(default=0, validator=_at_least(0))
    node_config: Mapping[str, Any] = attrs.field(converter=_frozen_mapping, factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.max_workers < self.min_workers:
            raise InvalidField("max_workers", f"({self.max_workers}) is below min_workers ({self.min_workers})")


@attrs.frozen
class ProviderConfig:
    type: str
    options: Mapping[str, Any] = attrs.field(converter=_frozen_mapping, factory=dict)


@attrs.frozen
class ClusterConfig:
    """A whole cluster config; its rules hold from construction on."""

    cluster_name: str
    provider: ProviderConfig
    node_types: Mapping[str, NodeType] = attrs.field(converter=_frozen_mapping)
    head_node_type: str
    max_workers: int = attrs.field(default=10, validator=_at_least(0))
    idle_timeout_s: float = attrs.field(default=60.0, validator=_at_least(0.0))
    upscaling_speed: float = attrs.field(default=1.0, validator=_at_least(0.0))

    def __attrs_post_init__(self) -> None:
        if not self.node_types:
            raise InvalidField("node_types", "must name at least one node type")
        if self.head_node_type not in self.node_types:
            raise InvalidField("head_node_type",
                               f"{self.head_node_type!r} is not one of node_types ({', '.join(self.node_types)})")

    @property
    def worker_types(self) -> list[NodeType]:
        return [t for name, t in self.node_types.items() if name != self.head_node_type]


# --------------------------------------------------------------------------- loading


class _Source:
    """Where each value came from, for messages: ``config.yaml, line 7: node_types.x.y ...``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def error(self, node: Any, path: str, message: str) -> ClusterConfigError:
        where = f"{self.name}, line {node.start_mark.line + 1}" if node is not None else self.name
        return ClusterConfigError(f"{where}: {path + ' ' if path else ''}{message}")


def load_config(path: str | Path) -> ClusterConfig:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ClusterConfigError(f"cannot read the cluster config {path}: {exc.strerror}") from None
    return parse_config(text, str(path))


def parse_config(text: str, name: str = "<config>") -> ClusterConfig:
    import yaml

    source = _Source(name)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name}, line {mark.line + 1}" if mark is not None else name
        raise ClusterConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    top = _mapping(source, root, "", "the config must be a mapping of keys (cluster_name, provider, node_types, ...)")
    _no_unknown(source, top, "", _TOP_KEYS)
    cluster_name = _string(source, *_required(source, root, top, "cluster_name"), "cluster_name")
    _, provider_value = _required(source, root, top, "provider")
    provider_map = _mapping(source, provider_value, "provider", "must be a mapping with a 'type', e.g. {type: local}")
    ptype = _string(source, *_required(source, provider_value, provider_map, "type", "provider."), "provider.type")
    options = {k: _plain(v) for k, (_, v) in provider_map.items() if k != "type"}
    _, types_value = _required(source, root, top, "node_types")
    types_map = _mapping(source, types_value, "node_types", "must map node type names to their settings")
    node_types = {name: _node_type(source, name, value) for name, (_, value) in types_map.items()}
    head = _string(source, *_required(source, root, top, "head_node_type"), "head_node_type")
    max_workers = _integer(source, top, "max_workers", 10, minimum=0)
    idle = _number(source, top, "idle_timeout_s", 60.0, minimum=0.0)
    speed = _number(source, top, "upscaling_speed", 1.0, minimum=0.0)
    try:
        return ClusterConfig(cluster_name, ProviderConfig(ptype, options), node_types, head, max_workers, idle,
                             speed)
    except InvalidField as exc:  # a rule of the type: say where in the file
        raise source.error(top.get(exc.field, (None, types_value))[1], exc.field, exc.message) from None


def _node_type(source: _Source, name: str, value: Any) -> NodeType:
    path = f"node_types.{name}"
    fields = _mapping(source, value, path, "must be a mapping (resources, labels, min_workers, max_workers, node_config)")
    _no_unknown(source, fields, path + ".", _NODE_TYPE_KEYS)
    _, res_value = _required(source, value, fields, "resources", path + ".")
    resources_map = _mapping(source, res_value, f"{path}.resources", "must map resource names to amounts, e.g. {CPU: 4}")
    resources = {key: _plain(amount_node) for key, (_, amount_node) in resources_map.items()}
    labels_map = {}
    if "labels" in fields:
        labels_map = _mapping(source, fields["labels"][1], f"{path}.labels", "must map label names to strings")
    labels = {key: _plain(label_node) for key, (_, label_node) in labels_map.items()}
    low = _integer(source, fields, "min_workers", 0, minimum=0, path=path + ".")
    high = _integer(source, fields, "max_workers", max(low, 0), minimum=0, path=path + ".")
    node_config = _plain(fields["node_config"][1]) if "node_config" in fields else {}
    if not isinstance(node_config, dict):
        raise source.error(fields["node_config"][1], f"{path}.node_config", "must be a mapping")
    try:
        return NodeType(name, {k: float(x) if isinstance(x, int) and not isinstance(x, bool) else x
                               for k, x in resources.items()}, labels, low, high, node_config)
    except InvalidField as exc:  # a rule of the type: say where in the file
        group, _, key = exc.field.partition(".")
        where = {"resources": resources_map, "labels": labels_map}.get(group, {}).get(key) or fields.get(group)
        raise source.error(where[1] if where else value, f"{path}.{exc.field}", exc.message) from None


# --------------------------------------------------------------------------- helpers


def _mapping(source: _Source, node: Any, path: str, what: str) -> dict[str, tuple[Any, Any]]:
    """A YAML mapping node as {key: (key node, value node)}."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        raise source.error(node, path, what)
    out = {}
    for key_node, value_node in node.value:
        key = _plain(key_node)
        if not isinstance(key, str):
            raise source.error(key_node, path, f"has a key that is not a name: {key!r}")
        if key in out:
            raise source.error(key_node, f"{path}.{key}" if path else key, "is given twice")
        out[key] = (key_node, value_node)
    return out


def _required(source: _Source, parent: Any, fields: dict, key: str, prefix: str = "") -> tuple[Any, Any]:
    if key not in fields:
        raise source.error(parent, f"{prefix}{key}", "is missing")
    return fields[key]


def _no_unknown(source: _Source, fields: dict, prefix: str, known: set[str]) -> None:
    for key, (key_node, _) in fields.items():
        if key not in known:
            raise source.error(key_node, prefix + key, f"is not a known key; known: {', '.join(sorted(known))}")


def _plain(node: Any) -> Any:
    """The Python value of a YAML node."""
    import yaml

    return yaml.SafeLoader("").construct_object(node, deep=True) if node is not None else None


def _string(source: _Source, _key: Any, node: Any, path: str) -> str:
    value = _plain(node)
    if not isinstance(value, str) or not value:
        raise source.error(node, path, f"must be a non-empty string, got {value!r}")
    return value


def _integer(source: _Source, fields: dict, key: str, default: int, *, minimum: int, path: str = "") -> int:
    if key not in fields:
        return default
    node = fields[key][1]
    value = _plain(node)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise source.error(node, path + key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _number(source: _Source, fields: dict, key: str, default: float, *, minimum: float) -> float:
    if key not in fields:
        return default
    node = fields[key][1]
    value = _plain(node)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < minimum:
        raise source.error(node, key, f"must be a number >= {minimum:g}, got {value!r}")
    return float(value)
