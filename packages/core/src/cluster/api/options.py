"""Options of remote functions and actor classes: values checked when they are made.

``TaskOptions`` and ``ActorOptions`` cannot exist invalid: their validators give the messages
users act on (a ConfigError naming the option and what it takes). ``from_user`` also refuses
unknown names, listing the known ones.

Owns: the known option names and their defaults. Imports: errors, runtime_env (its checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from cluster import runtime_env
from cluster.errors import ConfigError
from cluster.resources import fits, format_shape
from cluster.scheduling import (
    Placement,
    PlacementGroupSchedulingStrategy,
    parse_label_selector,
    placement_of,
    shape_in_group,
)

UNLIMITED = -1  # max_retries / max_restarts / max_task_retries: no limit (Ray's -1)


def _non_negative_number(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{attribute.name} must be a non-negative number, got {value!r}")


def _gpus(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    _non_negative_number(instance, attribute, value)
    if value > 1 and value != int(value):
        raise ConfigError(f"num_gpus above 1 must be a whole number (a fraction shares one device), got {value!r}")


def _custom_resources(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigError(f"resources must be a dict of name -> amount, got {type(value).__name__}")
    for name, amount in value.items():
        if name in ("CPU", "GPU"):
            raise ConfigError(f"use num_cpus/num_gpus instead of resources={{{name!r}: ...}}")
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
            raise ConfigError(f"resource {name!r} must be a non-negative number, got {amount!r}")


def _positive_integer(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{attribute.name} must be a positive integer, got {value!r}")


def _concurrency_groups(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Ray's ``concurrency_groups``: a dict of group names to each group's max concurrency."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise ConfigError(f'concurrency_groups must be a dict of group names to max concurrency, like '
                          f'{{"io": 2, "compute": 4}}, got {type(value).__name__}')
    for name, limit in value.items():
        if not isinstance(name, str) or not name or name.startswith("_ray"):
            raise ConfigError(f"concurrency group names must be non-empty strings not starting with '_ray' "
                              f"(those are Ray's own), got {name!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"concurrency group {name!r} must have a positive integer max concurrency, "
                              f"got {limit!r}")


STREAMING = "streaming"  # num_returns of a generator: an ObjectRefGenerator, values as they are yielded
DYNAMIC = "dynamic"  # num_returns of a generator: one ref, whose value holds the refs of all it yielded


def _num_returns(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None or value in (STREAMING, DYNAMIC):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f'num_returns must be a positive integer, "streaming" or "dynamic" (generators), got {value!r}')


def check_generator_num_returns(num_returns: Any, is_generator: bool, name: str) -> None:
    """``"streaming"``/``"dynamic"`` only for a function that yields (as Ray)."""
    if num_returns in (STREAMING, DYNAMIC) and not is_generator:
        raise ConfigError(
            f"num_returns={num_returns!r} can only be used with generator functions (ones that yield), "
            f"and {name} does not yield; drop the option or make it a generator")


def _backpressure(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None or value == -1:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            "_generator_backpressure_num_objects must be a positive integer (the most values a "
            f"generator keeps unconsumed before it pauses), or -1 / None for no limit; got {value!r}")


def backpressure_limit(value: int | None) -> int:
    """The back-pressure limit a stream carries on the wire: 0 for none."""
    return value if value is not None and value > 0 else 0


def _count_or_unlimited(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < UNLIMITED:
        raise ConfigError(f"{attribute.name} must be an integer >= 0 (or -1 for unlimited), got {value!r}")


def _retry_exceptions(value: Any) -> bool | tuple[type[BaseException], ...]:
    """Ray's ``retry_exceptions``: a bool, or a list of exception types to retry on."""
    if isinstance(value, bool):
        return value
    if isinstance(value, type) and issubclass(value, BaseException):
        value = [value]
    if isinstance(value, list | tuple) and value and all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in value):
        return tuple(value)
    raise ConfigError(f"retry_exceptions must be True, False or a list of exception types, got {value!r}")


