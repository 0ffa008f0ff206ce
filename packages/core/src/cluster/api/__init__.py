"""The public API (Ray's names, arguments and errors): what ``import cluster`` offers.

- :mod:`.lifecycle`: ``init``, ``shutdown``, ``is_initialized``, ``nodes``, ``cluster_resources``,
  ``available_resources``; the current runtime;
- :mod:`.tasks`: ``remote`` and :class:`RemoteFunction`;
- :mod:`.actors`: :class:`ActorClass`, :class:`ActorHandle`, ``method``, ``kill``, ``get_actor``;
- :mod:`.objects`: ``get``, ``put``, ``wait``, ``cancel``;
- :mod:`.generators`: :class:`ObjectRefGenerator`, what a generator task returns;
- :mod:`.context`: ``get_runtime_context`` and :class:`RuntimeContext`, ``get_gpu_ids``;
- :mod:`.options`, :mod:`.args`: option checks, argument packing.

May import: owner, objects, wire, and the leaf modules. Nothing below imports api.
"""

from cluster.api.actors import ActorClass, ActorHandle, ActorMethod, get_actor, kill, method
from cluster.api.context import RuntimeContext, get_gpu_ids, get_runtime_context
from cluster.api.lifecycle import (
    available_resources,
    cluster_resources,
    current_runtime,
    init,
    is_initialized,
    nodes,
    shutdown,
)
from cluster.api.objects import cancel, get, put, wait
from cluster.api.tasks import RemoteFunction, remote

__all__ = [
    "ActorClass",
    "ActorHandle",
    "ActorMethod",
    "RemoteFunction",
    "RuntimeContext",
    "available_resources",
    "cancel",
    "cluster_resources",
    "current_runtime",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "wait",
]
