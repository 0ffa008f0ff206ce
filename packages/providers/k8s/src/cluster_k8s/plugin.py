"""cluster-k8s's hooks: the `cluster k8s` commands."""

from __future__ import annotations

from typing import Any

from cluster.hookspec import hookimpl


@hookimpl
def cluster_add_commands(cli: Any) -> None:
    from cluster_k8s.cli import k8s

    cli.add_command(k8s)
