"""cluster-autoscaler's hooks: the built-in providers, the autoscaler head service, its lines in
`cluster status`, and `cluster up` / `cluster down`."""

from __future__ import annotations

from typing import Any

from cluster.hookspec import hookimpl

# Declared as the plugin loads: a daemon decodes a frame before any service of ours runs, and
# a message whose type it does not know yet (say a GetStatus to a head with no autoscaler
# started) would close the connection instead of getting the service's answer.
from cluster_autoscaler import messages  # noqa: F401


@hookimpl
def cluster_make_provider(config: Any, context: Any) -> Any:
    from cluster_autoscaler.local import FakeProvider, LocalProvider

    kinds = {"local": LocalProvider, "fake": FakeProvider}
    kind = kinds.get(config.provider.type)
    return None if kind is None else kind(context, dict(config.provider.options))


@hookimpl
def cluster_head_services(head: Any) -> list | None:
    if not head.autoscaling_config:
        return None
    from cluster_autoscaler.service import AutoscalerService

    return [AutoscalerService(head, head.autoscaling_config).run]


@hookimpl
def cluster_status_lines(request: Any, explain: bool) -> list[str] | None:
    from cluster.errors import RemoteCallError
    from cluster.wire import messages as m
    from cluster_autoscaler.messages import GetStatus
    from cluster_autoscaler.service import SERVICE, status_lines

    try:
        report = request(m.ServiceRequest(SERVICE, GetStatus()))
    except RemoteCallError:  # no autoscaler on this head
        return None
    return status_lines(report, explain)


@hookimpl
def cluster_add_commands(cli: Any) -> None:
    from cluster_autoscaler.cli import down, up

    cli.add_command(up)
    cli.add_command(down)
