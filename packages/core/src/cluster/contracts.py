"""What plugins may rely on: Protocols of the services that hooks hand them and that they make.

Hook specs (:mod:`cluster.hookspec`) name these, not the concrete classes, so a plugin depends
on a small stable surface and the leaf modules never import the daemons. The concrete classes
(``HeadService``, ``NodeService``, ``SqliteMetadataStore``, ``SchedulingPolicy``, the daemon's
``Services``) satisfy them; a plugin may make its own.

A leaf module: imports nothing of cluster at run time.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cluster_store import StoredObject

    from cluster.scheduling import (
        Decision,
        GroupDecision,
        GroupRequest,
        ResourceView,
        SchedulingRequest,
    )


class Peer(Protocol):
    """The side of a connection a service handler answers (a :class:`cluster.wire.connection.Connection`)."""

    def reply(self, request_id: int, value: Any) -> None: ...
    def reply_error(self, request_id: int, kind: str, message: str) -> None: ...


# A plugin service's message handler: handler(peer, payload, request_id); it answers with
# peer.reply / peer.reply_error (or not at all, for one-way messages).
ServiceHandler = Callable[[Peer, Any, int], None]


class ServiceRegistry(Protocol):
    """The daemon's plugin services by name: peers reach one with ``ServiceRequest(name, ...)``."""

    def add(self, name: str, handler: ServiceHandler) -> None: ...


class ObjectStore(Protocol):
    """A node's object store as the runtime and the node use it (cluster_store's ObjectStore
    and MemoryStore, or a plugin's, from ``cluster_make_object_store``)."""

    shared: bool  # False: a store private to each process, which then serves its own objects

    def put(self, object_id: bytes, metadata: bytes, inband: bytes | memoryview,
            buffers: Sequence[bytes | memoryview | pickle.PickleBuffer] = ()) -> int: ...
    def get(self, object_id: bytes) -> StoredObject | None: ...
    def delete(self, object_id: bytes) -> bool: ...
    def size_of(self, object_id: bytes) -> int | None: ...
    def object_ids(self) -> list[bytes]: ...
    def usage(self) -> tuple[int, int]: ...


class DriverRuntime(Protocol):
    """What the public API asks of the runtime of the process (cluster.owner.runtime.Runtime,
    or the one a plugin's ``cluster_connect`` returns, like cluster-client's remote client)."""

    head_address: str
    node_id: str
    session_dir: str | None
    address: str  # where this process's owner listens ("" when it owns nothing itself)
    log_sink: Callable[[Any], None] | None  # where workers' output goes (None: dropped)
    namespace: str  # of the actor names it creates and looks up
    runtime_env: dict[str, Any] | None  # resolved: the default env of what it submits

    def stop(self) -> None: ...
    def resolve_env(self, user_env: Any) -> dict[str, Any] | None: ...  # checked, uploaded, merged
    def caller_namespace(self) -> str: ...  # what a task submitted now carries ("": the default)
    def new_task_id(self) -> bytes: ...
    def submit(self, task: Any) -> list[Any]: ...
    def put(self, value: Any) -> Any: ...
    def get(self, refs: list[Any], timeout: float | None) -> list[Any]: ...
    def wait(self, refs: list[Any], num_returns: int, timeout: float | None) -> tuple[list[Any], list[Any]]: ...
    def cancel(self, ref: Any, force: bool, recursive: bool = True) -> None: ...
    def create_actor(self, actor_class: Any, blob: bytes, payload: bytes, dep_refs: list[Any],
                     held: list[Any]) -> tuple[Any, ...]: ...  # an ActorHandle's fields
    def submit_actor_call(self, handle: Any, method: str, num_returns: int, payload: bytes,
                          dep_refs: list[Any], held: list[Any], stream: tuple[int, bool] | None = None,
                          group: str = "") -> list[Any]: ...
    def named_actor(self, name: str, namespace: str | None) -> tuple[Any, ...] | None: ...
    def kill_actor(self, handle: Any, no_restart: bool) -> None: ...
    def list_nodes(self) -> list[dict[str, Any]]: ...
    def add_local_ref(self, object_id: bytes) -> None: ...
    def remove_local_ref(self, object_id: bytes) -> None: ...
    def actor_handle_added(self, actor_id: bytes) -> None: ...
    def actor_handle_dropped(self, actor_id: bytes) -> None: ...
    def actor_handle_escaped(self, actor_id: bytes) -> None: ...


