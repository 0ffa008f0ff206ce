"""cluster-client's hooks: the job manager and HTTP API on the head, the job runner on every
node, and the `cluster job` commands."""

from __future__ import annotations

import functools
from typing import Any

from cluster.hookspec import hookimpl

# Declared as the plugin loads: a daemon decodes a frame before any service of ours runs, and
# a message whose type it does not know yet (say a GetStatus to a head with no autoscaler
# started) would close the connection instead of getting the service's answer.
from cluster_client import messages  # noqa: F401


@hookimpl
def cluster_head_services(head: Any) -> list:
    from cluster_client.http_api import serve_api
    from cluster_client.jobs import JobManager
    from cluster_client.relay import ClientRelay

    jobs = JobManager(head)
    return [jobs.run, functools.partial(serve_api, head, jobs), ClientRelay(head).run]


@hookimpl
def cluster_node_services(node: Any) -> list:
    from cluster_client.runner import JobRunner

    return [JobRunner(node).run]


@hookimpl
def cluster_add_commands(cli: Any) -> None:
    from cluster_client.cli import job

    cli.add_command(job)


@hookimpl
def cluster_connect(address: str, token: str | None) -> Any:
    if not address.startswith("cluster://"):
        return None
    from cluster_client.remote import connect

    return connect(address, token)


@hookimpl
def cluster_working_dir(package: str) -> str | None:
    from cluster import api
    from cluster.wire import messages as m
    from cluster_client.jobs import RUNNER_SERVICE
    from cluster_client.messages import PrepareWorkingDir

    runtime = api.current_runtime()
    return runtime.call_async(runtime.node_conn.request,
                              m.ServiceRequest(RUNNER_SERVICE, PrepareWorkingDir(package)))
