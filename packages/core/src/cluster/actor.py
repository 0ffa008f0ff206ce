"""``cluster.actor``: the actor names where Ray users import them (``ray.actor``).

The classes live in :mod:`cluster.api.actors`; this module only re-exports them.
"""

from cluster.api.actors import ActorClass, ActorHandle, ActorMethod, exit_actor, method

__all__ = ["ActorClass", "ActorHandle", "ActorMethod", "exit_actor", "method"]
