"""Built-in plugin ``spilling``: a full object store spills to a directory on disk."""

from __future__ import annotations

from typing import Any

from cluster_store import DirectorySpillTarget

from cluster.hookspec import hookimpl


@hookimpl
def cluster_make_spill_target(node: dict[str, Any]) -> Any:
    if not node.get("spill_dir"):
        return None
    return DirectorySpillTarget(node["spill_dir"])
