"""What the head keeps in its metadata store, so that a head started again is the same cluster.

Tables (a :class:`~cluster.contracts.MetadataStore` of any kind: SQLite by default, a plugin's):

- ``cluster``: one row, ``identity``: the cluster's id and token, written by the first head
  that opens the store (:func:`claim_identity`). A head started again on the same store takes
  them back, so nodes and drivers reconnect with the credentials they have;
- ``nodes``: a row per node the head has known, alive or dead (:func:`node_row`): what it
  registered with and its state. Written when a node joins, comes back or dies, never per
  heartbeat (what a node has free comes back with its next heartbeat);
- ``kv``: the head's KV (actor names, detached ones included, and what plugins put there),
  each value base64 in its JSON document;
- plugins keep theirs (cluster-client: ``jobs`` and the jobs' logs).

Plain functions over the store, for the head daemon and ``cluster start --head``.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

import attrs

from cluster.contracts import MetadataStore
from cluster.errors import ConfigError

IDENTITY_TABLE = "cluster"
IDENTITY_KEY = "identity"
NODES_TABLE = "nodes"
KV_TABLE = "kv"

# What a node's row keeps: the fields of its registration, and its state.
NODE_FIELDS = ("node_id", "address", "resources", "labels", "hostname", "pid", "store_path", "is_head",
               "store_capacity", "spill_dir", "object_store", "state", "joined_at", "died_at", "death_reason")


@attrs.frozen
class ClusterIdentity:
    """Who a cluster is: its id (shown to users, checked by nodes that come back) and token."""

    cluster_id: str
    token: str
    created_at: float  # seconds since the epoch


def stored_identity(store: MetadataStore) -> ClusterIdentity | None:
    """The identity a head left in ``store``, if one did."""
    row = store.get(IDENTITY_TABLE, IDENTITY_KEY)
    if row is None:
        return None
    return ClusterIdentity(row["cluster_id"], row["token"], float(row.get("created_at", 0.0)))


def claim_identity(store: MetadataStore, token: str, store_url: str) -> tuple[ClusterIdentity, bool]:
    """The identity of the cluster whose head opens ``store`` with ``token``: the stored one
    (True: a head started again), whose token must be ``token``; else a new one (False).

    Raises ConfigError when the store keeps another token: the head would be a cluster its
    nodes and drivers cannot reach with what they hold.
    """
    identity = stored_identity(store)
    if identity is not None:
        if identity.token != token:
            raise ConfigError(contradicting_token_message(identity, store_url))
        return identity, True
    identity = ClusterIdentity(f"c{secrets.token_hex(6)}", token, time.time())
    store.put(IDENTITY_TABLE, IDENTITY_KEY, attrs.asdict(identity))
    return identity, False


def contradicting_token_message(identity: ClusterIdentity, store_url: str) -> str:
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(identity.created_at))
    return (
        f"the token given to this head (--token, or $CLUSTER_TOKEN) is not the token of cluster "
        f"{identity.cluster_id}, which the metadata store {store_url} keeps (created {created}). "
        "Leave --token out to start that cluster's head again with its own token, or give "
        "another --metadata-store to start a new cluster."
    )


# --- nodes ------------------------------------------------------------------------------------


def node_row(record: Any) -> dict[str, Any]:
    """The row of a node record (cluster.head.service.NodeRecord) in the ``nodes`` table."""
    return {name: getattr(record, name) for name in NODE_FIELDS}


def stored_nodes(store: MetadataStore) -> list[dict[str, Any]]:
    return [row for _, row in store.items(NODES_TABLE)]


# --- KV ---------------------------------------------------------------------------------------


def put_kv(store: MetadataStore, key: str, value: bytes) -> None:
    store.put(KV_TABLE, key, base64.b64encode(value).decode("ascii"))


def delete_kv(store: MetadataStore, key: str) -> None:
    store.delete(KV_TABLE, key)


def stored_kv(store: MetadataStore) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in store.items(KV_TABLE)}
