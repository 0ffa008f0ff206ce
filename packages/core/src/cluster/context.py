"""What runs in this thread or coroutine right now: the task's id (set by the worker's executor).

A leaf (no imports of ours): the worker sets it around each task and actor call, on the main
thread, in an actor's thread pool and in its asyncio tasks; ``cluster.get_runtime_context()``
reads it.
"""

from __future__ import annotations

import contextvars

current_task_id: contextvars.ContextVar[bytes | None] = contextvars.ContextVar("cluster_task_id", default=None)
# The namespace of the caller of the task running now ("": the default), for the actor names it uses.
current_namespace: contextvars.ContextVar[str] = contextvars.ContextVar("cluster_namespace", default="")


class ActorExitRequested(BaseException):
    """Raised by ``cluster.actor.exit_actor()`` inside an actor method; the worker ends the actor.
    A BaseException, so that the method's ``except Exception`` does not swallow it."""
