"""``cluster.util``: Ray's ``ray.util`` helpers, built on the public API.

- :class:`ActorPool` (:mod:`.actor_pool`): spread calls over a fixed set of actors;
- :mod:`.queue`: ``Queue``, a FIFO held by an actor, with ``Empty`` and ``Full``;
- :mod:`.multiprocessing`: ``Pool``, ``multiprocessing.Pool`` on the cluster's actors;
- :mod:`.joblib`: ``register_ray()``, a joblib backend that runs on the cluster.

The three submodules load on first use (``cluster.util.queue`` works after ``import
cluster``), so neither asyncio queues, multiprocessing nor joblib cost anything to a program
that never touches them. A room of the top layer: it may import anything in core.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from cluster.util.actor_pool import ActorPool

_SUBMODULES = ("queue", "multiprocessing", "joblib")

__all__ = ["ActorPool", *_SUBMODULES]


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        # Loaded when first named, not with cluster.util: their machinery costs start-up time.
        return importlib.import_module(f"cluster.util.{name}")
    raise AttributeError(f"module 'cluster.util' has no attribute {name!r}")
