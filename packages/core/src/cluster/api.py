"""The public API: init, shutdown, remote, get, put, wait, cancel (Ray's names and semantics)."""

from __future__ import annotations

import atexit
import functools
import inspect
import os
import pickle
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import cloudpickle

from cluster import session
from cluster import values as v
from cluster.errors import (
    ClusterConnectionError,
    ClusterError,
    ConfigError,
    NotInitializedError,
)
from cluster.object_ref import ObjectRef, collect_outgoing

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
    """
    try:
        return _init(address, num_cpus, num_gpus, resources, object_store_memory, object_spilling,
                     object_store, token, ignore_reinit_error, log_to_driver)
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
) -> dict[str, Any]:
    global _runtime, _local_cluster, _local_session
    with _lock:
        if _runtime is not None:
            if ignore_reinit_error:
                return _context()
            raise ClusterError(
                "cluster.init() was already called in this process; call cluster.shutdown() "
                "first, or pass ignore_reinit_error=True"
            )
        if address is not None and "://" in address:
            return _connect_by_scheme(address, token, num_cpus, num_gpus, resources, object_store_memory,
                                      object_store, log_to_driver)
        resolved, token = _resolve_address(address, token)
        sizing = num_cpus is not None or num_gpus is not None or resources or object_store_memory or object_store
        if object_store not in (None, "shared", "memory"):
            raise ConfigError(f'object_store must be "shared" or "memory", got {object_store!r}')
        if resolved is not None and sizing:
            raise ConfigError(
                "num_cpus, num_gpus, resources, object_store_memory and object_store set up a new "
                "local cluster; "
                "they can't be given "
                f"when connecting to an existing one ({resolved})"
            )
        if resolved is None:
            from cluster.scheduling import parse_size, resources_arg

            resources_json = resources_arg(num_cpus, num_gpus, resources)  # validate first
            store_args = []
            if object_store_memory is not None:
                store_args = ["--object-store-memory", str(parse_size(object_store_memory, "object_store_memory"))]
            _local_session = session.new_session_dir()
            token = session.new_token()
            session.write_token(_local_session, token)
            from cluster.launch import start_daemon
            from cluster.scheduling import parse_size, resources_arg

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
            starting = start_daemon(args, token, _local_session, keep_stdin=True)
            _local_cluster = starting.proc
            # Import the runtime while the daemon boots: the two overlap on a multi-core machine.
            from cluster.runtime import Runtime, print_worker_output

            try:
                _, info = starting.wait_ready()
            except BaseException:
                _stop_local_cluster()
                raise
            resolved = info["address"]
        from cluster import log as cluster_log
        from cluster.runtime import Runtime, print_worker_output

        if _local_session is not None:
            cluster_log.configure(_local_session / "logs", f"driver-{os.getpid()}")
        else:
            cluster_log.configure(None, "driver")
        runtime = Runtime(token=token, head_address=resolved, node=None, role="driver")
        if log_to_driver:
            runtime.log_sink = print_worker_output
        try:
            runtime.start()
        except BaseException:
            runtime.stop()
            _stop_local_cluster()
            raise
        _runtime = runtime
        atexit.register(shutdown)
        return _context()


def _resolve_address(address: str | None, token: str | None) -> tuple[str | None, str]:
    """(head address or None for "start a local cluster", token)."""
    token = token or os.environ.get("CLUSTER_TOKEN")
    if address not in (None, "auto"):
        if not isinstance(address, str):
            raise ConfigError(f"address must be a string like 'HOST:PORT', got {type(address).__name__}")
        from cluster.protocol import parse_address

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
    from cluster.plugins import get_plugin_manager

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


def _rt() -> Any:
    runtime = _runtime
    if runtime is None:
        raise NotInitializedError("call cluster.init() before using the cluster")
    return runtime


def _set_worker_runtime(runtime: Any) -> None:
    """Used by worker processes: tasks that submit tasks use the worker's own runtime."""
    global _runtime
    _runtime = runtime


# -------------------------------------------------------------------------------- remote


_DEFAULTS: dict[str, Any] = {
    "num_cpus": 1,
    "num_gpus": 0,
    "resources": None,
    "num_returns": 1,
    "max_retries": 3,
    "retry_exceptions": False,
    "name": None,
}


