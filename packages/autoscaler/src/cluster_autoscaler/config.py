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

from cluster_autoscaler.errors import ClusterConfigError

_TOP_KEYS = {"cluster_name", "provider", "node_types", "head_node_type", "max_workers", "idle_timeout_s",
             "upscaling_speed"}
_NODE_TYPE_KEYS = {"resources", "labels", "min_workers", "max_workers", "node_config"}


def _frozen_mapping(value: Mapping) -> Mapping:
    return types.MappingProxyType(dict(value))


@attrs.frozen
class NodeType:
    name: str
    resources: Mapping[str, float] = attrs.field(converter=_frozen_mapping)
    labels: Mapping[str, str] = attrs.field(converter=_frozen_mapping, factory=dict)
    min_workers: int = 0
    max_workers: int = 0
    node_config: Mapping[str, Any] = attrs.field(converter=_frozen_mapping, factory=dict)


@attrs.frozen
class ProviderConfig:
    type: str
    options: Mapping[str, Any] = attrs.field(converter=_frozen_mapping, factory=dict)


@attrs.frozen
class ClusterConfig:
    cluster_name: str
    provider: ProviderConfig
    node_types: Mapping[str, NodeType] = attrs.field(converter=_frozen_mapping)
    head_node_type: str
    max_workers: int = 10
    idle_timeout_s: float = 60.0
    upscaling_speed: float = 1.0

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
    if not types_map:
        raise source.error(types_value, "node_types", "must name at least one node type")
    node_types = {name: _node_type(source, name, value) for name, (_, value) in types_map.items()}
    head = _string(source, *_required(source, root, top, "head_node_type"), "head_node_type")
    if head not in node_types:
        raise source.error(top["head_node_type"][1], "head_node_type",
                           f"{head!r} is not one of node_types ({', '.join(node_types)})")
    max_workers = _integer(source, top, "max_workers", 10, minimum=0)
    idle = _number(source, top, "idle_timeout_s", 60.0, minimum=0.0)
    speed = _number(source, top, "upscaling_speed", 1.0, minimum=0.0)
    return ClusterConfig(cluster_name, ProviderConfig(ptype, options), node_types, head, max_workers, idle, speed)


def _node_type(source: _Source, name: str, value: Any) -> NodeType:
    path = f"node_types.{name}"
    fields = _mapping(source, value, path, "must be a mapping (resources, labels, min_workers, max_workers, node_config)")
    _no_unknown(source, fields, path + ".", _NODE_TYPE_KEYS)
    _, res_value = _required(source, value, fields, "resources", path + ".")
    resources_map = _mapping(source, res_value, f"{path}.resources", "must map resource names to amounts, e.g. {CPU: 4}")
    resources = {}
    for key, (_, amount_node) in resources_map.items():
        amount = _plain(amount_node)
        if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount) or amount < 0:
            raise source.error(amount_node, f"{path}.resources.{key}", f"must be a non-negative number, got {amount!r}")
        resources[key] = float(amount)
    labels = {}
    if "labels" in fields:
        for key, (_, label_node) in _mapping(source, fields["labels"][1], f"{path}.labels",
                                             "must map label names to strings").items():
            label = _plain(label_node)
            if not isinstance(label, str):
                raise source.error(label_node, f"{path}.labels.{key}", f"must be a string, got {label!r}")
            labels[key] = label
    low = _integer(source, fields, "min_workers", 0, minimum=0, path=path + ".")
    high = _integer(source, fields, "max_workers", max(low, 0), minimum=0, path=path + ".")
    if high < low:
        raise source.error(fields["max_workers"][1], f"{path}.max_workers", f"({high}) is below min_workers ({low})")
    node_config = _plain(fields["node_config"][1]) if "node_config" in fields else {}
    if not isinstance(node_config, dict):
        raise source.error(fields["node_config"][1], f"{path}.node_config", "must be a mapping")
    return NodeType(name, resources, labels, low, high, node_config)


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
