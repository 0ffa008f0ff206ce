"""cluster-redis's hook: the head's metadata store on Redis, for redis-py's URLs.

This module loads in every process that builds the plugin manager, every worker too; redis-py
loads only when the head opens a Redis URL.
"""

from __future__ import annotations

from cluster.contracts import MetadataStore
from cluster.hookspec import hookimpl
from cluster_redis.url import is_redis_url


@hookimpl
def cluster_make_metadata_store(url: str) -> MetadataStore | None:
    if not is_redis_url(url):
        return None
    # redis-py loads for a Redis URL only (see the docstring)
    from cluster_redis.store import RedisMetadataStore

    return RedisMetadataStore.from_url(url)
