"""The plugin module named by the ``cluster.plugins`` entry point ``shell``.

cluster's plugin manager registers this module in every process; ``cluster_make_provider``
is asked for a provider whenever the autoscaler (or ``cluster up/down``) needs one. It is a
firstresult hook: answer only for your own ``provider.type`` and return None otherwise, so
the other providers' plugins get their turn.
"""

from __future__ import annotations

from typing import Any

import cluster

PROVIDER_TYPE = "shell"


@cluster.hookimpl
def cluster_make_provider(config: Any, context: Any) -> Any:
    if config.provider.type != PROVIDER_TYPE:
        return None
    from cluster_provider_shell.provider import ShellProvider  # imported only when asked for

    return ShellProvider(context, dict(config.provider.options))
