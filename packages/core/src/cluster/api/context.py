"""``cluster.get_runtime_context()``: where and as what this code runs (Ray's RuntimeContext).

Owns: :class:`RuntimeContext`. Imports: lifecycle (the current runtime), the leaf ``context``.
"""

from __future__ import annotations

import os
from typing import Any

from cluster.api.lifecycle import current_runtime
from cluster.context import current_task_id


class RuntimeContext:
    """What this process and the code running now are: ids in hex, as Ray gives them.

    In a driver there is no current task or actor (``None``); in a task or actor call, the ids
    are those of the call running in this thread or coroutine.
    """

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime

    def get_node_id(self) -> str:
        """The id of the node this process runs on (``cluster.nodes()`` lists it)."""
        return str(self._runtime.node_id)

    def get_task_id(self) -> str | None:
        """The id of the task (or actor call) running now; None in a driver."""
        task_id = current_task_id.get()
        return task_id.hex() if task_id is not None else None

    def get_actor_id(self) -> str | None:
        """The id of the actor this code runs in; None outside an actor."""
        executor = getattr(self._runtime, "executor", None)
        actor_id = getattr(executor, "actor_id", None) if executor is not None else None
        return actor_id.hex() if actor_id is not None else None

    def get_worker_id(self) -> str:
        """The id of this worker process (a driver: its process id, in hex)."""
        executor = getattr(self._runtime, "executor", None)
        if executor is not None:
            return str(executor.worker_id)
        return f"{os.getpid():016x}"

    @property
    def namespace(self) -> str:
        """The namespace of the actor names this process creates and looks up."""
        return str(self._runtime.namespace)

    def get(self) -> dict[str, Any]:
        """All of the above, as a dict (Ray's ``RuntimeContext.get()``)."""
        return {"node_id": self.get_node_id(), "task_id": self.get_task_id(), "actor_id": self.get_actor_id(),
                "worker_id": self.get_worker_id(), "namespace": self.namespace}


def get_runtime_context() -> RuntimeContext:
    """The runtime context of this process (after ``cluster.init()``, or in a task or actor)."""
    return RuntimeContext(current_runtime())
