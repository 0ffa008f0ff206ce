"""Connecting a process to a cluster: ``init``, ``shutdown``, ``is_initialized``, ``nodes``.

Owns: the process's current runtime (a driver's, a worker's, or a plugin's client runtime)
and the local cluster ``init()`` may start. Imports: owner (lazily), wire.streams, leaves.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import subprocess
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster import session
from cluster.errors import (
    ClusterConnectionError,
    ClusterError,
    ConfigError,
    NotInitializedError,
)
from cluster.launch import start_daemon
from cluster.plugins import get_plugin_manager
from cluster.resources import parse_size, resources_arg
from cluster.runtime_env import check as check_runtime_env
from cluster.wire.streams import parse_address

if TYPE_CHECKING:
    from cluster.contracts import DriverRuntime

_lock = threading.RLock()
_runtime: Any = None
_local_cluster: subprocess.Popen | None = None
_local_session: Path | None = None


# ------------------------------------------------------------------------------ init/shutdown


def init(
    address: str | None = None,
    *,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    resources: Mapping[str, float] | None = None,
    object_store_memory: int | str | None = None,
    object_spilling: bool = True,
    object_store: str | None = None,
    token: str | None = None,
    ignore_reinit_error: bool = False,
    log_to_driver: bool = True,
    labels: Mapping[str, str] | None = None,
    namespace: str | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    dashboard_host: str = "127.0.0.1",
    dashboard_port: int | None = None,
    include_dashboard: bool | None = None,
    local_mode: bool = False,
    job_config: Any = None,
    configure_logging: bool = True,
    logging_level: int | str = logging.INFO,
    logging_format: str | None = None,
    logging_config: Any = None,
    storage: str | None = None,
    **ray_private: Any,
) -> dict[str, Any]:
    """Connect this process to a cluster, starting a local one if there is none.

    ``address``:
      - ``None``: ``$CLUSTER_ADDRESS``, else the cluster last started on this machine with
        ``cluster start``, else a new local cluster that goes away when this process exits;
      - ``"auto"``: like None, but raise instead of starting a local cluster;
      - ``"HOST:PORT"``: that cluster's head.

    ``num_cpus``, ``num_gpus``, ``resources`` and ``object_store_memory`` (bytes, or a string
    like ``"2GB"``) size a new local cluster (default: all CPUs, 30% of RAM for objects);
    ``object_spilling=False`` makes its full store raise instead of spilling to disk, and
    ``object_store="memory"`` keeps each process's objects in its own memory instead of a
    shared-memory store per node (for machines whose /dev/shm is tiny; no zero-copy sharing).
    ``token`` is the cluster token; by default it is found in ``$CLUSTER_TOKEN`` or in the
    session directory of a cluster started on this machine.

    The rest are Ray's ``ray.init`` parameters: ``labels`` (of a new local cluster's node),
    ``namespace`` (of the actor names this driver creates and looks up; default "default"),
    ``dashboard_host``/``dashboard_port`` (a new local cluster's HTTP API), ``logging_level``
    (of this process's cluster logs). ``include_dashboard``, ``job_config``,
    ``configure_logging``, ``logging_format``, ``logging_config``, ``storage`` and Ray's private
    ``_``-options (``_node_ip_address``, ``_temp_dir``, ``_system_config``, ...) are accepted and
    have no effect here; ``local_mode=True`` warns that tasks still run in worker processes.
    docs/ray-compatibility.md says what each does.
    """
    try:
        unknown = sorted(set(ray_private) - RAY_PRIVATE_INIT_OPTIONS)
        if unknown:
            raise ConfigError(f"unknown keyword argument(s) {unknown} for cluster.init(); Ray's private "
                              f"options it accepts (and ignores) are {sorted(RAY_PRIVATE_INIT_OPTIONS)}")
        checked_env = check_runtime_env(runtime_env, "cluster.init(runtime_env=...)")
        if namespace is not None and (not isinstance(namespace, str) or not namespace or "/" in namespace):
            raise ConfigError(f"namespace must be a non-empty string without '/', got {namespace!r}")
        if local_mode:
            warnings.warn("cluster.init(local_mode=True) is accepted but tasks still run in worker "
                          "processes of a local cluster (Ray deprecated local mode too)", stacklevel=2)
        _set_logging_level(logging_level)
        local = {"labels": labels, "dashboard_host": dashboard_host, "dashboard_port": dashboard_port,
                 "runtime_env": checked_env}
        return _init(address, num_cpus, num_gpus, resources, object_store_memory, object_spilling,
                     object_store, token, ignore_reinit_error, log_to_driver, namespace, local)
    except ClusterError as exc:
        # The message says what went wrong and what to do; our frames would only be noise.
        raise exc.with_traceback(None) from None


def _init(
    address: str | None,
    num_cpus: float | None,
    num_gpus: float | None,
    resources: Mapping[str, float] | None,
    object_store_memory: int | str | None,
    object_spilling: bool,
    object_store: str | None,
    token: str | None,
    ignore_reinit_error: bool,
    log_to_driver: bool,
    namespace: str | None = None,
    local: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    global _runtime, _local_cluster, _local_session
    local = local or {}
    with _lock:
        if _runtime is not None:
            if ignore_reinit_error:
                return _context()
            raise ClusterError(
                "cluster.init() was already called in this process; call cluster.shutdown() "
                "first, or pass ignore_reinit_error=True"
            )
        if address is not None and "://" in address:
            if local.get("runtime_env"):
                raise ConfigError("cluster.init(runtime_env=...) is not supported in remote client mode "
                                  f"({address}) yet: connect with the head's HOST:PORT instead")
            return _connect_by_scheme(address, token, num_cpus, num_gpus, resources, object_store_memory,
                                      object_store, log_to_driver)
        resolved, token = _resolve_address(address, token)
        sizing = (num_cpus is not None or num_gpus is not None or resources or object_store_memory or object_store
                  or local.get("labels") or local.get("dashboard_port") is not None)
        if object_store not in (None, "shared", "memory"):
            raise ConfigError(f'object_store must be "shared" or "memory", got {object_store!r}')
        if resolved is not None and sizing:
            raise ConfigError(
                "num_cpus, num_gpus, resources, labels, object_store_memory, object_store and "
                "dashboard_port set up a new local cluster; "
                "they can't be given "
                f"when connecting to an existing one ({resolved})"
            )
        if resolved is None:
            resources_json = resources_arg(num_cpus, num_gpus, resources)  # validate first
            store_args = []
            if object_store_memory is not None:
                store_args = ["--object-store-memory", str(parse_size(object_store_memory, "object_store_memory"))]
            _local_session = session.new_session_dir()
            token = session.new_token()
            session.write_token(_local_session, token)
            args = [
                "--head",
                "--session-dir", str(_local_session),
                "--resources", resources_json,
                "--exit-with-stdin",
                *store_args,
            ]
            if object_spilling:
                args += ["--spill-dir", str(_local_session / "spill")]
            if object_store:
                args += ["--object-store", object_store]
            if local.get("labels"):
                args += ["--labels", json.dumps(dict(local["labels"]))]
            args += ["--dashboard-host", local.get("dashboard_host") or "127.0.0.1"]
            if local.get("dashboard_port") is not None:
                args += ["--dashboard-port", str(local["dashboard_port"])]
            starting = start_daemon(args, token, _local_session, keep_stdin=True)
            _local_cluster = starting.proc
            # Import the runtime while the daemon boots: the two overlap on a multi-core machine.
            from cluster.owner.runtime import Runtime, print_worker_output  # (start-up cost)

            try:
                _, info = starting.wait_ready()
            except BaseException:
                _stop_local_cluster()
                raise
            resolved = info["address"]
        # Loaded here, not with `import cluster`: they cost start-up time a script that never
        # calls init() should not pay.
        from cluster import log as cluster_log
        from cluster.owner.runtime import Runtime, print_worker_output

        if _local_session is not None:
            cluster_log.configure(_local_session / "logs", f"driver-{os.getpid()}")
        else:
            cluster_log.configure(None, "driver")
        runtime = Runtime(token=token, head_address=resolved, node=None, role="driver")
        if namespace:
            runtime.namespace = namespace
        if log_to_driver:
            runtime.log_sink = print_worker_output
        try:
            runtime.start()
            if local.get("runtime_env"):  # the job's default env: uploaded now, as Ray does
                runtime.runtime_env = runtime.resolve_env(local["runtime_env"])
        except BaseException:
            runtime.stop()
            _stop_local_cluster()
            raise
        _runtime = runtime
        atexit.register(shutdown)
        return _context()


# Ray's private ray.init options (``**kwargs`` there): accepted, and without effect here.
RAY_PRIVATE_INIT_OPTIONS = frozenset({
    "_node_ip_address", "_temp_dir", "_system_config", "_enable_object_reconstruction", "_redis_max_memory",
    "_plasma_directory", "_node_name", "_driver_object_store_memory", "_memory", "_redis_password",
    "_java_worker_options", "_metrics_export_port", "_tracing_startup_hook", "_skip_env_hook",
    "_cluster_id", "_load_code_from_local", "_lru_evict",
})


def _set_logging_level(level: int | str) -> None:
    """Ray's ``logging_level``: how much of cluster's own logging this process shows."""
    try:
        logging.getLogger("cluster").setLevel(level)
    except (TypeError, ValueError):
        raise ConfigError(f"logging_level must be a logging level (logging.INFO, \"DEBUG\", ...), got {level!r}") from None


def _resolve_address(address: str | None, token: str | None) -> tuple[str | None, str]:
    """(head address or None for "start a local cluster", token)."""
    token = token or os.environ.get("CLUSTER_TOKEN")
    if address not in (None, "auto"):
        if not isinstance(address, str):
            raise ConfigError(f"address must be a string like 'HOST:PORT', got {type(address).__name__}")
        parse_address(address)
        if token is None:
            current = session.read_current()
            if current is not None and current["address"] == address:
                token = session.read_token(current["token_file"])
            else:
                token = _token_of_local_head(address)
        if token is None:
            raise ConfigError(
                f"no token for the cluster at {address}: pass token=..., or set CLUSTER_TOKEN "
                "(`cluster start --head` printed it, and it is in the head's session directory)"
            )
        return address, token
    env_address = os.environ.get("CLUSTER_ADDRESS")
    if env_address:
        return _resolve_address(env_address, token)
    current = session.read_current()
    if current is not None:
        return current["address"], token or session.read_token(current["token_file"])
    if address == "auto":
        raise ClusterConnectionError(
            "no running cluster found on this machine (init('auto') looks at $CLUSTER_ADDRESS and "
            "the cluster started with `cluster start`). Start one with `cluster start --head`, or "
            "call cluster.init() with no address to start a local one."
        )
    return None, token or ""


def _token_of_local_head(address: str) -> str | None:
    for record in session.list_daemons():
        if record.get("address") == address and record.get("token_file"):
            return session.read_token(record["token_file"])
    return None


def _connect_by_scheme(address: str, token: str | None, *sizing: Any) -> dict[str, Any]:
    """``scheme://...``: a plugin connects (cluster-client: ``cluster://HOST:PORT``)."""
    global _runtime
    *sizes, log_to_driver = sizing
    if any(sizes):
        raise ConfigError(f"num_cpus, num_gpus, resources, object_store_memory and object_store set up a "
                          f"new local cluster; they can't be given when connecting to {address}")
    runtime = get_plugin_manager().hook.cluster_connect(address=address, token=token or os.environ.get("CLUSTER_TOKEN"))
    if runtime is None:
        scheme = address.split("://", 1)[0]
        hint = " (pip install cluster-client)" if scheme == "cluster" else ""
        raise ConfigError(f"no installed plugin connects to {scheme}:// addresses{hint}; "
                          "a plain HOST:PORT connects directly")
    if not log_to_driver:
        runtime.log_sink = None
    _runtime = runtime
    atexit.register(shutdown)
    return _context()


def _context() -> dict[str, Any]:
    rt = _runtime
    return {"address": rt.head_address, "node_id": rt.node_id, "session_dir": rt.session_dir}


def shutdown() -> None:
    """Disconnect from the cluster; stop the local cluster if ``init`` started one."""
    global _runtime
    with _lock:
        runtime, _runtime = _runtime, None
        if runtime is not None:
            runtime.stop()
        _stop_local_cluster()


def _stop_local_cluster() -> None:
    global _local_cluster, _local_session
    proc, _local_cluster = _local_cluster, None
    _local_session = None
    if proc is None:
        return
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def is_initialized() -> bool:
    return _runtime is not None


def current_runtime() -> DriverRuntime:
    runtime = _runtime
    if runtime is None:
        raise NotInitializedError("call cluster.init() before using the cluster")
    return runtime


def set_worker_runtime(runtime: Any) -> None:
    """Used by worker processes: tasks that submit tasks use the worker's own runtime."""
    global _runtime
    _runtime = runtime


def nodes() -> list[dict[str, Any]]:
    """The cluster's nodes, live and dead (Ray's ``ray.nodes()``): each with Ray's keys
    (``NodeID``, ``Alive``, ``NodeManagerAddress``, ``NodeManagerHostname``,
    ``NodeManagerPort``, ``Resources``, ``Labels``, ...) and ours (``node_id``, ``address``,
    ``resources`` and ``available``, ``state``, ...)."""
    return [_with_ray_keys(node) for node in current_runtime().list_nodes()]


def cluster_resources() -> dict[str, float]:
    """The total resources of the live nodes (Ray's ``ray.cluster_resources()``), with Ray's
    ``node:<ip>`` and ``object_store_memory`` entries."""
    return _summed("resources")


def available_resources() -> dict[str, float]:
    """What the live nodes have free now, as their last heartbeats said (Ray's
    ``ray.available_resources()``): a resource none has free is left out, as Ray does."""
    return {name: amount for name, amount in _summed("available").items() if amount > 0}


def _ray_resources(node: dict[str, Any], which: str) -> dict[str, float]:
    """A node's ``resources`` or ``available`` as Ray spells them: no zeros, its store's
    bytes as ``object_store_memory``, and ``node:<ip>`` (``node:__internal_head__`` on the head)."""
    out = {name: float(amount) for name, amount in node.get(which, {}).items() if amount}
    capacity = float(node.get("store_capacity") or 0)
    if capacity:
        used = float((node.get("store") or {}).get("used", 0)) if which == "available" else 0.0
        out["object_store_memory"] = max(capacity - used, 0.0)
    out[f"node:{str(node.get('address', '')).rpartition(':')[0]}"] = 1.0
    if node.get("is_head"):
        out["node:__internal_head__"] = 1.0
    return out


def _with_ray_keys(node: dict[str, Any]) -> dict[str, Any]:
    host, _, port = str(node.get("address", "")).rpartition(":")
    alive = node.get("state") == "alive"
    return {
        **node,
        "NodeID": node.get("node_id"),
        "Alive": alive,
        "alive": alive,
        "NodeManagerAddress": host,
        "NodeManagerHostname": node.get("hostname", ""),
        "NodeManagerPort": int(port) if port.isdigit() else 0,
        "NodeName": host,
        "ObjectStoreSocketName": node.get("store_path", ""),
        "Resources": _ray_resources(node, "resources"),
        "Labels": {"ray.io/node-id": node.get("node_id"), **node.get("labels", {})},
    }


def _summed(which: str) -> dict[str, float]:
    total: dict[str, float] = {}
    for node in current_runtime().list_nodes():
        if node.get("state") == "alive":
            for name, amount in _ray_resources(node, which).items():
                total[name] = total.get(name, 0.0) + amount
    return total
