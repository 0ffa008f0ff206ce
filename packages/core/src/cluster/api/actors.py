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
from typing import Any, NoReturn

from cluster.api.args import Check, Shape, pack_args, parameter_shape, shape_check, signature_check
from cluster.api.generators import ObjectRefGenerator, streams_of
from cluster.api.lifecycle import current_runtime
from cluster.api.options import (
    DYNAMIC,
    STREAMING,
    ActorOptions,
    TaskOptions,
    backpressure_limit,
    check_generator_num_returns,
)
from cluster.context import ActorExitRequested
from cluster.errors import ConfigError
from cluster.objects import refs as object_ref
from cluster.objects.functions import pack_once


def _is_generator(fn: Any) -> bool:
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


class MethodTable(dict):
    """An actor's methods -> their num_returns, with each one's parameters (``shapes``): a
    handle carries it to every process it reaches, where calls are checked at ``.remote()``.
    ``out_of_order``: a call whose arguments are ready need not wait for earlier calls whose
    arguments are not (async and threaded actors, ``allow_out_of_order_execution``), as Ray."""

    __slots__ = ("out_of_order", "shapes")

    def __init__(self) -> None:
        super().__init__()
        self.shapes: dict[str, Shape] = {}
        self.out_of_order = False


def is_async_actor(cls: type) -> bool:
    """Whether ``cls`` runs as an async actor: any of its methods is ``async def`` (as Ray)."""
    return any(inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
               for _, member in inspect.getmembers(cls))


def _method_names(cls: type) -> dict[str, int | str]:
    """Public methods callable remotely -> their num_returns (from @cluster.method; a method
    that yields: "streaming", as Ray)."""
    names = MethodTable()
    for name, member in inspect.getmembers(cls, callable):
        if name.startswith("_") and name != "__call__":
            continue
        default = STREAMING if _is_generator(member) else 1
        names[name] = getattr(member, "_cluster_num_returns", None) or default
        kind = inspect.getattr_static(cls, name, None)
        shape = parameter_shape(member, bound_method=not isinstance(kind, staticmethod | classmethod))
        if shape is not None:
            names.shapes[name] = shape
    # Every actor has Ray's two built-in methods (the worker answers them, worker/executor.py).
    names.setdefault("__ray_ready__", 1)
    names.setdefault("__ray_terminate__", 1)
    return names


def method_groups(cls: type) -> dict[str, str]:
    """Methods of ``cls`` that ``@cluster.method(concurrency_group=...)`` placed -> their group."""
    found = {}
    for name, member in inspect.getmembers(cls, callable):
        group = getattr(member, "_cluster_concurrency_group", None)
        if group is not None:
            found[name] = group
    return found


def check_groups(cls: type, groups: Mapping[str, int] | None) -> None:
    """Refuse (ValueError) a method placed in a group the actor does not define."""
    defined = dict(groups or {})
    for name, group in sorted(method_groups(cls).items()):
        if group not in defined and group != "default":
            known = ", ".join(repr(g) for g in defined) or "none"
            raise ValueError(
                f"method {cls.__name__}.{name} is in concurrency group {group!r}, which {cls.__name__} "
                f"does not define (its groups: {known}): add it with "
                f"@cluster.remote(concurrency_groups={{{group!r}: N}}) or .options(concurrency_groups=...)")


def _check_num_returns(num_returns: Any) -> None:
    if num_returns not in (STREAMING, DYNAMIC) and (
            isinstance(num_returns, bool) or not isinstance(num_returns, int) or num_returns < 1):
        raise ConfigError(
            f'num_returns must be a positive integer, "streaming" or "dynamic" (generators), got {num_returns!r}')


def _check_group_name(group: Any) -> None:
    if not isinstance(group, str) or not group:
        raise ConfigError(f"concurrency_group must be the name of one of the actor's concurrency groups, got {group!r}")


def method(*, num_returns: int | str | None = None, concurrency_group: str | None = None) -> Any:
    """Decorate an actor method with call options: ``@cluster.method(num_returns=2)``;
    ``concurrency_group``: the group (of the actor's ``concurrency_groups``) its calls run in."""
    if num_returns is not None:
        _check_num_returns(num_returns)
    if concurrency_group is not None:
        _check_group_name(concurrency_group)

    def wrap(fn: Any) -> Any:
        check_generator_num_returns(num_returns, _is_generator(fn), getattr(fn, "__qualname__", "the method"))
        fn._cluster_num_returns = num_returns
        if concurrency_group is not None:
            fn._cluster_concurrency_group = concurrency_group
        return fn

    return wrap