class MetadataStore(Protocol):
    """Small tables that outlive the head process; values are JSON documents. Synchronous and
    quick: the head calls them on its event loop. ``items`` lists a table in the order its keys
    were first written (an overwrite keeps a key's place). ``cluster.testing.MetadataStoreConformance``
    is this contract as tests."""

    def put(self, table: str, key: str, value: Any) -> None: ...
    def get(self, table: str, key: str) -> Any | None: ...
    def delete(self, table: str, key: str) -> bool: ...
    def items(self, table: str) -> list[tuple[str, Any]]: ...
    def close(self) -> None: ...


class SchedulingPolicy(Protocol):
    """Where a node runs each lease request it receives: pure, no I/O. The request (its shape,
    its placement: strategy and label selectors) and the node's view of the cluster
    (``cluster.scheduling.ResourceView``: live nodes, their totals, free resources and labels,
    indexed) in; a ``cluster.scheduling.Decision`` out (run it here, ask another node,
    infeasible, or unschedulable). The node calls it for every request, also the ones it could
    grant at once, so a plugin's policy is the policy."""

    def decide(self, request: SchedulingRequest, view: ResourceView) -> Decision: ...

    # A node per bundle of a placement group (``GroupRequest``: bundles, strategy, label
    # selectors) from the head's view, or None and why it waits; called at the head.
    def place_group(self, request: GroupRequest, view: ResourceView) -> GroupDecision: ...


class NodeRecordView(Protocol):
    """What the head knows of one node."""

    node_id: str
    address: str
    state: str  # "alive" | "dead"
    resources: dict[str, float]
    labels: dict[str, str]


class Head(Protocol):
    """The head service as head plugins see it (``cluster_head_services``)."""

    address: str
    token: str  # the cluster token (services that accept other protocols check it)
    session_dir: str
    nodes: Mapping[str, Any]  # node id -> NodeRecordView
    services: ServiceRegistry
    metadata: MetadataStore
    dashboard_host: str
    dashboard_port: int | None
    dashboard_url: str | None
    autoscaling_config: str | None
    on_node_dead: list[Callable[[Any], None]]

    def kv_get(self, key: str) -> bytes | None:
        """The head's KV entry ``key`` (``cluster.autoscaler.request_resources`` writes one)."""
        ...

    def kv_put(self, key: str, value: bytes) -> None:
        """Set the head's KV entry ``key`` (an autoscaler publishes its node types there)."""
        ...

    def pending_placement_groups(self) -> list[dict[str, Any]]:
        """The placement groups waiting to be placed: each ``{"pg_id", "strategy", "bundles"}``
        (the bundles not placed yet), for an autoscaler to size the cluster by."""
        ...


class Node(Protocol):
    """The node service as node plugins see it (``cluster_node_services``)."""

    node_id: str
    address: str
    head_address: str
    token: str
    session_dir: str
    services: ServiceRegistry
    head_conn: Any  # the node's Connection to the head (None while the head is away)
    # (old id, new id): the head had declared the node dead, and it joined again as a new node
    # (its workers were killed and its store emptied; a plugin stops what it ran for the old one).
    on_new_identity: list[Callable[[str, str], None]]

    async def head_connection(self) -> Any:
        """The Connection to the head; while the head is away, waits (bounded) for it to come back."""
        ...

    def reserve(self, shape: dict[str, float]) -> bool:
        """Hold ``shape`` of this node's resources for a plugin's own work; False if it does not fit."""
        ...

    def unreserve(self, shape: dict[str, float]) -> None: ...
