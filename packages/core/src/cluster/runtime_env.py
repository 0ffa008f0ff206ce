"""Runtime envs as values: Ray's ``runtime_env`` dict checked, normalized, merged and named.

A *user* env is what a user passes (``runtime_env=`` on ``@cluster.remote``, ``.options()``
or ``cluster.init()``): local paths, a requirements file, Ray's several spellings of ``pip``.
:func:`check` turns it into a normalized user env (or raises ConfigError naming the field).
The owner then uploads its local directories and files (``cluster.owner.envs``) and gets a
*resolved* env: plain JSON-able data that names packages by content hash, the same on every
process. A resolved env's :func:`env_id` keys the worker pool of every node (a worker runs in
exactly one env); :func:`venv_key` keys the virtualenv of its ``pip``/``uv`` part, so envs
that differ only in env vars share one virtualenv on a node.

Merging follows Ray: a task's env overrides its job's (``cluster.init(runtime_env=)``) or its
parent task's field by field, except ``env_vars``, which are merged (the child's win).

Imports: errors only (pure; docs/design/0015-runtime-envs.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import types
from collections.abc import Mapping
from typing import Any

from cluster.errors import ConfigError

KNOWN_FIELDS = ("config", "env_vars", "excludes", "pip", "py_modules", "uv", "working_dir")
# Ray's fields we do not do: named in the error, so nobody thinks they were misspelt.
UNSUPPORTED_FIELDS = ("conda", "container", "image_uri", "java_jars", "mpi", "nsight", "py_executable",
                      "rocprof_sys", "worker_process_setup_hook")
CONFIG_FIELDS = ("eager_install", "setup_timeout_seconds")
DEFAULT_SETUP_TIMEOUT_S = 600  # Ray's
ENV_MARK = "runtime_env:"  # a shape's pseudo-resource naming the env (owners key queues by it)
_REMOTE = ("s3://", "gs://", "http://", "https://", "gcs://", "file://")


def check(env: Any, where: str = "runtime_env") -> dict[str, Any]:
    """The normalized form of a user's ``runtime_env`` (local paths made absolute, ``pip``
    and ``uv`` as dicts); raises ConfigError naming what is wrong."""
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise ConfigError(f"{where} must be a dict or None, got {type(env).__name__}")
    unsupported = sorted(set(env) & set(UNSUPPORTED_FIELDS))
    if unsupported:
        raise ConfigError(f"{where} field(s) {unsupported} are not supported here; supported fields: "
                          f"{list(KNOWN_FIELDS)}")
    unknown = sorted(set(env) - set(KNOWN_FIELDS), key=str)
    if unknown:
        raise ConfigError(f"unknown {where} field(s) {unknown}; known fields: {list(KNOWN_FIELDS)}")
    out: dict[str, Any] = {}
    if env.get("env_vars") is not None:
        env_vars = env["env_vars"]
        if not isinstance(env_vars, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
            raise ConfigError(f"{where}['env_vars'] must map strings to strings, got {env_vars!r}")
        out["env_vars"] = dict(env_vars)
    if env.get("working_dir") is not None:
        out["working_dir"] = _local_dir(env["working_dir"], f"{where}['working_dir']")
    if env.get("excludes") is not None:
        excludes = env["excludes"]
        if not isinstance(excludes, list | tuple) or not all(isinstance(p, str) for p in excludes):
            raise ConfigError(f"{where}['excludes'] must be a list of .gitignore-style patterns, got {excludes!r}")
        out["excludes"] = list(excludes)
    if env.get("py_modules") is not None:
        modules = env["py_modules"]
        if not isinstance(modules, list | tuple):
            raise ConfigError(f"{where}['py_modules'] must be a list of local module directories or "
                              f".whl/.zip files, got {type(modules).__name__}")
        out["py_modules"] = [_py_module(item, f"{where}['py_modules']") for item in modules]
    if env.get("pip") is not None and env.get("uv") is not None:
        raise ConfigError(f"{where} takes 'pip' or 'uv', not both: put all the requirements in one")
    if env.get("pip") is not None:
        out["pip"] = _requirements(env["pip"], "pip", where)
    if env.get("uv") is not None:
        out["uv"] = _requirements(env["uv"], "uv", where)
    if env.get("config") is not None:
        out["config"] = _config(env["config"], where)
    return out


def _local_dir(value: Any, what: str) -> str:
    if not isinstance(value, str | os.PathLike):
        raise ConfigError(f"{what} must be a local directory path, got {value!r}")
    path = os.fspath(value)
    if path.startswith(_REMOTE):
        raise ConfigError(f"{what} {path!r}: remote URIs are not supported here; give a local "
                          "directory (it is zipped and uploaded for you)")
    if not os.path.isdir(path):
        raise ConfigError(f"{what} {path!r} is not a directory")
    return os.path.abspath(path)


def _py_module(item: Any, what: str) -> str:
    if isinstance(item, types.ModuleType):  # Ray takes a module object: its package directory
        file = getattr(item, "__file__", None)
        if not file:
            raise ConfigError(f"{what}: module {item.__name__} has no file to ship")
        item = os.path.dirname(file) if os.path.basename(file) == "__init__.py" else file
    if not isinstance(item, str | os.PathLike):
        raise ConfigError(f"{what} entries must be paths or modules, got {item!r}")
    path = os.fspath(item)
    if path.startswith(_REMOTE):
        raise ConfigError(f"{what} {path!r}: remote URIs are not supported here; give a local path")
    if os.path.isdir(path):
        return os.path.abspath(path)
    if os.path.isfile(path) and path.endswith((".whl", ".zip")):
        return os.path.abspath(path)
    raise ConfigError(f"{what} {path!r} is neither a directory nor a .whl/.zip file")


_PIP_KEYS = {"pip": ("packages", "pip_check", "pip_version", "pip_install_options"),
             "uv": ("packages", "uv_check", "uv_version", "uv_pip_install_options")}


def _requirements(value: Any, field: str, where: str) -> dict[str, Any]:
    """Ray's three forms (a list, a requirements.txt path, a dict) as one dict."""
    what = f"{where}[{field!r}]"
    if isinstance(value, str | os.PathLike):
        value = {"packages": os.fspath(value)}
    elif isinstance(value, list | tuple):
        value = {"packages": list(value)}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a list of requirements, a path to a requirements.txt, or a dict "
                          f"with 'packages', got {type(value).__name__}")
    unknown = sorted(set(value) - set(_PIP_KEYS[field]))
    if unknown:
        raise ConfigError(f"unknown {what} key(s) {unknown}; known: {list(_PIP_KEYS[field])}")
    packages = value.get("packages")
    if isinstance(packages, str | os.PathLike):  # a requirements file: read here, as Ray does
        try:
            with open(packages) as f:
                packages = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        except OSError as exc:
            raise ConfigError(f"{what}: could not read the requirements file {os.fspath(value['packages'])!r}: "
                              f"{exc.strerror or exc}") from None
    if not isinstance(packages, list | tuple) or not all(isinstance(p, str) and p.strip() for p in packages):
        raise ConfigError(f"{what} packages must be requirement strings (like 'requests==2.31'), got {packages!r}")
    check_key, version_key = f"{field}_check", f"{field}_version"
    options_key = "pip_install_options" if field == "pip" else "uv_pip_install_options"
    out: dict[str, Any] = {"packages": [p.strip() for p in packages],
                           check_key: bool(value.get(check_key, False))}
    version = value.get(version_key)
    if version is not None:
        if not isinstance(version, str):
            raise ConfigError(f"{what} {version_key} must be a version specifier string like '==23.2', got {version!r}")
        out[version_key] = version
    options = value.get(options_key)
    if options is not None:
        if not isinstance(options, list | tuple) or not all(isinstance(o, str) for o in options):
            raise ConfigError(f"{what} {options_key} must be a list of strings, got {options!r}")
        out[options_key] = list(options)
    return out


