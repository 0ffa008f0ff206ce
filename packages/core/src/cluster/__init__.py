"""cluster: run plain Python functions as tasks across a cluster of machines.

    import cluster
    cluster.init()

    @cluster.remote
    def square(x):
        return x * x

    print(cluster.get([square.remote(i) for i in range(10)]))
"""

from cluster import exceptions
from cluster.api import (
    RemoteFunction,
    cancel,
    get,
    init,
    is_initialized,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from cluster.errors import TaskError
from cluster.hookspec import hookimpl
from cluster.object_ref import ObjectRef

__version__ = "0.1.0"

__all__ = [
    "ObjectRef",
    "RemoteFunction",
    "TaskError",
    "__version__",
    "cancel",
    "exceptions",
    "get",
    "hookimpl",
    "init",
    "is_initialized",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "wait",
]
