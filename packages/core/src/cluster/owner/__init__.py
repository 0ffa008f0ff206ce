"""The owner: what the runtime of a driver or a worker does for the work it submits (DESIGN.md §4).

- :mod:`.runtime`: :class:`~cluster.owner.runtime.Runtime`, the process's trio thread and its
  entry points for the user's thread (submit, get, wait, put, cancel); leases, dispatch,
  results, reference counts;
- :mod:`.actors`: the actor half of the runtime: creation, ordered calls, restarts, names;
- :mod:`.generators`: the generator half: the values generator tasks stream back, next(), the
  end of a stream, back-pressure credit, consumers that go away;
- :mod:`.tasks`: the records it keeps (tasks, leases, queues by shape), plain values.

May import: objects, wire, the leaf modules. Never api, node, head, worker or daemon.
"""
