"""An owner's side of runtime envs: local directories and files uploaded, envs resolved.

A user env (``cluster.runtime_env.check``) names local paths; a node on another machine
cannot read them. Resolving one zips each directory (``cluster.packaging``: the same files
make the same zip, named by its hash), uploads it to the head's KV under
``runtime_env/<name>`` unless the head has it already, and puts the name in its place. A
worker's node fetches each package once and unpacks it once (``cluster.node.envs``).

Imports: wire (KV messages), leaves.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cluster import packaging
from cluster import runtime_env as renv
from cluster.errors import ConfigError
from cluster.scheduling import PLACEMENT_MARK
from cluster.wire import messages as m

KV_PREFIX = "runtime_env/"
MAX_PACKAGE_BYTES = 100 * 1024 * 1024  # one package in the head's KV (Ray's GCS limit was 100 MiB too)

Request = Callable[[m.Message], Awaitable[Any]]  # a KV request to the head, awaited on the trio thread


async def resolve(request: Request, user_env: Mapping[str, Any], uploaded: set[str]) -> dict[str, Any]:
    """The resolved form of a checked user env: directories and files uploaded (once per
    process: ``uploaded`` holds what this process has seen on the head), paths replaced by
    package names."""
    env = dict(user_env)
    excludes = env.pop("excludes", None)
    if "working_dir" in env:
        env["working_dir"] = await _upload_dir(request, env["working_dir"], excludes, uploaded, "working_dir")
    if "py_modules" in env:
        modules = []
        for path in env["py_modules"]:
            if os.path.isdir(path):
                name = await _upload_dir(request, path, excludes, uploaded, "py_modules")
                modules.append({"package": name, "name": os.path.basename(os.path.normpath(path))})
            else:
                modules.append({"file": await _upload_file(request, path, uploaded),
                                "name": os.path.basename(path)})
        env["py_modules"] = modules
    return env


async def _upload_dir(request: Request, path: str, excludes: list[str] | None, uploaded: set[str],
                      field: str) -> str:
    try:
        name, zip_path, _ = packaging.build_package(path, excludes, MAX_PACKAGE_BYTES)
    except ValueError as exc:
        raise ConfigError(f"runtime_env[{field!r}]: {exc}") from None
    try:
        if name not in uploaded:
            with open(zip_path, "rb") as f:
                await _put(request, name, f.read())
            uploaded.add(name)
    finally:
        os.unlink(zip_path)
    return name


async def _upload_file(request: Request, path: str, uploaded: set[str]) -> str:
    with open(path, "rb") as f:
        data = f.read()
    if len(data) > MAX_PACKAGE_BYTES:
        raise ConfigError(f"runtime_env['py_modules']: {path!r} is larger than the "
                          f"{MAX_PACKAGE_BYTES >> 20} MiB a package may be")
    name = f"file_{hashlib.sha256(data).hexdigest()[:32]}"
    if name not in uploaded:
        await _put(request, name, data)
        uploaded.add(name)
    return name


async def _put(request: Request, name: str, data: bytes) -> None:
    key = KV_PREFIX + name
    if not await request(m.KvExists(key)):
        await request(m.KvPut(key, data, False))


def shape_with_env(shape: tuple[tuple[str, float], ...],
                   resolved: Mapping[str, Any] | None) -> tuple[tuple[tuple[str, float], ...], str]:
    """The owner's queue key of tasks of ``shape`` in env ``resolved``: the shape and a
    pseudo-resource naming the env (stripped before a node sees the shape); and the env's id."""
    if not resolved:
        return shape, ""
    ident = renv.env_id(resolved)
    return (*shape, (renv.ENV_MARK + ident, 0.0)), ident


def plain_shape(shape: tuple[tuple[str, float], ...]) -> dict[str, float]:
    """The resources of a queue's key, without the pseudo-resources naming its env and placement."""
    return {name: amount for name, amount in shape
            if not name.startswith(renv.ENV_MARK) and not name.startswith(PLACEMENT_MARK)}
