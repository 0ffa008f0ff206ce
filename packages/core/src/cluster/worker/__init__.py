"""The worker process: runs tasks and actor methods (DESIGN.md §3).

- :mod:`.executor`: :class:`~cluster.worker.executor.Executor` (tasks on the main thread; an
  actor's instance, its asyncio loop or thread pool) and the worker's entry point;
- :mod:`.zygote`: the fork server that starts pre-imported workers.

May import: api (a worker's tasks call the public API), owner, objects, wire, the leaf modules.
"""
