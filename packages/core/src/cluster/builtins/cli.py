"""Built-in plugin ``cli``: core's own ``cluster`` subcommands (start, stop, status, ...)."""

from __future__ import annotations

from typing import Any

from cluster.cli.commands import builtin_commands
from cluster.hookspec import hookimpl


@hookimpl
def cluster_add_commands(cli: Any) -> None:
    for command in builtin_commands():
        cli.add_command(command)
