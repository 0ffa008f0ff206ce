"""Resource shapes: arithmetic on {name: amount}, sizes, and the daemon's --resources argument.

A leaf module (imports errors only), used by every layer. ``detect_gpus`` may run ``nvidia-smi``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping

from cluster.errors import ConfigError


def format_shape(shape: Mapping[str, float]) -> str:
    """``{CPU: 1, accel: 2}``: a resource shape for messages (zero amounts left out)."""
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shape.items()) if v) + "}"


def total_demand(reports: Iterable[list[dict] | None]) -> list[dict]:
    """The cluster's pending demand by shape and label selector (largest first), from the
    nodes' reports (``NodeService.demand``): [{"shape", "count", "infeasible", "labels"}]."""
    total: dict[tuple, dict] = {}
    for report in reports:
        for item in report or ():
            labels = [[e[0], e[1], list(e[2])] for e in item.get("labels") or ()]
            key = (tuple(sorted(item["shape"].items())), item["infeasible"], repr(labels))
            entry = total.setdefault(key, {"shape": item["shape"], "count": 0, "infeasible": item["infeasible"],
                                           "labels": labels})
            entry["count"] += item["count"]
    return sorted(total.values(), key=lambda e: (-e["count"], sorted(e["shape"].items())))


def add_shapes(shapes: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The resources of ``shapes`` together (a placement group's bundles on one node)."""
    total: dict[str, float] = {}
    for shape in shapes:
        for name, amount in shape.items():
            total[name] = total.get(name, 0.0) + amount
    return total


def fits(shape: Mapping[str, float], available: Mapping[str, float]) -> bool:
    return all(available.get(name, 0.0) >= amount - 1e-9 for name, amount in shape.items())


def resources_arg(
    num_cpus: float | None, num_gpus: float | None, resources: Mapping[str, float] | str | None
) -> str:
    """The node's resources as the daemon's ``--resources`` JSON; validates every amount."""
    if isinstance(resources, str):
        try:
            resources = json.loads(resources)
        except ValueError as exc:
            raise ConfigError(f"--resources must be a JSON object like '{{\"accel\": 2}}': {exc}") from None
    resources = dict(resources or {})
    if not all(isinstance(k, str) for k in resources):
        raise ConfigError("resource names must be strings")
    for name, amount in resources.items():
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
            raise ConfigError(f"resource {name!r} must be a non-negative number, got {amount!r}")
    for name, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ConfigError(f"{name} must be a non-negative number, got {value!r}")
    resources["CPU"] = float(num_cpus if num_cpus is not None else os.cpu_count() or 1)
    resources["GPU"] = float(num_gpus if num_gpus is not None else detect_gpus())
    return json.dumps(resources)


def visible_gpu_ids() -> list[str] | None:
    """The GPU ids ``CUDA_VISIBLE_DEVICES`` names (None when it is unset: all of the machine's)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    if value.strip() in ("", "NoDevFiles"):
        return []
    return [gpu.strip() for gpu in value.split(",") if gpu.strip()]


def detect_gpus() -> int:
    """How many GPUs this machine offers (as Ray counts them): those ``CUDA_VISIBLE_DEVICES``
    names, else those ``nvidia-smi -L`` lists, else none."""
    visible = visible_gpu_ids()
    if visible is not None:
        return len(visible)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))


_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3,
          "GB": 1000**3, "T": 1000**4, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2,
          "GIB": 1024**3, "TIB": 1024**4}


def parse_size(value: str | int | float, what: str = "object store memory") -> int:
    """Bytes from ``1000000``, ``"200MB"``, ``"1.5GiB"``; ConfigError naming ``what`` otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a size like 2000000000 or '2GB', got {value!r}")
    if isinstance(value, int | float):
        number, unit = float(value), ""
    else:
        text = str(value).strip().upper().replace(" ", "")
        digits = text.rstrip("KMGTIB")
        unit = text[len(digits):]
        try:
            number = float(digits)
        except ValueError:
            number = -1.0
        if unit not in _UNITS:
            number = -1.0
    if number <= 0:
        raise ConfigError(f"{what} must be a positive size like 2000000000 or '2GB', got {value!r}")
    return int(number * _UNITS[unit])


def default_object_store_memory(store_root: str) -> int:
    """Ray's default: 30% of the machine's memory, but no more than 90% of the store's filesystem."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        physical = 8 * 1024**3
    size = int(physical * 0.3)
    try:
        stat = os.statvfs(store_root)
        size = min(size, int(stat.f_blocks * stat.f_frsize * 0.9))
    except OSError:
        pass
    return size
