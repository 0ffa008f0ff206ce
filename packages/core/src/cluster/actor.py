"""Actors: ``@cluster.remote`` on a class, handles, and method calls (DESIGN.md §6).

``C.remote(*args)`` asks the caller's runtime (the actor's *owner*) to lease a worker for the
actor's whole life and build the instance there; it returns an :class:`ActorHandle` at once.
``handle.method.remote(...)`` sends the call straight to that worker, in submission order per
caller, and returns ObjectRefs like a task. Handles pickle: a process that receives one asks
the owner where the actor lives, then talks to its worker directly.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from cluster import object_ref
from cluster.errors import ConfigError

_ACTOR_DEFAULTS: dict[str, Any] = {
    "num_cpus": 0,  # held for the actor's lifetime (Ray: 1 to place it, 0 while it runs)
    "num_gpus": 0,
    "resources": None,
    "name": None,
    "namespace": None,
    "get_if_exists": False,
    "lifetime": None,  # "detached": outlives its creator (needs a name)
    "max_restarts": 0,
    "max_task_retries": 0,
    "max_concurrency": None,  # async actors: 1000; sync actors: 1 (more: a thread pool)
}

DEFAULT_NAMESPACE = "default"


def check_actor_options(options: Mapping[str, Any]) -> dict[str, Any]:
    from cluster.api import _check_options

    unknown = set(options) - set(_ACTOR_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown actor option(s) {sorted(unknown)}; known: {sorted(_ACTOR_DEFAULTS)}")
    lifetime = options.get("lifetime")
    if lifetime not in (None, "detached"):
        raise ConfigError(f'lifetime must be None or "detached", got {lifetime!r}')
    if lifetime == "detached":
        if not options.get("name"):
            raise ConfigError('a detached actor needs a name (find it again with cluster.get_actor(name))')
        if options.get("max_restarts"):
            raise ConfigError("detached actors cannot restart yet: leave max_restarts at 0")
    _check_options({k: options[k] for k in ("num_cpus", "num_gpus", "resources") if k in options})
    for key in ("max_restarts", "max_task_retries"):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < -1):
            raise ConfigError(f"{key} must be an integer >= 0 (or -1 for unlimited), got {value!r}")
    concurrency = options.get("max_concurrency")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1):
        raise ConfigError(f"max_concurrency must be a positive integer, got {concurrency!r}")
    for key in ("name", "namespace"):
        value = options.get(key)
        if value is not None and (not isinstance(value, str) or not value or "/" in value):
            raise ConfigError(f"{key} must be a non-empty string without '/', got {value!r}")
    if options.get("get_if_exists") and not options.get("name"):
        raise ConfigError("get_if_exists=True needs a name")
    return dict(options)


def _method_names(cls: type) -> dict[str, int]:
    """Public methods callable remotely -> their num_returns (from @cluster.method)."""
    names = {}
    for name, member in inspect.getmembers(cls, callable):
        if name.startswith("_") and name != "__call__":
            continue
        names[name] = getattr(member, "_cluster_num_returns", 1)
    return names


def method(*, num_returns: int = 1) -> Any:
    """Decorate an actor method with call options: ``@cluster.method(num_returns=2)``."""
    if not isinstance(num_returns, int) or num_returns < 1:
        raise ConfigError(f"num_returns must be a positive integer, got {num_returns!r}")

    def wrap(fn: Any) -> Any:
        fn._cluster_num_returns = num_returns
        return fn

    return wrap


class ActorClass:
    """A class made remote: ``C.remote(*args)`` starts an actor and returns its handle."""

    def __init__(self, cls: type, options: Mapping[str, Any], _shared: dict | None = None) -> None:
        self._cls = cls
        self._options = {**_ACTOR_DEFAULTS, **check_actor_options(options)}
        self._shared = _shared if _shared is not None else {}
        self._methods = _method_names(cls)
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self.__name__} cannot be instantiated directly; use {self.__name__}.remote(...)")

    def options(self, **options: Any) -> ActorClass:
        """A copy with some options changed (``name``, ``num_cpus``, ``max_restarts``...)."""
        return ActorClass(self._cls, {**self._options, **options}, self._shared)

    def _pickled(self) -> tuple[bytes, bytes]:
        from cluster.code_shipping import pack_once

        return pack_once(self._shared, self._cls, f"actor class {self.__name__}")

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        from cluster.api import _pack_args, _rt

        runtime = _rt()
        _, blob = self._pickled()
        payload, dep_refs, held = _pack_args(runtime, args, kwargs)
        return runtime.create_actor(self, blob, payload, dep_refs, held)


class ActorHandle:
    """A reference to a running actor: ``handle.method.remote(...)`` calls it.

    Cheap to copy and safe to pass to tasks and other actors; every copy reaches the same
    actor.
    """

    __slots__ = ("__weakref__", "_actor_id", "_class_name", "_methods", "_name_key", "_owner")

    def __init__(self, actor_id: bytes, class_name: str, methods: dict[str, int], owner: str,
                 name_key: str = "") -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._owner = owner  # "" for a detached actor: it is found through its name
        self._name_key = name_key
        runtime = object_ref._runtime
        if runtime is not None and owner == runtime.address:
            runtime.actor_handle_added(actor_id)

    def __del__(self) -> None:
        runtime = object_ref._runtime
        if runtime is not None and self._owner == runtime.address:
            try:
                runtime.actor_handle_dropped(self._actor_id)
            except Exception:  # interpreter shutdown
                pass

    def __getattr__(self, name: str) -> ActorMethod:
        if name.startswith("__"):
            raise AttributeError(name)
        if name not in self._methods:
            known = ", ".join(sorted(self._methods)) or "none"
            raise AttributeError(f"actor {self._class_name} has no method {name!r} (its methods: {known})")
        return ActorMethod(self, name, self._methods[name])

    def __repr__(self) -> str:
        return f"ActorHandle({self._class_name}, {self._actor_id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __reduce__(self) -> Any:
        runtime = object_ref._runtime
        if runtime is not None and self._owner == runtime.address:
            runtime.actor_handle_escaped(self._actor_id)  # it lives on elsewhere: keep the actor
        return (ActorHandle, (self._actor_id, self._class_name, self._methods, self._owner, self._name_key))


class ActorMethod:
    """``handle.method``: call it with ``.remote(...)``."""

    __slots__ = ("_handle", "_name", "_num_returns")

    def __init__(self, handle: ActorHandle, name: str, num_returns: int) -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor methods are called with .remote(): use handle.{self._name}.remote(...)")

    def options(self, *, num_returns: int | None = None) -> ActorMethod:
        if num_returns is not None and (not isinstance(num_returns, int) or num_returns < 1):
            raise ConfigError(f"num_returns must be a positive integer, got {num_returns!r}")
        return ActorMethod(self._handle, self._name, num_returns or self._num_returns)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        from cluster.api import _pack_args, _rt

        runtime = _rt()
        payload, dep_refs, held = _pack_args(runtime, args, kwargs)
        refs = runtime.submit_actor_call(self._handle, self._name, self._num_returns, payload, dep_refs, held)
        return refs[0] if self._num_returns == 1 else refs
