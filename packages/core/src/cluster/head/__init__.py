"""The head: the cluster's control plane (DESIGN.md §3, §8).

- :mod:`.service`: :class:`~cluster.head.service.HeadService`: node table, heartbeats,
  failure detection, resource view, KV;
- :mod:`.metadata`: where the head persists its tables (SQLite by default).

May import: wire, the leaf modules. Never owner, node, api or worker.
"""