def _scheduling_strategy(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    placement_of(value)  # (raises ConfigError naming what it takes)


def _label_selector(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    parse_label_selector(value)


def _runtime_env(value: Any) -> Mapping[str, Any] | None:
    """Ray's runtime_env dict, checked now (ConfigError naming the field); None if empty."""
    return runtime_env.check(value) or None


def _placement_group(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value not in ("default", None) and not hasattr(getattr(value, "id", None), "hex"):
        raise ConfigError(f"placement_group must be a PlacementGroup (from cluster.util.placement_group), got {value!r}")


def _in_group(options: Any, shape: tuple) -> tuple:
    """The shape of work placed in a placement group's bundle (Ray's ``CPU_group_<id>``
    names); ConfigError when no bundle could hold it."""
    strategy = options.scheduling_strategy
    if isinstance(strategy, PlacementGroupSchedulingStrategy):
        group, index = strategy.placement_group, strategy.placement_group_bundle_index
    elif options.placement_group not in ("default", None):
        group, index = options.placement_group, options.placement_group_bundle_index
    else:
        return shape
    bundles = list(getattr(group, "bundle_specs", None) or [])
    if isinstance(index, bool) or not isinstance(index, int) or index < -1 or (bundles and index >= len(bundles)):
        raise ConfigError(f"placement_group_bundle_index must be -1 (any bundle) or 0..{len(bundles) - 1}, got {index!r}")
    wanted = dict(shape)
    candidates = bundles if index == -1 else bundles[index:index + 1]
    if candidates and not any(fits(wanted, bundle) for bundle in candidates):
        raise ConfigError(f"{format_shape(wanted)} fits in no bundle of placement group {group.id.hex()} "
                          f"({', '.join(format_shape(b) for b in candidates)}): ask for less, or make bigger bundles")
    return shape_in_group(shape, group.id.hex(), index)


def _max_calls(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"max_calls must be an integer >= 0 (0: no limit), got {value!r}")


def _name(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and (not isinstance(value, str) or not value or "/" in value):
        raise ConfigError(f"{attribute.name} must be a non-empty string without '/', got {value!r}")


def _from_user(cls: type, options: Mapping[str, Any], base: Any, what: str) -> Any:
    known = [field.name for field in attrs.fields(cls)]
    unknown = set(options) - set(known)
    if unknown:
        raise ConfigError(f"unknown {what}(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**options) if base is None else attrs.evolve(base, **options)


def _with_accelerator(resources: Mapping[str, float] | None, accelerator_type: str | None) -> Mapping[str, float] | None:
    """Ray's ``accelerator_type="X"``: a sliver of the resource ``accelerator_type:X`` that nodes
    with such an accelerator offer (``cluster start --resources '{"accelerator_type:X": 1}'``)."""
    if accelerator_type is None:
        return resources
    return {**(resources or {}), f"accelerator_type:{accelerator_type}": 0.001}


def _shape(num_cpus: float, num_gpus: float, resources: Mapping[str, float] | None) -> tuple:
    amounts = {"CPU": float(num_cpus), "GPU": float(num_gpus), **(resources or {})}
    return tuple(sorted((name, float(amount)) for name, amount in amounts.items() if amount))


@attrs.frozen(kw_only=True)
class _RayOptions:
    """The options tasks and actors share that Ray documents and we accept: what each does
    here is in docs/ray-compatibility.md (some are checked no-ops)."""

    memory: float | None = attrs.field(default=None, validator=attrs.validators.optional(_non_negative_number))
    accelerator_type: str | None = None
    label_selector: Mapping[str, str] | None = attrs.field(default=None, validator=_label_selector)
    fallback_strategy: list | None = None
    scheduling_strategy: Any = attrs.field(default=None, validator=_scheduling_strategy)
    runtime_env: Mapping[str, Any] | None = attrs.field(default=None, converter=_runtime_env)
    enable_task_events: bool = True
    placement_group: Any = attrs.field(default="default", validator=_placement_group)
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool | None = None
    object_store_memory: int | None = None
    _labels: Mapping[str, str] | None = attrs.field(default=None, alias="_labels")

    @property
    def placement(self) -> Placement:
        """Where its work may run: ``scheduling_strategy`` and ``label_selector`` as one value."""
        return placement_of(self.scheduling_strategy, self.label_selector)


@attrs.frozen(kw_only=True)
class TaskOptions(_RayOptions):
    """``@cluster.remote(...)`` / ``f.options(...)`` of a remote function."""

    num_cpus: float = attrs.field(default=1, validator=_non_negative_number)
    num_gpus: float = attrs.field(default=0, validator=_gpus)
    resources: Mapping[str, float] | None = attrs.field(default=None, validator=_custom_resources)
    # None: 1, or "streaming" for a generator function (as Ray).
    num_returns: int | str | None = attrs.field(default=None, validator=_num_returns)
    max_retries: int = attrs.field(default=3, validator=_count_or_unlimited)
    retry_exceptions: bool | tuple[type[BaseException], ...] = attrs.field(default=False, converter=_retry_exceptions)
    name: str | None = None
    max_calls: int = attrs.field(default=0, validator=_max_calls)
    _generator_backpressure_num_objects: int | None = attrs.field(
        default=None, alias="_generator_backpressure_num_objects", validator=_backpressure)

    def __attrs_post_init__(self) -> None:
        if self.object_store_memory is not None:
            raise ConfigError("setting object_store_memory is not implemented for tasks (as in Ray)")
        if self.accelerator_type is not None and not isinstance(self.accelerator_type, str):
            raise ConfigError(f"accelerator_type must be a string, got {self.accelerator_type!r}")

    @classmethod
    def from_user(cls, options: Mapping[str, Any], base: TaskOptions | None = None) -> TaskOptions:
        """The options a user gave (on top of ``base``); unknown names are refused."""
        return _from_user(cls, options, base, "option")

    @property
    def shape(self) -> tuple:
        """The resources a task needs, as sorted (name, amount) pairs without zeros."""
        return _in_group(self, _shape(self.num_cpus, self.num_gpus, _with_accelerator(self.resources, self.accelerator_type)))


@attrs.frozen(kw_only=True)
class ActorOptions(_RayOptions):
    """``@cluster.remote(...)`` / ``C.options(...)`` of an actor class."""

    num_cpus: float = attrs.field(default=0, validator=_non_negative_number)  # held for its life (Ray: 1 to place it, 0 while it runs)
    num_gpus: float = attrs.field(default=0, validator=_gpus)
    resources: Mapping[str, float] | None = attrs.field(default=None, validator=_custom_resources)
    name: str | None = attrs.field(default=None, validator=_name)
    namespace: str | None = attrs.field(default=None, validator=_name)
    get_if_exists: bool = False
    lifetime: str | None = None  # "detached": outlives its creator (needs a name)
    max_restarts: int = attrs.field(default=0, validator=_count_or_unlimited)
    max_task_retries: int = attrs.field(default=0, validator=_count_or_unlimited)
    max_concurrency: int | None = None  # async actors: 1000; sync actors: 1 (more: a thread pool)
    max_pending_calls: int = attrs.field(default=-1, validator=_count_or_unlimited)
    concurrency_groups: Mapping[str, int] | None = attrs.field(default=None, validator=_concurrency_groups)
    allow_out_of_order_execution: bool | None = None
    enable_tensor_transport: bool | None = None

    def __attrs_post_init__(self) -> None:
        if self.lifetime not in (None, "detached", "non_detached"):
            raise ConfigError(f'lifetime must be None, "detached" or "non_detached", got {self.lifetime!r}')
        if self.lifetime == "detached":
            if not self.name:
                raise ConfigError('a detached actor needs a name (find it again with cluster.get_actor(name))')
            if self.max_restarts:
                raise ConfigError("detached actors cannot restart yet: leave max_restarts at 0")
        if self.max_concurrency is not None:
            _positive_integer(self, attrs.fields(ActorOptions).max_concurrency, self.max_concurrency)
        if self.get_if_exists and not self.name:
            raise ConfigError("get_if_exists=True needs a name")

    @classmethod
    def from_user(cls, options: Mapping[str, Any], base: ActorOptions | None = None) -> ActorOptions:
        """The options a user gave (on top of ``base``); unknown names are refused."""
        return _from_user(cls, options, base, "actor option")

    @property
    def shape(self) -> tuple:
        """The resources the actor holds for its lifetime, as sorted (name, amount) pairs."""
        return _in_group(self, _shape(self.num_cpus, self.num_gpus, _with_accelerator(self.resources, self.accelerator_type)))


# What @cluster.remote(...) can check before it knows whether it decorates a function or a class.
SHARED_OPTIONS = ("num_cpus", "num_gpus", "resources")
