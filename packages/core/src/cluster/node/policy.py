"""The default scheduling policy: where a node spills work it cannot fit (DESIGN.md §7).

A pure value: it reads the head's resource view and returns an address. Replaceable through
the ``cluster_make_scheduler`` hook (the built-in plugin ``scheduler`` makes this one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from cluster.resources import fits


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
