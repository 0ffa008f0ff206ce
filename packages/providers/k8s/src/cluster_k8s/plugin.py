"""cluster-k8s's hooks: the kubernetes provider, `cluster up/down` for it, and `cluster k8s`."""

from __future__ import annotations

from typing import Any

from cluster.hookspec import hookimpl


@hookimpl
def cluster_make_provider(config: Any, context: Any) -> Any:
    if config.provider.type != "kubernetes":
        return None
    from cluster_k8s.provider import KubernetesProvider

    return KubernetesProvider(config, context)


@hookimpl
def cluster_provider_up(config: Any, config_path: str, timeout: float) -> bool | None:
    if config.provider.type != "kubernetes":
        return None
    from cluster_k8s.up import up

    up(config, config_path, timeout)
    return True


@hookimpl
def cluster_provider_down(config: Any, config_path: str) -> bool | None:
    if config.provider.type != "kubernetes":
        return None
    from cluster_k8s.up import down

    down(config, config_path)
    return True


@hookimpl
def cluster_add_commands(cli: Any) -> None:
    from cluster_k8s.cli import k8s

    cli.add_command(k8s)