def _constructor_check(cls: type) -> Check:
    """The check that ``cls(*args, **kwargs)``'s arguments bind to its ``__init__``."""
    what = f"{cls.__name__}.remote()"
    if cls.__init__ is object.__init__:  # no __init__ of its own or its bases': it takes nothing

        def no_arguments(args: tuple, kwargs: dict) -> None:
            if args or kwargs:
                raise TypeError(f"{what}: {cls.__name__}() takes no arguments")

        return no_arguments
    return signature_check(cls.__init__, what, bound_method=True)


class ActorClass:
    """A class made remote: ``C.remote(*args)`` starts an actor and returns its handle."""

    def __init__(self, cls: type, options: ActorOptions, _shared: dict | None = None) -> None:
        self._cls = cls
        self._options = options
        self._shared = _shared if _shared is not None else {}
        self._methods = _method_names(cls)
        self._methods.out_of_order = bool(
            options.allow_out_of_order_execution or (options.max_concurrency or 1) > 1
            or options.concurrency_groups or is_async_actor(cls))
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__
        self.__doc__ = cls.__doc__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor class {self.__name__} cannot be instantiated directly; use {self.__name__}.remote(...)")

    def __getattr__(self, name: str) -> Any:
        """The class's own attributes (class variables, static and class methods), as Ray lets
        code reach them through the decorated name (``A.x`` inside ``A``'s methods)."""
        if name.startswith("__") or name in ("_cls", "_options", "_shared", "_methods"):
            raise AttributeError(name)
        return getattr(self._cls, name)

    def __mro_entries__(self, bases: tuple) -> tuple:
        raise TypeError(
            f"actor class {self.__name__} cannot be subclassed (as in Ray): subclass the plain class "
            f"{self.__name__} was made from, and decorate the subclass with @cluster.remote")

    def options(self, **options: Any) -> ActorClass:
        """A copy with some options changed (``name``, ``num_cpus``, ``max_restarts``...)."""
        return ActorClass(self._cls, ActorOptions.from_user(options, self._options), self._shared)

    def _pickled(self) -> tuple[bytes, bytes]:
        return pack_once(self._shared, self._cls, f"actor class {self.__name__}")

    def remote(self, *args: Any, **kwargs: Any) -> ActorHandle:
        check = self._shared.get("check")
        if check is None:
            check = self._shared["check"] = _constructor_check(self._cls)
        check(args, kwargs)
        if "groups_checked" not in self.__dict__:
            check_groups(self._cls, self._options.concurrency_groups)
            self.__dict__["groups_checked"] = True
        runtime = current_runtime()
        _, blob = self._pickled()
        payload, dep_refs, held = pack_args(runtime, args, kwargs)
        handle = ActorHandle(*runtime.create_actor(self, blob, payload, dep_refs, held))
        handle._max_pending_calls = self._options.max_pending_calls
        return handle


class ActorHandle:
    """A reference to a running actor: ``handle.method.remote(...)`` calls it.

    Cheap to copy and safe to pass to tasks and other actors; every copy reaches the same
    actor.
    """

    __slots__ = ("__weakref__", "_actor_id", "_checks", "_class_name", "_lifetime", "_max_pending_calls", "_methods",
                 "_name_key", "_owner")

    def __init__(self, actor_id: bytes, class_name: str, methods: dict[str, int | str], owner: str,
                 name_key: str = "", lifetime: object_ref.ObjectRef | None = None,
                 max_pending_calls: int = -1) -> None:
        self._actor_id = actor_id
        self._class_name = class_name
        self._methods = methods
        self._owner = owner  # "" for a detached actor: it is found through its name
        self._name_key = name_key
        # An unnamed actor's handles hold this ref (in every process they reach): the owner's
        # reference counting ends the actor when the last one is gone.
        self._lifetime = lifetime
        self._max_pending_calls = max_pending_calls  # -1: unlimited (Ray's option; counted per handle)
        self._checks: dict[str, Check | None] = {}  # method -> its arguments' check, made at its first call
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
        if name.startswith("__") and name not in self._methods:
            raise AttributeError(name)
        if name not in self._methods:
            known = ", ".join(sorted(n for n in self._methods if not n.startswith("__ray_"))) or "none"
            raise AttributeError(f"actor {self._class_name} has no method {name!r} (its methods: {known})")
        return ActorMethod(self, name, self._methods[name])

    def _check_of(self, method: str) -> Check | None:
        """The check that a call's arguments bind to ``method``'s parameters (None: unknown)."""
        try:
            return self._checks[method]
        except KeyError:
            shape = getattr(self._methods, "shapes", {}).get(method)
            check = None if shape is None else shape_check(shape, f"{self._class_name}.{method}.remote()")
            self._checks[method] = check
            return check

    def __repr__(self) -> str:
        return f"ActorHandle({self._class_name}, {self._actor_id.hex()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorHandle) and other._actor_id == self._actor_id

    def __hash__(self) -> int:
        return hash(self._actor_id)

    def __reduce__(self) -> Any:
        if self._lifetime is None:
            runtime = object_ref._runtime
            if runtime is not None and self._owner == runtime.address:
                runtime.actor_handle_escaped(self._actor_id)  # it lives on elsewhere: keep the actor
        return (ActorHandle, (self._actor_id, self._class_name, self._methods, self._owner, self._name_key,
                              self._lifetime, self._max_pending_calls))


