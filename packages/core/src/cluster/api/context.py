"""``cluster.get_runtime_context()``: where and as what this code runs (Ray's RuntimeContext).

Owns: :class:`RuntimeContext`. Imports: lifecycle (the current runtime), actors (the handle of
the current actor), the leaf ``context``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cluster.api.actors import ActorHandle, _method_names
from cluster.api.lifecycle import current_runtime
from cluster.context import current_task_id


class RuntimeContext:
    """What this process and the code running now are: ids in hex, as Ray gives them.

    In a driver there is no current task or actor (``None``); in a task or actor call, the ids
    are those of the call running in this thread or coroutine.
    """

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime

    @property
    def _executor(self) -> Any:
        return getattr(self._runtime, "executor", None)

    def _running_spec(self) -> Any:
        task_id = current_task_id.get()
        executor = self._executor
        return executor.spec_of(task_id) if executor is not None and task_id is not None else None

    def get_job_id(self) -> str:
        """The id of the job (the driver) this code runs for, in hex: 4 bytes, little-endian,
        counted from 1 by the head (``"01000000"`` for the cluster's first driver), as Ray's."""
        job_id = getattr(self._runtime, "job_id", None)
        return job_id().hex() if job_id is not None else bytes(4).hex()

    def get_node_id(self) -> str:
        """The id of the node this process runs on (``cluster.nodes()`` lists it)."""
        return str(self._runtime.node_id)

    def get_task_id(self) -> str | None:
        """The id of the task (or actor call) running now; None in a driver."""
        task_id = current_task_id.get()
        return task_id.hex() if task_id is not None else None

    def get_actor_id(self) -> str | None:
        """The id of the actor this code runs in; None outside an actor."""
        executor = self._executor
        actor_id = getattr(executor, "actor_id", None) if executor is not None else None
        return actor_id.hex() if actor_id is not None else None

    def get_worker_id(self) -> str:
        """The id of this worker process (a driver: its process id, in hex)."""
        executor = self._executor
        if executor is not None:
            return str(executor.worker_id)
        return f"{os.getpid():016x}"

    def get_task_name(self) -> str | None:
        """The name of the task or actor call running now (its ``name=`` option, the function's
        name, or ``Class.method``); None in a driver."""
        spec = self._running_spec()
        return None if spec is None else str(spec.name)

    def get_task_function_name(self) -> str | None:
        """The qualified name of the function (or actor method) running now, as
        ``module.function`` or ``module.Class.method``; None in a driver."""
        spec = self._running_spec()
        return None if spec is None else str(self._executor.function_name(spec))

    def get_assigned_resources(self) -> dict[str, float]:
        """The resources the task (or actor) running now holds, as ``{"CPU": 1.0}`` (a task's by
        default) or ``{}`` (an actor's by default, or a driver)."""
        executor = self._executor
        return executor.assigned_resources() if executor is not None else {}

    def get_accelerator_ids(self) -> dict[str, list[str]]:
        """The ids of the accelerators the task or actor running now was given, by kind
        (``{"GPU": ["0"]}``); in a driver, none."""
        executor = self._executor
        return {"GPU": [str(gpu) for gpu in executor.gpu_ids()] if executor is not None else []}

    def is_canceled(self) -> bool:
        """Whether the task or (sync or threaded) actor call running now was cancelled with
        ``cluster.cancel``: a running actor call is not interrupted, so it polls this to stop
        early (as Ray). RuntimeError in a driver and in async actors (their calls see the
        cancel as ``asyncio.CancelledError`` at their next ``await``)."""
        task_id = current_task_id.get()
        executor = self._executor
        if task_id is None or executor is None:
            raise RuntimeError("is_canceled() is only meaningful inside a task or an actor call, not in a driver")
        if executor.is_async_actor:
            raise RuntimeError("This method is not supported in an async actor. A cancelled call of an async actor "
                               "gets asyncio.CancelledError at its next await: catch that instead.")
        return bool(executor.is_canceled(task_id))

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """Whether this actor was restarted (``max_restarts``) after its first instance died."""
        executor = self._executor
        if executor is None or executor.actor_id is None:
            raise RuntimeError("was_current_actor_reconstructed is only meaningful inside an actor")
        return bool(executor.restarted)

    @property
    def current_actor(self) -> ActorHandle:
        """The handle of the actor this code runs in (inside an actor only), to pass to tasks or
        other actors. It does not keep an unnamed actor alive by itself: the handles its creator
        gave out do that."""
        executor = self._executor
        if executor is None or executor.actor_id is None:
            raise RuntimeError("current_actor is only available inside an actor")
        actor_id, class_name, owner, name_key = executor.actor_handle
        return ActorHandle(actor_id, class_name, _method_names(type(executor.actor)), owner, name_key)

    def get_runtime_env_string(self) -> str:
        """The runtime env this process runs in, as JSON (``"{}"``: none)."""
        return json.dumps(getattr(self._runtime, "runtime_env", None) or {})

    @property
    def runtime_env(self) -> dict[str, Any]:
        """The runtime env this process runs in, as a dict."""
        return dict(getattr(self._runtime, "runtime_env", None) or {})

    @property
    def namespace(self) -> str:
        """The namespace of the actor names this process creates and looks up."""
        return str(self._runtime.namespace)

    def get(self) -> dict[str, Any]:
        """All of the above, as a dict (Ray's ``RuntimeContext.get()``)."""
        return {"job_id": self.get_job_id(), "node_id": self.get_node_id(), "task_id": self.get_task_id(),
                "actor_id": self.get_actor_id(), "worker_id": self.get_worker_id(), "namespace": self.namespace}


def get_runtime_context() -> RuntimeContext:
    """The runtime context of this process (after ``cluster.init()``, or in a task or actor)."""
    return RuntimeContext(current_runtime())


def get_gpu_ids() -> list[int] | list[str]:
    """Ray's ``ray.get_gpu_ids()``: the GPUs the task or actor running now was given (what its
    CUDA_VISIBLE_DEVICES names), as ints, or as the names the node's own CUDA_VISIBLE_DEVICES
    gave them; in a driver, none."""
    executor = get_runtime_context()._executor
    return executor.gpu_ids() if executor is not None else []
