"""The provider contract: how the autoscaler gets and gives back machines.

What a provider may assume of its caller, and what the caller assumes of it:

- **Asynchronous.** ``launch`` and ``terminate`` return once the request is accepted, not
  when machines are up or gone. ``non_terminated`` says how things stand.
- **Eventually consistent.** ``non_terminated`` may lag behind requests: an instance just
  launched may be missing for a while, and one just terminated may linger. The caller
  reconciles by set difference on every round; it keeps no event bookkeeping.
- **Unique ids.** Instance ids are never reused.
- **Idempotent per request id.** The same ``request_id`` twice does the work once, so a
  caller that is not sure a request went through sends it again.
- **Nodes are matched to instances** by ``Instance.node_id`` or, for a provider that cannot
  learn node ids, by the node label ``cluster.dev/instance`` (``INSTANCE_LABEL``) set to the
  instance id when the node is started.
- **Failures are data.** A launch that fails does not raise. It shows up in ``poll_errors``,
  once, with the node type and a message a person can act on. Calls raise only when the
  provider itself cannot work (bad configuration, say).

A provider is made by the ``cluster_make_provider`` hook (firstresult, keyed on the config's
``provider.type``). ``cluster_autoscaler.testing`` is the conformance kit that checks a
provider against this contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from cluster.plugins import get_plugin_manager
from cluster_autoscaler.config import ClusterConfig, NodeType
from cluster_autoscaler.errors import ClusterConfigError

INSTANCE_LABEL = "cluster.dev/instance"


@attrs.frozen
class Instance:
    instance_id: str
    node_type: str
    state: str  # "pending" (starting) or "running" (its node daemon is up)
    node_id: str | None = None  # the cluster's id for its node, once known
    launched_at: float = 0.0  # time.time()
    request_id: str = ""


@attrs.frozen
class ProviderError:
    request_id: str
    node_type: str | None
    message: str
    at: float  # time.time()


@attrs.frozen
class ProviderContext:
    """What a provider is told about the cluster it serves."""

    cluster_name: str
    head_address: str  # HOST:PORT that new nodes join
    token: str
    state_dir: str  # where a provider may keep files (per cluster)


class Provider(Protocol):
    async def launch(self, node_type: NodeType, count: int, request_id: str) -> None:
        """Start ``count`` nodes of ``node_type`` (its resources, labels and node_config)."""

    async def terminate(self, instance_ids: Sequence[str], request_id: str) -> None:
        """Stop these instances; ids it does not know are ignored."""

    async def non_terminated(self) -> dict[str, Instance]:
        """Every instance that is starting or running (eventually consistent)."""

    async def poll_errors(self) -> list[ProviderError]:
        """Failures since the last call (each reported once)."""


def make_provider(config: ClusterConfig, context: ProviderContext) -> Any:
    """The provider for ``config.provider.type``, from the first plugin that knows the type."""
    provider = get_plugin_manager().hook.cluster_make_provider(config=config, context=context)
    if provider is None:
        raise ClusterConfigError(
            f"no installed plugin provides provider type {config.provider.type!r}; built in: local, fake "
            "(a provider plugin adds its own, e.g. pip install cluster-k8s for 'kubernetes')")
    return provider
