"""One throwaway redis-server per test module (``cluster_redis.testing.RedisServer``), skipped
with the reason when redis-server is not installed; each test writes under a prefix of its own."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from cluster_redis.testing import RedisServer


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer.started(tcp=True) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"test-{secrets.token_hex(4)}:"
