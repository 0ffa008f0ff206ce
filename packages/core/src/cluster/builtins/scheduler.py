"""Built-in plugin ``scheduler``: the default scheduling policy of every node."""

from __future__ import annotations

from typing import Any

from cluster.hookspec import hookimpl
from cluster.node.policy import SchedulingPolicy


@hookimpl
def cluster_make_scheduler(node: Any) -> Any:
    return SchedulingPolicy()
