"""Every error cluster raises, with messages that say what went wrong and what to do.

The public spelling is ``cluster.exceptions`` (Ray's), which re-exports this module.
"""

from __future__ import annotations

from typing import Any


class ClusterError(Exception):
    """Base class of every error raised by cluster."""


# --- connecting and configuring ---------------------------------------------------------


class ConfigError(ClusterError, ValueError):
    """A setting, option or argument is invalid."""


class ClusterConnectionError(ClusterError, ConnectionError):
    """A cluster address could not be reached, or a peer went away."""


class AuthenticationError(ClusterConnectionError):
    """A peer could not prove it holds the cluster token, or we could not."""


class ProtocolVersionError(ClusterConnectionError):
    """The two ends of a connection speak incompatible protocol versions."""


class ProtocolError(ClusterConnectionError):
    """A peer sent something that is not a valid cluster message."""


class HeadUnreachableError(ClusterConnectionError):
    """The head stayed unreachable for as long as a call that needs it may wait
    (``$CLUSTER_HEAD_WAIT_S``); the message names the head and how to bring it back."""


class RemoteCallError(ClusterError):
    """A daemon answered a request with an error."""

    kind: str = "error"  # the peer's short name for what went wrong, e.g. "lost"


# --- tasks and objects -----------------------------------------------------------------


class GetTimeoutError(ClusterError, TimeoutError):
    """``cluster.get`` ran out of time before the objects were ready."""


class TaskCancelledError(ClusterError):
    """The task was cancelled with ``cluster.cancel`` before it finished."""

    def __init__(self, task_name: str = "task") -> None:
        super().__init__(f"{task_name} was cancelled before it finished")
        self.task_name = task_name

    def __reduce__(self) -> Any:
        return (type(self), (self.task_name,))


class WorkerCrashedError(ClusterError):
    """The worker running a task died, and the task had no retries left."""


class NodeDiedError(WorkerCrashedError):
    """The node running a task died, and the task had no retries left."""


class ActorDiedError(ClusterError):
    """The actor is dead (killed, its process or node died, or its constructor failed) and
    the call could not run; the message says why."""


class ObjectLostError(ClusterError):
    """An object's value is gone from every store and cannot be rebuilt; the message names the
    object, where it lived and why it could not be rebuilt."""


class OwnerDiedError(ObjectLostError):
    """The process that owned an object (the one that created its ref) died: an object's
    metadata lives with its owner, so the object is gone with it."""


class ObjectStoreFullError(ClusterError, MemoryError):
    """The node's shared-memory store has no room for an object."""


class NotInitializedError(ClusterError, RuntimeError):
    """A cluster API was called before ``cluster.init()``."""


class TaskError(ClusterError):
    """A task raised; carries the remote traceback.

    Raised from ``cluster.get``. When the original exception type allows it, the raised
    object is also an instance of that type, so ``except ValueError`` still catches a
    ``ValueError`` raised inside a task.
    """

    def __init__(self, function_name: str, traceback_str: str, cause: BaseException | None) -> None:
        super().__init__(function_name, traceback_str)
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause

    def __str__(self) -> str:
        return f"task {self.function_name} raised:\n\n{self.traceback_str.rstrip()}"

    def __reduce__(self) -> Any:
        return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause))

    def as_instanceof_cause(self) -> TaskError:
        """Return a TaskError that is also an instance of the cause's type, where possible."""
        cause_type = type(self.cause)
        if self.cause is None or isinstance(self, cause_type) or not _subclassable(cause_type):
            return self
        try:
            dual = _dual_class(cause_type)
            err = dual.__new__(dual)
            err.args = self.cause.args
            err.function_name = self.function_name
            err.traceback_str = self.traceback_str
            err.cause = self.cause
            err.__dict__.update({k: v for k, v in vars(self.cause).items() if k not in err.__dict__})
            return err
        except Exception:
            return self


_DUAL_CLASSES: dict[type, type] = {}


def _subclassable(cls: type) -> bool:
    return issubclass(cls, Exception) and not getattr(cls, "__final__", False)


def _dual_class(cause_type: type) -> type:
    dual = _DUAL_CLASSES.get(cause_type)
    if dual is None:

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # never called by us
            Exception.__init__(self, *args)

        dual = type(
            f"TaskError({cause_type.__name__})",
            (TaskError, cause_type),
            {"__init__": __init__, "__str__": TaskError.__str__, "__reduce__": TaskError.__reduce__},
        )
        _DUAL_CLASSES[cause_type] = dual
    return dual


def _rebuild_task_error(function_name: str, traceback_str: str, cause: Any) -> TaskError:
    return TaskError(function_name, traceback_str, cause).as_instanceof_cause()


__all__ = [
    "ActorDiedError",
    "AuthenticationError",
    "ClusterConnectionError",
    "ClusterError",
    "ConfigError",
    "GetTimeoutError",
    "HeadUnreachableError",
    "NodeDiedError",
    "NotInitializedError",
    "ObjectLostError",
    "ObjectStoreFullError",
    "OwnerDiedError",
    "ProtocolError",
    "ProtocolVersionError",
    "RemoteCallError",
    "TaskCancelledError",
    "TaskError",
    "WorkerCrashedError",
]
