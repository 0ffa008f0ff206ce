"""Remote functions: ``@cluster.remote`` on a function, ``f.options(...)``, ``f.remote(...)``.

Owns: :class:`RemoteFunction` and the ``remote`` decorator. Imports: the other api modules,
owner (the task record it submits), objects.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from cluster.api.actors import ActorClass
from cluster.api.args import pack_args, signature_check
from cluster.api.generators import ObjectRefGenerator, streams_of
from cluster.api.lifecycle import current_runtime
from cluster.api.options import (
    DYNAMIC,
    SHARED_OPTIONS,
    STREAMING,
    UNLIMITED,
    ActorOptions,
    TaskOptions,
    backpressure_limit,
    check_generator_num_returns,
)
from cluster.objects.functions import pack_once
from cluster.owner.envs import shape_with_env
from cluster.owner.tasks import PendingTask
from cluster.scheduling import shape_with_placement


class RemoteFunction:
    """A function that runs as a task on the cluster: ``f.remote(...)`` returns ObjectRef(s)."""

    def __init__(self, function: Callable, options: TaskOptions, _shared: dict | None = None) -> None:
        self._function = function
        self._options = options
        self._shared = _shared if _shared is not None else {}  # the pickled function, shared by .options() copies
        self._placement = options.placement
        self._shape = shape_with_placement(options.shape, self._placement)
        self._name = options.name or getattr(function, "__qualname__", repr(function))
        self._retries = 1 << 30 if options.max_retries == UNLIMITED else options.max_retries
        is_generator = inspect.isgeneratorfunction(function) or inspect.isasyncgenfunction(function)
        check_generator_num_returns(options.num_returns, is_generator, self._name)
        # "streaming" or "dynamic" (a generator), else the number of refs it returns; Ray's
        # default for a function that yields is "streaming".
        returns = options.num_returns or (STREAMING if is_generator else 1)
        self._stream = returns if isinstance(returns, str) else None
        self._num_returns = 1 if isinstance(returns, str) else returns
        self._backpressure = backpressure_limit(options._generator_backpressure_num_objects)
        self._env: tuple[Any, tuple, dict | None] | None = None  # (runtime, shape, env) once resolved there
        self._check_args = self._shared.get("check")
        if self._check_args is None:
            self._check_args = self._shared["check"] = signature_check(function, f"{self._name}.remote()")
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(
            f"remote function {self._name} cannot be called directly; use {self._name}.remote(...)"
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_env"] = None  # (a runtime's: resolved again where it is unpickled)
        return state

    def options(self, **options: Any) -> RemoteFunction:
        """A copy with some options changed (``num_cpus``, ``num_returns``, ``max_retries``...)."""
        return RemoteFunction(self._function, TaskOptions.from_user(options, self._options), self._shared)

    def _pickled(self) -> tuple[bytes, bytes]:
        return pack_once(self._shared, self._function, f"remote function {self._name}")

    def _shape_and_env(self, rt: Any) -> tuple[tuple, dict | None]:
        """The queue key and resolved runtime env of this function's tasks submitted by ``rt``."""
        cached = self._env
        if cached is None or cached[0] is not rt:
            env = rt.resolve_env(self._options.runtime_env)
            cached = self._env = (rt, shape_with_env(self._shape, env)[0], env)
        return cached[1], cached[2]

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        self._check_args(args, kwargs)
        rt = current_runtime()
        if self._options.runtime_env is None and rt.runtime_env is None:
            shape, env = self._shape, None
        else:
            shape, env = self._shape_and_env(rt)
        fid, data = self._pickled()
        payload, dep_refs, held = pack_args(rt, args, kwargs)
        task_id = rt.new_task_id()
        num_returns = self._num_returns
        task = PendingTask(
            task_id=task_id,
            name=self._name,
            function_id=fid,
            function=data,
            args=payload,
            dep_refs=dep_refs,
            num_returns=num_returns,
            return_ids=[task_id + i.to_bytes(4, "little") for i in range(num_returns)],
            shape=shape,
            retries_left=self._retries,
            retry_exceptions=self._options.retry_exceptions,
            held=held,
            max_retries=self._retries,
            namespace=rt.caller_namespace(),
            runtime_env=env,
            placement=self._placement,
        )
        if self._stream is not None:
            streams_of(rt).open(task, self._backpressure, self._stream == DYNAMIC)
            refs = rt.submit(task)
            return refs[0] if self._stream == DYNAMIC else ObjectRefGenerator(rt, task_id, refs[0])
        refs = rt.submit(task)
        return refs[0] if num_returns == 1 else refs



def remote(*args: Any, **options: Any) -> Any:
    """Make a function a remote function, or a class an actor class: ``@cluster.remote`` or
    ``@cluster.remote(num_cpus=2)``."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("use @cluster.remote or @cluster.remote(option=value, ...)")
    # Check what functions and actors share now; the rest once we see which it decorates.
    TaskOptions.from_user({k: x for k, x in options.items() if k in SHARED_OPTIONS})
    return lambda fn: _make_remote(fn, options)


def _make_remote(target: Any, options: Mapping[str, Any]) -> Any:
    if inspect.isclass(target):
        return ActorClass(target, ActorOptions.from_user(options))
    if not callable(target):
        raise TypeError(f"@cluster.remote needs a function, got {type(target).__name__}")
    return RemoteFunction(target, TaskOptions.from_user(options))