def _config(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}['config'] must be a dict like {{'setup_timeout_seconds': 600}}, got {value!r}")
    unknown = sorted(set(value) - set(CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"unknown {where}['config'] key(s) {unknown}; known: {list(CONFIG_FIELDS)}")
    out = dict(value)
    timeout = out.get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or (timeout <= 0 and timeout != -1):
        raise ConfigError(f"{where}['config']['setup_timeout_seconds'] must be a positive integer "
                          f"(or -1: no limit), got {timeout!r}")
    return out


def merge(parent: Mapping[str, Any] | None, child: Mapping[str, Any] | None) -> dict[str, Any]:
    """Ray's rule: the child's fields replace the parent's, except ``env_vars``, merged key by
    key (the child's win)."""
    out = dict(parent or {})
    for field, value in (child or {}).items():
        if field == "env_vars":
            out["env_vars"] = {**out.get("env_vars", {}), **value}
        else:
            out[field] = value
    return out


def canonical(env: Mapping[str, Any]) -> str:
    return json.dumps(env, sort_keys=True, separators=(",", ":"))


def env_id(resolved: Mapping[str, Any]) -> str:
    """The name of a resolved env: the same env, the same id, on every process (its
    ``config`` says how to set it up, not what it is, so it does not count)."""
    what = {field: value for field, value in resolved.items() if field != "config"}
    return hashlib.blake2b(canonical(what).encode(), digest_size=10).hexdigest()


def venv_key(resolved: Mapping[str, Any]) -> str | None:
    """The name of the virtualenv a resolved env needs (None: it needs none): the hash of its
    ``pip``/``uv`` spec and of the Python that runs it."""
    for installer in ("pip", "uv"):
        spec = resolved.get(installer)
        if spec is not None:
            text = canonical({"installer": installer, "spec": spec, "python": sys.version.split()[0],
                              "prefix": sys.prefix})
            return f"{installer}-" + hashlib.blake2b(text.encode(), digest_size=10).hexdigest()
    return None


def setup_timeout_s(resolved: Mapping[str, Any]) -> float | None:
    """How long setting the env up may take (None: no limit)."""
    timeout = (resolved.get("config") or {}).get("setup_timeout_seconds", DEFAULT_SETUP_TIMEOUT_S)
    return None if timeout == -1 else float(timeout)
