"""cluster-core's own hook implementations: registered like any third-party plugin."""

from __future__ import annotations

from typing import Any

from cluster.hookspec import hookimpl


@hookimpl
def cluster_make_object_store(path: str, node: dict[str, Any]) -> Any:
    if node.get("object_store") == "memory":
        from cluster_store import MemoryStore

        return MemoryStore(capacity_bytes=node.get("store_capacity"))
    from cluster_store import ObjectStore

    from cluster.plugins import make_spill_target

    return ObjectStore(
        path,
        capacity_bytes=node.get("store_capacity"),
        spill_target=make_spill_target(node),
        create=True,
    )


@hookimpl
def cluster_make_spill_target(node: dict[str, Any]) -> Any:
    if not node.get("spill_dir"):
        return None
    from cluster_store import DirectorySpillTarget

    return DirectorySpillTarget(node["spill_dir"])


@hookimpl
def cluster_make_metadata_store(url: str) -> Any:
    from cluster.metadata import SqliteMetadataStore, sqlite_path

    path = sqlite_path(url)
    return None if path is None else SqliteMetadataStore(path)


@hookimpl
def cluster_make_scheduler(node: Any) -> Any:
    from cluster.scheduling import SchedulingPolicy

    return SchedulingPolicy()


@hookimpl
def cluster_add_commands(cli: Any) -> None:
    from cluster.cli import builtin_commands

    for command in builtin_commands():
        cli.add_command(command)
