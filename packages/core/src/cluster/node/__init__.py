"""The node: a machine's resources, leases, worker pool and object store (DESIGN.md §3, §5).

- :mod:`.service`: :class:`~cluster.node.service.NodeService`: lease grants and spillback,
  worker supervision, fetching objects from other nodes and serving its own;
- :mod:`.policy`: the default scheduling policy (where to spill), a pure value.

May import: objects, wire, the leaf modules, cluster_store. Never owner, head, api or worker.
"""
