"""cluster-autoscaler's hooks: the built-in providers, the autoscaler head service, its lines in
`cluster status`, and `cluster up` / `cluster down`.

This module loads in every process that builds the plugin manager, every worker too: at the
top it imports only what such a process has loaded already. The providers, the service and
the commands (click) load when their hook runs.
"""

from __future__ import annotations

from typing import Any

from cluster.errors import RemoteCallError
from cluster.hookspec import hookimpl
from cluster.wire import messages as m

# Declared as the plugin loads: a daemon decodes a frame before any service of ours runs, and
# a message whose type it does not know yet (say a GetStatus to a head with no autoscaler
# started) would close the connection instead of getting the service's answer.
from cluster_autoscaler.messages import GetStatus


@hookimpl
def cluster_make_provider(config: Any, context: Any) -> Any:
    # loaded when the hook runs: only the autoscaler and cluster up/down make providers
    from cluster_autoscaler.local import FakeProvider, LocalProvider

    kinds = {"local": LocalProvider, "fake": FakeProvider}
    kind = kinds.get(config.provider.type)
    return None if kind is None else kind(context, dict(config.provider.options))


@hookimpl
def cluster_head_services(head: Any) -> list | None:
    if not head.autoscaling_config:
        return None
    from cluster_autoscaler.service import AutoscalerService  # only an autoscaling head loads it

    return [AutoscalerService(head, head.autoscaling_config).run]


@hookimpl
def cluster_status_lines(request: Any, explain: bool) -> list[str] | None:
    from cluster_autoscaler.service import SERVICE, status_lines  # loaded for cluster status only

    try:
        report = request(m.ServiceRequest(SERVICE, GetStatus()))
    except RemoteCallError:  # no autoscaler on this head
        return None
    return status_lines(report, explain)


@hookimpl
def cluster_add_commands(cli: Any) -> None:
    from cluster_autoscaler.cli import down, up  # click loads only for the cluster command

    cli.add_command(up)
    cli.add_command(down)
