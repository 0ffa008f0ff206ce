"""Task arguments: pickled once, with top-level ObjectRefs replaced by dependency markers.

Owns: how ``f.remote(*args, **kwargs)`` becomes a payload. Imports: objects (refs, values).
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Callable
from typing import Any

import cloudpickle

from cluster.objects import values as v
from cluster.objects.refs import ObjectRef, collect_outgoing


def pack_args(rt: Any, args: tuple, kwargs: dict) -> tuple[bytes, list, list]:
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
        where = v.where_unpicklable({**{f"#{i}": a for i, a in enumerate(args)}, **kwargs}, "arguments")
        raise TypeError(f"could not serialize the task's arguments: {exc}{where}") from None
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



Check = Callable[[tuple, dict], None]


def signature_check(fn: Any, what: str, bound_method: bool = False) -> Check:
    """A check that ``fn(*args, **kwargs)`` binds, raising Python's TypeError in the caller (as
    Ray does at ``.remote()``), not later in a worker. ``bound_method``: skip ``self``. Calls of
    plain positional parameters without keywords take a fast path (this runs on every submit)."""
    shape = parameter_shape(fn, bound_method)
    return _no_check if shape is None else shape_check(shape, what)


Shape = tuple[tuple[str, str, bool], ...]


def parameter_shape(fn: Any, bound_method: bool = False) -> Shape | None:
    """What binding needs of ``fn``'s parameters, small and picklable: (kind, name, has a
    default) each (None: no signature to check against, as for a builtin)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if bound_method:
        parameters = parameters[1:]
    return tuple((p.kind.name, p.name, p.default is not inspect.Parameter.empty) for p in parameters)


def shape_check(shape: Shape, what: str) -> Check:
    """The check of :func:`signature_check`, from a :func:`parameter_shape` (in any process)."""
    signature = inspect.Signature([
        inspect.Parameter(name, getattr(inspect.Parameter, kind),
                          default=None if has_default else inspect.Parameter.empty)
        for kind, name, has_default in shape])
    return _binding_check(signature, what)


def _binding_check(signature: inspect.Signature, what: str) -> Check:
    parameters = list(signature.parameters.values())

    def slow(args: tuple, kwargs: dict) -> None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{what}: {exc}") from None

    if all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters):
        most = len(parameters)
        least = sum(1 for p in parameters if p.default is inspect.Parameter.empty)

        def fast(args: tuple, kwargs: dict) -> None:
            if kwargs or not least <= len(args) <= most:
                slow(args, kwargs)

        return fast
    return slow


def _no_check(args: tuple, kwargs: dict) -> None:
    return None
