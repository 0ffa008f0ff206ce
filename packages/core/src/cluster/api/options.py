"""Options of remote functions and actor classes: defaults, and checks with messages users act on.

Owns: the known option names and their defaults. Imports: errors only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cluster.errors import ConfigError

TASK_DEFAULTS: dict[str, Any] = {
    "num_cpus": 1,
    "num_gpus": 0,
    "resources": None,
    "num_returns": 1,
    "max_retries": 3,
    "retry_exceptions": False,
    "name": None,
}


def check_task_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(TASK_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown option(s) {sorted(unknown)}; known: {sorted(TASK_DEFAULTS)}")
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



ACTOR_DEFAULTS: dict[str, Any] = {
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


def check_actor_options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(ACTOR_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown actor option(s) {sorted(unknown)}; known: {sorted(ACTOR_DEFAULTS)}")
    lifetime = options.get("lifetime")
    if lifetime not in (None, "detached"):
        raise ConfigError(f'lifetime must be None or "detached", got {lifetime!r}')
    if lifetime == "detached":
        if not options.get("name"):
            raise ConfigError('a detached actor needs a name (find it again with cluster.get_actor(name))')
        if options.get("max_restarts"):
            raise ConfigError("detached actors cannot restart yet: leave max_restarts at 0")
    check_task_options({k: options[k] for k in ("num_cpus", "num_gpus", "resources") if k in options})
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