class ActorMethod:
    """``handle.method``: call it with ``.remote(...)``."""

    __slots__ = ("_backpressure", "_group", "_handle", "_name", "_num_returns")

    def __init__(self, handle: ActorHandle, name: str, num_returns: int | str, backpressure: int = 0,
                 group: str = "") -> None:
        self._handle = handle
        self._name = name
        self._num_returns = num_returns
        self._backpressure = backpressure  # a generator method's _generator_backpressure_num_objects
        self._group = group  # the call's concurrency_group ("": the method's own)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"actor methods are called with .remote(): use handle.{self._name}.remote(...)")

    def options(self, *, num_returns: int | str | None = None, concurrency_group: str | None = None,
                _generator_backpressure_num_objects: int | None = None) -> ActorMethod:
        if num_returns is not None:
            _check_num_returns(num_returns)
        if concurrency_group is not None:
            _check_group_name(concurrency_group)
        # (checked by the task option's own validator)
        TaskOptions(_generator_backpressure_num_objects=_generator_backpressure_num_objects)
        backpressure = backpressure_limit(_generator_backpressure_num_objects) or self._backpressure
        return ActorMethod(self._handle, self._name, num_returns or self._num_returns, backpressure,
                           concurrency_group or self._group)

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        check = self._handle._check_of(self._name)
        if check is not None:
            check(args, kwargs)
        runtime = current_runtime()
        payload, dep_refs, held = pack_args(runtime, args, kwargs)
        returns = self._num_returns
        if type(returns) is str:  # a generator method
            streams_of(runtime)
            refs = runtime.submit_actor_call(self._handle, self._name, 1, payload, dep_refs, held,
                                             (self._backpressure, returns == DYNAMIC), self._group)
            return refs[0] if returns == DYNAMIC else ObjectRefGenerator(runtime, refs[0].id[:16], refs[0])
        refs = runtime.submit_actor_call(self._handle, self._name, returns, payload, dep_refs, held,
                                         group=self._group)
        return refs[0] if returns == 1 else refs


def exit_actor() -> NoReturn:
    """End the actor this runs in, on purpose (Ray's ``ray.actor.exit_actor``): the caller of
    this call sees the actor's death (ActorDiedError) rather than a return value, calls not
    started yet fail the same way, the actor is not restarted, and its atexit handlers run."""
    runtime = object_ref._runtime
    executor = getattr(runtime, "executor", None)
    if executor is None or executor.actor_id is None:
        raise TypeError("exit_actor() can only be called inside an actor (use cluster.kill(handle) from outside)")
    raise ActorExitRequested()


def kill(actor: Any, *, no_restart: bool = True) -> None:
    """Stop an actor at once: its pending and running calls fail with ActorDiedError.

    With ``no_restart=False`` it is restarted if its ``max_restarts`` allows.
    """
    if not isinstance(actor, ActorHandle):
        raise TypeError(f"kill() takes an actor handle, got {type(actor).__name__}")
    current_runtime().kill_actor(actor, no_restart)


def get_actor(name: str, namespace: str | None = None) -> Any:
    """The handle of the live actor named ``name`` (created with ``C.options(name=...)``)."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"get_actor() takes an actor name, got {name!r}")
    fields = current_runtime().named_actor(name, namespace)
    if fields is None:
        raise ValueError(f"no actor named {name!r} in namespace {namespace or current_runtime().namespace!r}")
    return ActorHandle(*fields)

