"""The plugin manager: built-in plugins first, then the ``cluster.plugins`` entry points."""

from __future__ import annotations

import functools
import importlib
import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

import pluggy
import structlog

from cluster import hookspec
from cluster.errors import ConfigError

if TYPE_CHECKING:
    from cluster_store import SpillTarget

    from cluster.contracts import MetadataStore, ObjectStore

ENTRY_POINT_GROUP = "cluster.plugins"
# name -> module; registered exactly like a third party's plugin, and can be disabled the same way.
BUILTIN_PLUGINS = {
    "store": "cluster.builtins.objectstore",
    "spilling": "cluster.builtins.spilling",
    "metadata": "cluster.builtins.metadata",
    "scheduler": "cluster.builtins.scheduler",
    "cli": "cluster.builtins.cli",
}

log = structlog.get_logger("cluster.plugins")


def disabled_plugins() -> set[str]:
    return {name.strip() for name in os.environ.get("CLUSTER_DISABLE_PLUGINS", "").split(",") if name.strip()}


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, built on first use."""
    pm = pluggy.PluginManager("cluster")
    pm.add_hookspecs(hookspec)
    disabled = disabled_plugins()
    for name, module in BUILTIN_PLUGINS.items():
        if name not in disabled:
            pm.register(importlib.import_module(module), name=name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in disabled or pm.has_plugin(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise ConfigError(
                f"the cluster plugin {ep.name!r} ({ep.value}) failed to load: {exc}. Fix or "
                f"uninstall it, or disable it with CLUSTER_DISABLE_PLUGINS={ep.name}"
            ) from exc
        pm.register(plugin, name=ep.name)
    pm.check_pending()
    return pm


def make_object_store(path: str, node: dict[str, Any]) -> ObjectStore:
    """The object store for a node, from the first plugin that provides one."""
    store = get_plugin_manager().hook.cluster_make_object_store(path=path, node=node)
    if store is None:
        raise ConfigError(_nobody_answered("cluster_make_object_store", "an object store"))
    return store


def make_spill_target(node: dict) -> SpillTarget | None:
    """Where a node's object store spills, from the first plugin that says; None: spilling off."""
    return get_plugin_manager().hook.cluster_make_spill_target(node=node)


def make_metadata_store(url: str) -> MetadataStore:
    """The head's metadata store at ``url``, from the first plugin that knows its scheme."""
    store = get_plugin_manager().hook.cluster_make_metadata_store(url=url)
    if store is None:
        scheme, sep, _ = url.partition("://")
        named = f"URLs of the scheme {scheme}://" if sep else f"{url!r} (not a URL)"  # no password shown
        off = ", ".join(sorted(disabled_plugins())) or "none"
        raise ConfigError(f"no installed plugin opens metadata stores at {named}; core opens "
                          "sqlite:///PATH, cluster-redis redis://, rediss:// and unix:// (pip install "
                          f"cluster-redis). Disabled plugins: {off}.")
    return store


def working_dir_of(package: str) -> str:
    """Where the job package ``package`` is unpacked on this node (in a worker; see the hook)."""
    path = get_plugin_manager().hook.cluster_working_dir(package=package)
    if path is None:
        raise ConfigError(f"this task comes from a job with the working dir {package}, and no installed "
                          "plugin provides working dirs here; install cluster-client on every node")
    return path


def make_scheduler(node: object) -> object:
    """The scheduling policy for a node, from the first plugin that provides one."""
    policy = get_plugin_manager().hook.cluster_make_scheduler(node=node)
    if policy is None:
        raise ConfigError(_nobody_answered("cluster_make_scheduler", "a scheduling policy"))
    return policy


def _nobody_answered(hook: str, what: str) -> str:
    off = ", ".join(sorted(disabled_plugins())) or "none"
    return (
        f"no plugin provides {what} (hook {hook}); disabled plugins: {off}. Re-enable the "
        "built-in plugin or install a plugin that implements the hook."
    )