def _check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)}; known: {sorted(_DEFAULTS)}")
    for key in ("num_cpus", "num_gpus"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ConfigError(f"{key} must be a non-negative number, got {value!r}")
    res = options.get("resources")
    if res is not None:
        if not isinstance(res, Mapping):
            raise ConfigError(f"resources must be a dict of name -> amount, got {type(res).__name__}")
        for name, amount in res.items():
            if name in ("CPU", "GPU"):
                raise ConfigError(f"use num_cpus/num_gpus instead of resources={{{name!r}: ...}}")
            if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
                raise ConfigError(f"resource {name!r} must be a non-negative number, got {amount!r}")
    num_returns = options.get("num_returns")
    if num_returns is not None and (not isinstance(num_returns, int) or num_returns < 1):
        raise ConfigError(f"num_returns must be a positive integer, got {num_returns!r}")
    retries = options.get("max_retries")
    if retries is not None and (not isinstance(retries, int) or retries < -1):
        raise ConfigError(f"max_retries must be an integer >= 0 (or -1 for unlimited), got {retries!r}")
    return dict(options)


class RemoteFunction:
    """A function that runs as a task on the cluster: ``f.remote(...)`` returns ObjectRef(s)."""

    def __init__(self, function: Callable, options: Mapping[str, Any], _shared: dict | None = None) -> None:
        self._function = function
        self._options = {**_DEFAULTS, **_check_options(options)}
        self._shared = _shared if _shared is not None else {}  # the pickled function, shared by .options() copies
        opts = self._options
        shape = {"CPU": float(opts["num_cpus"]), "GPU": float(opts["num_gpus"]), **(opts["resources"] or {})}
        self._shape = tuple(sorted((k, float(x)) for k, x in shape.items() if x))
        self._name = opts["name"] or getattr(function, "__qualname__", repr(function))
        retries = opts["max_retries"]
        self._retries = 1 << 30 if retries == -1 else retries
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name} cannot be called directly; use {self._name}.remote(...)"
        )

    def options(self, **options: Any) -> RemoteFunction:
        """A copy with some options changed (``num_cpus``, ``num_returns``, ``max_retries``...)."""
        return RemoteFunction(self._function, {**self._options, **options}, self._shared)

    def _pickled(self) -> tuple[bytes, bytes]:
        from cluster.code_shipping import pack_once

        return pack_once(self._shared, self._function, f"remote function {self._name}")

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        from cluster.runtime import PendingTask

        rt = _rt()
        fid, data = self._pickled()
        payload, dep_refs, held = _pack_args(rt, args, kwargs)
        task_id = rt.new_task_id()
        num_returns = self._options["num_returns"]
        task = PendingTask(
            task_id=task_id,
            name=self._name,
            function_id=fid,
            function=data,
            args=payload,
            dep_refs=dep_refs,
            num_returns=num_returns,
            return_ids=[task_id + i.to_bytes(4, "little") for i in range(num_returns)],
            shape=self._shape,
            retries_left=self._retries,
            retry_exceptions=bool(self._options["retry_exceptions"]),
            held=held,
        )
        refs = rt.submit(task)
        return refs[0] if num_returns == 1 else refs


def _pack_args(rt: Any, args: tuple, kwargs: dict) -> tuple[bytes, list, list]:
    """Pickle the arguments: (payload, top-level refs, refs nested inside arguments)."""
    if not args and not kwargs:
        return v.EMPTY_ARGS, [], []
    dep_refs: list[ObjectRef] = []

    def mark(value: Any) -> Any:
        if type(value) is ObjectRef:
            dep_refs.append(value)
            return v.Dep(len(dep_refs) - 1)
        return value

    args = tuple(mark(a) for a in args)
    kwargs = {k: mark(x) for k, x in kwargs.items()}
    try:
        with collect_outgoing() as held:
            payload = cloudpickle.dumps((args, kwargs), protocol=5)
    except Exception as exc:
        raise TypeError(f"could not serialize the task's arguments: {exc}") from exc
    if len(payload) > v.INLINE_LIMIT:
        # Large arguments travel through the object store, like cluster.put values.
        def spill(value: Any) -> Any:
            if type(value) is v.Dep or len(pickle.dumps(value, protocol=5, buffer_callback=lambda b: None)) < 1024:
                return value
            return mark(rt.put(value))

        args = tuple(spill(a) for a in args)
        kwargs = {k: spill(x) for k, x in kwargs.items()}
        with collect_outgoing() as held:
            payload = cloudpickle.dumps((args, kwargs), protocol=5)
    return payload, dep_refs, held


