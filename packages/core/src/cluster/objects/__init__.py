"""Objects and code as they travel: references, values, stored copies, pickled functions.

- :mod:`.refs`: :class:`ObjectRef`, local counts, the scopes that catch refs pickled in or out;
- :mod:`.values`: serialization (pickle 5, cloudpickle) and value entries (inline / stored);
- :mod:`.transfer`: chunked, resumable copies of stored objects between nodes;
- :mod:`.functions`: how functions and classes are pickled once and unpacked on workers.

May import: wire, the leaf modules, cluster_store. Used by owner, node, api and worker.
"""
