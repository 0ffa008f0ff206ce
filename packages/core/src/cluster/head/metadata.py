"""The head's metadata store: small tables that outlive the head process.

A store is made by the ``cluster_make_metadata_store(url)`` hook; core answers ``sqlite:///PATH``
(the default is a file in the head's session directory; ``cluster start --head
--metadata-store sqlite:///somewhere/stable.db`` keeps the cluster across head restarts:
its identity and token, nodes, KV, jobs and their logs, see :mod:`cluster.head.tables`).
Values are JSON documents. Calls are quick and synchronous: the head calls them on its loop.
The store holds the cluster token, so the SQLite file (and the journal files SQLite makes
beside it, which take its mode) is readable by its owner only.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

from cluster.contracts import MetadataStore
from cluster.errors import ConfigError

__all__ = ["MetadataStore", "SqliteMetadataStore", "sqlite_path"]


class SqliteMetadataStore:
    """One SQLite file; a row per (table, key) with a JSON value, listed by rowid. Each write commits."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # before SQLite creates it 0644
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # A commit reaches the file before the call returns (a killed head loses nothing),
            # but is not fsynced: only a crash of the machine itself may lose the last writes.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS records (tbl TEXT, key TEXT, value TEXT, PRIMARY KEY (tbl, key))"
            )
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"cannot open the metadata store {path}: {exc}. Check the path "
                              "(--metadata-store sqlite:///PATH) and that its directory is writable.") from None

    def put(self, table: str, key: str, value: Any) -> None:
        # an update in place keeps the row's rowid, so the key keeps its place in items()
        # (INSERT OR REPLACE deletes the row and adds a new one: an overwrite moved the key last)
        self._db.execute("INSERT INTO records VALUES (?, ?, ?) "
                         "ON CONFLICT (tbl, key) DO UPDATE SET value = excluded.value", (table, key, json.dumps(value)))

    def get(self, table: str, key: str) -> Any | None:
        row = self._db.execute("SELECT value FROM records WHERE tbl = ? AND key = ?", (table, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def delete(self, table: str, key: str) -> bool:
        return self._db.execute("DELETE FROM records WHERE tbl = ? AND key = ?", (table, key)).rowcount > 0

    def items(self, table: str) -> list[tuple[str, Any]]:
        rows = self._db.execute("SELECT key, value FROM records WHERE tbl = ? ORDER BY rowid", (table,))
        return [(key, json.loads(value)) for key, value in rows]

    def close(self) -> None:
        self._db.close()


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:///PATH`` URL; None for other schemes."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        return None
    return "/" + url[len(prefix):].lstrip("/")
