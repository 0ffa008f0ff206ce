"""Built-in plugin ``metadata``: the head keeps its tables in a SQLite file (``sqlite:///PATH``)."""

from __future__ import annotations

from typing import Any

from cluster.head.metadata import SqliteMetadataStore, sqlite_path
from cluster.hookspec import hookimpl


@hookimpl
def cluster_make_metadata_store(url: str) -> Any:
    path = sqlite_path(url)
    return None if path is None else SqliteMetadataStore(path)