def remote(*args: Any, **options: Any) -> Any:
    """Make a function a remote function, or a class an actor class: ``@cluster.remote`` or
    ``@cluster.remote(num_cpus=2)``."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("use @cluster.remote or @cluster.remote(option=value, ...)")
    # Check what functions and actors share now; the rest once we see which it decorates.
    _check_options({k: x for k, x in options.items() if k in ("num_cpus", "num_gpus", "resources")})
    return lambda fn: _make_remote(fn, options)


def _make_remote(target: Any, options: Mapping[str, Any]) -> Any:
    if inspect.isclass(target):
        from cluster.actor import ActorClass

        return ActorClass(target, options)
    if not callable(target):
        raise TypeError(f"@cluster.remote needs a function, got {type(target).__name__}")
    return RemoteFunction(target, options)


# ---------------------------------------------------------------------- get / put / wait


def get(refs: ObjectRef | Iterable[ObjectRef], *, timeout: float | None = None) -> Any:
    """The value(s) of ObjectRef(s), waiting up to ``timeout`` seconds (None: forever).

    Raises the task's error (a :class:`cluster.TaskError`, also an instance of the original
    exception's type) if it failed, and :class:`cluster.exceptions.GetTimeoutError` on timeout.
    """
    single = isinstance(refs, ObjectRef)
    ref_list = [refs] if single else _ref_list(refs, "get")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise ConfigError(f"timeout must be a non-negative number of seconds or None, got {timeout!r}")
    runtime = _rt()
    try:
        values = runtime.get(ref_list, timeout)
    except ClusterError as exc:
        # The remote traceback is in the message; our own frames would only be noise.
        raise exc.with_traceback(None) from None
    return values[0] if single else values


def put(value: Any) -> ObjectRef:
    """Store ``value`` in the cluster and return a reference to it."""
    if isinstance(value, ObjectRef):
        raise TypeError("put() of an ObjectRef is not allowed; pass the ObjectRef itself instead")
    return _rt().put(value)


def wait(
    refs: Iterable[ObjectRef], *, num_returns: int = 1, timeout: float | None = None
) -> tuple[list[ObjectRef], list[ObjectRef]]:
    """Wait until ``num_returns`` of ``refs`` are ready or ``timeout`` passes: (ready, not_ready)."""
    ref_list = _ref_list(refs, "wait")
    if len({ref._id for ref in ref_list}) != len(ref_list):
        raise ValueError("wait() got the same ObjectRef more than once")
    if not isinstance(num_returns, int) or not 0 <= num_returns <= len(ref_list):
        raise ValueError(f"num_returns must be between 0 and len(refs)={len(ref_list)}, got {num_returns!r}")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
        raise ConfigError(f"timeout must be a non-negative number of seconds or None, got {timeout!r}")
    return _rt().wait(ref_list, num_returns, timeout)


def cancel(ref: ObjectRef, *, force: bool = False) -> None:
    """Cancel the task that produces ``ref``; ``get`` then raises TaskCancelledError.

    A queued task is dropped; a running one is interrupted (``force=True`` kills its worker).
    """
    if not isinstance(ref, ObjectRef):
        raise TypeError(f"cancel() takes an ObjectRef, got {type(ref).__name__}")
    _rt().cancel(ref, force)


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """Stop an actor at once: its pending and running calls fail with ActorDiedError.

    With ``no_restart=False`` it is restarted if its ``max_restarts`` allows.
    """
    from cluster.actor import ActorHandle

    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an actor handle, got {type(actor).__name__}")
    _rt().kill_actor(actor, no_restart)


def get_actor(name: str, namespace: str | None = None) -> Any:
    """The handle of the live actor named ``name`` (created with ``C.options(name=...)``)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"get_actor() takes an actor name, got {name!r}")
    handle = _rt().named_actor(name, namespace)
    if handle is None:
        from cluster.actor import DEFAULT_NAMESPACE

        raise ValueError(f"no actor named {name!r} in namespace {namespace or DEFAULT_NAMESPACE!r}")
    return handle


def nodes() -> list[dict[str, Any]]:
    """The cluster's nodes, with their total and available resources."""
    return _rt().list_nodes()


def _ref_list(refs: Any, what: str) -> list[ObjectRef]:
    if isinstance(refs, str | bytes) or not isinstance(refs, Iterable):
        raise TypeError(f"{what}() takes an ObjectRef or a list of ObjectRefs, got {type(refs).__name__}")
    out = list(refs)
    if not all(type(ref) is ObjectRef for ref in out):
        for ref in out:
            if not isinstance(ref, ObjectRef):
                raise TypeError(f"{what}() takes ObjectRefs, got an item of type {type(ref).__name__}")
    return out
