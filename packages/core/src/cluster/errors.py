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


class RayActorError(ClusterError):
    """Ray's base of the errors of a call an actor could not finish (``ActorDiedError``,
    ``ActorUnavailableError``)."""


class ActorDiedError(RayActorError):
    """The actor is dead (killed, its process or node died, or its constructor failed) and
    the call could not run; the message says why."""


class ActorUnavailableError(RayActorError):
    """The actor cannot be reached now but may be later (Ray's name; we raise ActorDiedError
    or wait for a restart instead)."""


class ActorUnschedulableError(ClusterError):
    """No node can ever place the actor."""


class TaskUnschedulableError(ClusterError):
    """No node can ever place the task."""


class PendingCallsLimitExceeded(ClusterError):
    """An actor handle has ``max_pending_calls`` calls unfinished already."""
class RuntimeEnvSetupError(ClusterError):
    """A task's or actor's runtime env could not be set up on its node (a requirement pip or
    uv could not install, a package that would not unpack, the setup timeout); the message
    holds the installer's own last lines and where its whole log is. Raised by ``get`` on
    the task's results, or on the calls of the actor."""


class ObjectLostError(ClusterError):
    """An object's value is gone from every store and cannot be rebuilt; the message names the
    object, where it lived and why it could not be rebuilt."""


class OwnerDiedError(ObjectLostError):
    """The process that owned an object (the one that created its ref) died: an object's
    metadata lives with its owner, so the object is gone with it."""


class ObjectFetchTimedOutError(ObjectLostError):
    """No copy of the object could be fetched in time (Ray's name)."""


class ObjectReconstructionFailedError(ObjectLostError):
    """The object was lost and running its task again failed (Ray's name)."""


class ObjectReconstructionFailedMaxAttemptsExceededError(ObjectLostError):
    """The object was lost and its task has no retries left to rebuild it (Ray's name)."""


class ObjectReconstructionFailedLineageEvictedError(ObjectLostError):
    """The object was lost and how to rebuild it was no longer kept (Ray's name)."""


class ReferenceCountingAssertionError(ObjectLostError, AssertionError):
    """An object was read after its owner freed it (Ray's name)."""


class ObjectStoreFullError(ClusterError, MemoryError):
    """The node's shared-memory store has no room for an object."""


class OutOfDiskError(ClusterError):
    """The node's disk is full (Ray's name)."""


class OutOfMemoryError(ClusterError):
    """The node ran out of memory, and the task's worker was killed (Ray's name)."""


class LocalRayletDiedError(ClusterError):
    """The node daemon of the task's worker died (Ray's name: the raylet)."""


class RaySystemError(ClusterError):
    """Something in the system failed, not in the user's code (Ray's name)."""


class CrossLanguageError(ClusterError):
    """A call across languages failed (Ray's name; everything here is Python)."""


class AsyncioActorExit(ClusterError):
    """Raised inside an async actor by ``exit_actor()`` (Ray's name)."""


class PlasmaObjectNotAvailable(ClusterError):
    """An object was not in the store when asked for (Ray's name)."""


class UnserializableException(ClusterError):
    """A task raised an exception that could not be pickled; this carries its text."""


class TaskPlacementGroupRemoved(ClusterError):
    """The task's placement group was removed."""


class ActorPlacementGroupRemoved(ClusterError):
    """The actor's placement group was removed."""


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
        return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause, _plain(type(self))))

    def as_instanceof_cause(self) -> TaskError:
        """Return a TaskError that is also an instance of the cause's type, where possible."""
        cause_type = type(self.cause)
        if self.cause is None or isinstance(self, cause_type) or not _subclassable(cause_type):
            return self
        try:
            dual = _dual_class(_plain(type(self)), cause_type)
            err = dual.__new__(dual)
            err.args = self.cause.args
            err.function_name = self.function_name
            err.traceback_str = self.traceback_str
            err.cause = self.cause
            err.__dict__.update({k: v for k, v in vars(self.cause).items() if k not in err.__dict__})
            return err
        except Exception:
            return self


class ActorCreationError(TaskError, ActorDiedError):
    """An actor's constructor raised: every call of the actor fails with this. It is an
    ActorDiedError (as Ray raises for an actor whose creation task failed) and a TaskError,
    so also an instance of the constructor's exception type where possible (``except
    ValueError`` catches it), with the constructor's traceback."""

    def __str__(self) -> str:
        return f"the actor died because its constructor {self.function_name} raised:\n\n{self.traceback_str.rstrip()}"


_DUAL_CLASSES: dict[tuple[type, type], type] = {}


def _subclassable(cls: type) -> bool:
    return issubclass(cls, Exception) and not getattr(cls, "__final__", False)


def _plain(cls: type) -> type:
    """The TaskError class a dual class was made from (or ``cls`` itself)."""
    plain: type = cls.__dict__.get("_plain_class", cls)
    return plain


def _dual_class(base: type, cause_type: type) -> type:
    dual = _DUAL_CLASSES.get((base, cause_type))
    if dual is None:

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # never called by us
            Exception.__init__(self, *args)

        dual = type(
            f"{base.__name__}({cause_type.__name__})",
            (base, cause_type),
            {"__init__": __init__, "__str__": base.__str__, "__reduce__": TaskError.__reduce__,
             "_plain_class": base},
        )
        _DUAL_CLASSES[(base, cause_type)] = dual
    return dual


RayError = ClusterError  # Ray's names of the base class and of a task's error
RayTaskError = TaskError


def _rebuild_task_error(function_name: str, traceback_str: str, cause: Any, cls: type = TaskError) -> TaskError:
    error: TaskError = cls(function_name, traceback_str, cause)
    return error.as_instanceof_cause()


__all__ = [
    "ActorCreationError",
    "ActorDiedError",
    "ActorPlacementGroupRemoved",
    "ActorUnavailableError",
    "ActorUnschedulableError",
    "AsyncioActorExit",
    "AuthenticationError",
    "ClusterConnectionError",
    "ClusterError",
    "ConfigError",
    "CrossLanguageError",
    "GetTimeoutError",
    "HeadUnreachableError",
    "LocalRayletDiedError",
    "NodeDiedError",
    "NotInitializedError",
    "ObjectFetchTimedOutError",
    "ObjectLostError",
    "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedLineageEvictedError",
    "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectStoreFullError",
    "OutOfDiskError",
    "OutOfMemoryError",
    "OwnerDiedError",
    "PendingCallsLimitExceeded",
    "PlasmaObjectNotAvailable",
    "ProtocolError",
    "ProtocolVersionError",
    "RayActorError",
    "RayError",
    "RaySystemError",
    "RayTaskError",
    "ReferenceCountingAssertionError",
    "RemoteCallError",
    "RuntimeEnvSetupError",
    "TaskCancelledError",
    "TaskError",
    "TaskPlacementGroupRemoved",
    "TaskUnschedulableError",
    "UnserializableException",
    "WorkerCrashedError",
]
