"""cluster: run plain Python functions as tasks across a cluster of machines.

    import cluster
    cluster.init()

    @cluster.remote
    def square(x):
        return x * x

    print(cluster.get([square.remote(i) for i in range(10)]))
"""

from typing import Any

from cluster import actor, exceptions
from cluster.api import (
    ActorClass,
    ActorHandle,
    RemoteFunction,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    method,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from cluster.api.generators import DynamicObjectRefGenerator, ObjectRefGenerator
from cluster.errors import TaskError
from cluster.hookspec import hookimpl
from cluster.objects.refs import ObjectRef

ObjectID = ObjectRef  # Ray's old name, still imported by Ray programs

__version__ = "0.1.0"

__all__ = [
    "ActorClass",
    "ActorHandle",
    "DynamicObjectRefGenerator",
    "ObjectID",
    "ObjectRef",
    "ObjectRefGenerator",
    "RemoteFunction",
    "TaskError",
    "__version__",
    "actor",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "hookimpl",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "util",
    "wait",
]


def __getattr__(name: str) -> Any:
    """``cluster.util`` (Ray's ``ray.util``), loaded the first time it is named."""
    if name == "util":
        # Not at the top: `import cluster` stays as quick as it was for programs without it.
        import cluster.util as util

        return util
    raise AttributeError(f"module 'cluster' has no attribute {name!r}")
