"""Built-in plugin ``store``: the object store of each node (cluster_store)."""

from __future__ import annotations

from typing import Any

from cluster_store import MemoryStore, ObjectStore

from cluster.hookspec import hookimpl
from cluster.plugins import make_spill_target


@hookimpl
def cluster_make_object_store(path: str, node: dict[str, Any]) -> Any:
    if node.get("object_store") == "memory":
        return MemoryStore(capacity_bytes=node.get("store_capacity"))
    return ObjectStore(
        path,
        capacity_bytes=node.get("store_capacity"),
        spill_target=make_spill_target(node),
        create=True,
    )
