"""Where a lease request goes when its node cannot grant it: the default policy."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import attrs

from cluster.errors import ConfigError


def fits(shape: Mapping[str, float], available: Mapping[str, float]) -> bool:
    return all(available.get(name, 0.0) >= amount - 1e-9 for name, amount in shape.items())


@attrs.frozen
class SchedulingPolicy:
    """Pack on the local node while it has room; otherwise spill to the node with most room."""

    def spill_target(self, shape: Mapping[str, float], nodes: list[dict[str, Any]], self_id: str) -> str | None:
        """Address of a live node (not ``self_id``) whose *available* resources fit ``shape``."""
        best, best_room = None, -1.0
        for node in nodes:
            if node["node_id"] == self_id or node["state"] != "alive":
                continue
            if fits(shape, node["available"]):
                room = node["available"].get("CPU", 0.0)
                if room > best_room:
                    best, best_room = node["address"], room
        return best

    def feasible_somewhere(self, shape: Mapping[str, float], nodes: list[dict[str, Any]]) -> bool:
        return any(node["state"] == "alive" and fits(shape, node["resources"]) for node in nodes)


def resources_arg(
    num_cpus: float | None, num_gpus: float | None, resources: Mapping[str, float] | str | None
) -> str:
    """The node's resources as the daemon's ``--resources`` JSON; validates every amount."""
    if isinstance(resources, str):
        try:
            resources = json.loads(resources)
        except ValueError as exc:
            raise ConfigError(f"--resources must be a JSON object like '{{\"accel\": 2}}': {exc}") from None
    resources = dict(resources or {})
    if not all(isinstance(k, str) for k in resources):
        raise ConfigError("resource names must be strings")
    for name, amount in resources.items():
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
            raise ConfigError(f"resource {name!r} must be a non-negative number, got {amount!r}")
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ConfigError(f"{name} must be a non-negative number, got {value!r}")
    resources["CPU"] = float(num_cpus if num_cpus is not None else os.cpu_count() or 1)
    resources["GPU"] = float(num_gpus or 0)
    return json.dumps(resources)
