"""cluster-autoscaler's hooks: the built-in providers."""

from __future__ import annotations

from typing import Any

from cluster.hookspec import hookimpl


@hookimpl
def cluster_make_provider(config: Any, context: Any) -> Any:
    from cluster_autoscaler.local import FakeProvider, LocalProvider

    kinds = {"local": LocalProvider, "fake": FakeProvider}
    kind = kinds.get(config.provider.type)
    return None if kind is None else kind(context, dict(config.provider.options))
