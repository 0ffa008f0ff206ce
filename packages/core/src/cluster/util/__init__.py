"""``cluster.util``: Ray's ``ray.util`` helpers, built on the public API.

- :class:`ActorPool` (:mod:`.actor_pool`): spread calls over a fixed set of actors;
- :mod:`.queue`: ``Queue``, a FIFO held by an actor, with ``Empty`` and ``Full``;
- :mod:`.multiprocessing`: ``Pool``, ``multiprocessing.Pool`` on the cluster's actors;
- :mod:`.joblib`: ``register_ray()``, a joblib backend that runs on the cluster;
- :mod:`.scheduling_strategies`: Ray's strategy classes (node affinity, labels, placement groups);
- :mod:`.placement_group`: ``placement_group()`` and its kin (``remove_placement_group``,
  ``get_placement_group``, ``placement_group_table``, ``get_current_placement_group``);
- ``get_node_ip_address()``: the IP of the node this process runs on.

The three submodules load on first use (``cluster.util.queue`` works after ``import
cluster``), so neither asyncio queues, multiprocessing nor joblib cost anything to a program
that never touches them. A room of the top layer: it may import anything in core.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cluster.objects import refs
from cluster.util import scheduling_strategies
from cluster.util.actor_pool import ActorPool
from cluster.util.placement_group import (  # (the module's name is then the function's, as in Ray)
    PlacementGroup,
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)

_SUBMODULES = ("queue", "multiprocessing", "joblib")

__all__ = [
    "ActorPool",
    "PlacementGroup",
    "get_current_placement_group",
    "get_node_ip_address",
    "get_placement_group",
    "placement_group",
    "placement_group_table",
    "remove_placement_group",
    "scheduling_strategies",
    *_SUBMODULES,
]


def get_node_ip_address(address: str | None = None) -> str:
    """The IP address of the node this process runs on (Ray's ``ray.util.get_node_ip_address``):
    the address its node daemon serves on, in a driver, task or actor; 127.0.0.1 (the default
    host of every daemon) before ``cluster.init()``. ``address`` is accepted as Ray's is; nothing
    is sent anywhere to find the answer."""
    node_address = getattr(refs._runtime, "node_address", "") or ""
    host = node_address.rpartition(":")[0]
    return host.strip("[]") or "127.0.0.1"


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        # Loaded when first named, not with cluster.util: their machinery costs start-up time.
        return importlib.import_module(f"cluster.util.{name}")
    raise AttributeError(f"module 'cluster.util' has no attribute {name!r}")
