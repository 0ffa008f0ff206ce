"""cluster-k8s's hooks: the kubernetes provider, `cluster up/down` for it, and `cluster k8s`.

This module loads in every process that builds the plugin manager, every worker too; what the
hooks need (the provider and its manifests with yaml, click) loads only when a hook answers.
"""

from __future__ import annotations

from typing import Any

from cluster.hookspec import hookimpl


@hookimpl
def cluster_make_provider(config: Any, context: Any) -> Any:
    if config.provider.type != "kubernetes":
        return None
    from cluster_k8s.provider import KubernetesProvider  # for kubernetes only (see the docstring)

    return KubernetesProvider(config, context)


@hookimpl
def cluster_provider_up(config: Any, config_path: str, timeout: float) -> bool | None:
    if config.provider.type != "kubernetes":
        return None
    from cluster_k8s.up import up  # loaded for a kubernetes config only (see the docstring)

    up(config, config_path, timeout)
    return True


@hookimpl
def cluster_provider_down(config: Any, config_path: str) -> bool | None:
    if config.provider.type != "kubernetes":
        return None
    from cluster_k8s.up import down  # loaded for a kubernetes config only (see the docstring)

    down(config, config_path)
    return True


@hookimpl
def cluster_add_commands(cli: Any) -> None:
    from cluster_k8s.cli import k8s  # click loads only for the cluster command

    cli.add_command(k8s)
