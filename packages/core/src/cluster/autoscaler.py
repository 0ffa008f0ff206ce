"""``cluster.autoscaler.request_resources``: ask the cluster's autoscaler for capacity.

The request is kept on the head; an autoscaler (cluster-autoscaler) sizes the cluster so that
these bundles would fit, on top of the work already waiting, until the next request replaces
it. Without an autoscaler, it changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from cluster import api
from cluster.errors import ConfigError
from cluster.wire import messages as m

REQUESTED_KEY = "autoscaler/requested_resources"


def request_resources(num_cpus: int | None = None, bundles: Sequence[Mapping[str, float]] | None = None) -> None:
    """Keep room for ``num_cpus`` 1-CPU bundles plus ``bundles`` (each a resource shape, e.g.
    ``{"CPU": 4, "accel": 1}``); ``request_resources()`` withdraws the request."""

    wanted = [dict(b) for b in bundles or ()]
    for bundle in wanted:
        if not bundle or not all(isinstance(k, str) and isinstance(v, int | float) and v >= 0 for k, v in bundle.items()):
            raise ConfigError(f"each bundle must map resource names to non-negative amounts, got {bundle!r}")
    if num_cpus is not None:
        if not isinstance(num_cpus, int) or num_cpus < 0:
            raise ConfigError(f"num_cpus must be a non-negative integer, got {num_cpus!r}")
        wanted += [{"CPU": 1}] * num_cpus
    runtime = api.current_runtime()
    runtime.call_async(runtime.kv_request, m.KvPut(REQUESTED_KEY, json.dumps(wanted).encode(), True))
