"""cluster-client's hooks: the job manager and HTTP API on the head, the job runner on every
node, and the `cluster job` commands.

This module loads in every process that builds the plugin manager, every worker too: at the
top it imports only what such a process has loaded already. What each hook needs beyond that
(the wire connection and msgpack, hypercorn, click) loads when the hook runs.
"""

from __future__ import annotations

import functools
from typing import Any

from cluster import api
from cluster.hookspec import hookimpl
from cluster.wire import messages as m

# Declared as the plugin loads: a daemon decodes a frame before any service of ours runs, and
# a message whose type it does not know yet (say a GetStatus to a head with no autoscaler
# started) would close the connection instead of getting the service's answer.
from cluster_client.messages import PrepareWorkingDir


@hookimpl
def cluster_head_services(head: Any) -> list:
    # loaded when the hook runs, on a head only (see the module's docstring)
    from cluster_client.http_api import serve_api
    from cluster_client.jobs import JobManager
    from cluster_client.relay import ClientRelay

    jobs = JobManager(head)
    return [jobs.run, functools.partial(serve_api, head, jobs), ClientRelay(head).run]


@hookimpl
def cluster_node_services(node: Any) -> list:
    from cluster_client.runner import JobRunner  # loaded when the hook runs (see the docstring)

    return [JobRunner(node).run]


@hookimpl
def cluster_add_commands(cli: Any) -> None:
    from cluster_client.cli import job  # click loads only for the cluster command

    cli.add_command(job)


@hookimpl
def cluster_connect(address: str, token: str | None) -> Any:
    if not address.startswith("cluster://"):
        return None
    from cluster_client.remote import connect  # only a cluster:// client needs it

    return connect(address, token)


@hookimpl
def cluster_working_dir(package: str) -> str | None:
    # loaded when the hook runs: jobs brings the wire connection (see the docstring)
    from cluster_client.jobs import RUNNER_SERVICE

    runtime = api.current_runtime()
    return runtime.call_async(runtime.node_conn.request,
                              m.ServiceRequest(RUNNER_SERVICE, PrepareWorkingDir(package)))
