"""cluster-redis: the metadata store contract on a real redis-server, its URLs, and its errors."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from cluster_redis.store import RedisMetadataStore
from cluster_redis.testing import RedisServer
from cluster_redis.url import DEFAULT_PREFIX, is_redis_url, parse_redis_url, shown

from cluster.errors import ClusterConnectionError, ClusterError, ConfigError
from cluster.plugins import get_plugin_manager, make_metadata_store
from cluster.testing import MetadataStoreConformance

# ------------------------------------------------------------------ the contract


class TestRedisOverUnixSocket(MetadataStoreConformance):
    @pytest.fixture
    def metadata_store_url(self, redis_server: RedisServer, prefix: str) -> str:
        return redis_server.url(prefix=prefix)


class TestRedisOverTcp(MetadataStoreConformance):
    @pytest.fixture
    def metadata_store_url(self, redis_server: RedisServer, prefix: str) -> str:
        return redis_server.tcp_url(prefix=prefix, db=3)


# ------------------------------------------------------------------ URLs


def test_the_plugin_answers_redis_py_s_schemes_only() -> None:
    assert all(is_redis_url(u) for u in ("redis://h:6379/0", "REDIS://h", "rediss://h:6380/1",
                                         "unix:///run/redis.sock"))
    assert not any(is_redis_url(u) for u in ("sqlite:///x.db", "redis+unix:///x.sock", "redis", "/tmp/redis.sock"))
    assert get_plugin_manager().hook.cluster_make_metadata_store(url="sqlite-ish://nothing") is None


def test_the_prefix_option_is_ours_and_the_rest_goes_to_redis_py() -> None:
    url = parse_redis_url("unix:///run/redis.sock?db=2&prefix=team-a:&socket_timeout=1.5")
    assert url.prefix == "team-a:"
    assert url.connect == "unix:///run/redis.sock?db=2&socket_timeout=1.5"
    assert parse_redis_url("redis://127.0.0.1:6379/0").prefix == DEFAULT_PREFIX == "cluster:"
    assert parse_redis_url("redis://h/0?prefix=").prefix == ""
    with pytest.raises(ConfigError, match="prefix= 2 times"):
        parse_redis_url("redis://h/0?prefix=a&prefix=b")


def test_a_url_is_shown_without_its_password() -> None:
    assert shown("redis://:s3cret@h:6379/0?prefix=x") == "redis://:***@h:6379/0?prefix=x"
    assert shown("rediss://bob:s%40cret@h:6380/1") == "rediss://bob:***@h:6380/1"
    assert shown("redis://bob@h/0") == "redis://bob@h/0"
    assert shown("unix:///run/redis.sock?password=s3cret&db=1") == "unix:///run/redis.sock?password=***&db=1"
    assert shown("unix://:s3cret@/run/redis.sock") == "unix://:***@/run/redis.sock"
    assert "s3cret" not in shown("redis://:s3cret@[::1/0")


# ------------------------------------------------------------------ what it keeps in Redis


def test_records_are_a_hash_and_a_sorted_set_under_the_prefix(redis_server: RedisServer, prefix: str) -> None:
    store = make_metadata_store(redis_server.url(prefix=prefix))
    assert isinstance(store, RedisMetadataStore)
    try:
        store.put("jobs", "j1", {"status": "PENDING"})
        store.put("jobs", "j2", {"status": "RUNNING"})
        store.put("jobs", "j1", {"status": "SUCCEEDED"})
    finally:
        store.close()
    client = redis_server.client()
    assert sorted(client.keys(f"{prefix}*")) == [f"{prefix}order:jobs", f"{prefix}rows:jobs", f"{prefix}seq"]
    assert json.loads(client.hget(f"{prefix}rows:jobs", "j1")) == {"status": "SUCCEEDED"}
    assert client.zrange(f"{prefix}order:jobs", 0, -1) == ["j1", "j2"]


def test_two_clusters_with_their_own_prefixes_share_one_redis(redis_server: RedisServer) -> None:
    a = make_metadata_store(redis_server.url(prefix="team-a:"))
    b = make_metadata_store(redis_server.url(prefix="team-b:"))
    try:
        a.put("jobs", "j1", "a's")
        b.put("jobs", "j1", "b's")
        assert a.items("jobs") == [("j1", "a's")] and b.items("jobs") == [("j1", "b's")]
        assert a.delete("jobs", "j1") and b.get("jobs", "j1") == "b's"
    finally:
        a.close()
        b.close()


def test_a_prefix_over_keys_of_another_kind_is_an_error_saying_so(redis_server: RedisServer, prefix: str) -> None:
    redis_server.client().set(f"{prefix}rows:jobs", "someone else's string")
    store = make_metadata_store(redis_server.url(prefix=prefix))
    try:
        with pytest.raises(ClusterError, match="not a cluster's") as caught:
            store.get("jobs", "j1")
        assert "?prefix=" in str(caught.value)
    finally:
        store.close()


# ------------------------------------------------------------------ errors a user can make


def test_nothing_listening_is_a_config_error_naming_the_url(redis_server: RedisServer) -> None:
    with pytest.raises(ConfigError) as caught:
        make_metadata_store(f"unix://{redis_server.root / 'nobody.sock'}?prefix=p:")
    message = str(caught.value)
    assert f"cannot reach Redis at unix://{redis_server.root / 'nobody.sock'}?prefix=p:" in message
    assert "Start redis-server there" in message and caught.value.__cause__ is None
    with pytest.raises(ConfigError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1/0.*Connection refused"):
        make_metadata_store("redis://127.0.0.1:1/0")


def test_a_malformed_url_or_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"redis://127\.0\.0\.1:notaport/0 is not valid"):
        make_metadata_store("redis://127.0.0.1:notaport/0")
    with pytest.raises(ConfigError, match="cannot be parsed"):
        make_metadata_store("redis://[::1/0")


def test_an_unknown_option_or_database_is_a_config_error(redis_server: RedisServer) -> None:
    with pytest.raises(ConfigError, match=r"an option redis-py does not know.*bogus"):
        make_metadata_store(redis_server.url(bogus="1"))
    with pytest.raises(ConfigError, match="a database that Redis does not have"):
        make_metadata_store(redis_server.url(db=99))


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisServer]:
    with RedisServer.started(password="s3cret p@ss", tcp=True) as server:
        yield server


def test_a_wrong_or_missing_password_is_a_config_error_that_does_not_show_it(locked_redis: RedisServer) -> None:
    for url in (locked_redis.url(password="wrong"), locked_redis.tcp_url(password="wrong"),
                locked_redis.url(password="") + "&password=wrong"):
        with pytest.raises(ConfigError, match="refused the user name or password") as caught:
            make_metadata_store(url)
        assert "wrong" not in str(caught.value) and "***" in str(caught.value)
    with pytest.raises(ConfigError, match="needs a password and the URL gives none"):
        make_metadata_store(locked_redis.url(password=""))
    store = make_metadata_store(locked_redis.tcp_url(prefix="ok:"))
    try:
        store.put("jobs", "j1", "in")
        assert store.get("jobs", "j1") == "in"
    finally:
        store.close()


# ------------------------------------------------------------------ a Redis that goes away


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of the test's own, to kill or pause."""
    with RedisServer.started() as server:
        yield server


def test_a_redis_that_dies_gives_an_error_naming_it_and_a_new_one_is_used(own_redis: RedisServer) -> None:
    store = make_metadata_store(own_redis.url(prefix="p:"))
    try:
        store.put("jobs", "j1", "before")
        own_redis.kill()
        started = time.monotonic()
        with pytest.raises(ClusterConnectionError) as caught:
            store.put("jobs", "j2", "while down")
        assert time.monotonic() - started < 3
        assert f"lost the metadata store {own_redis.url(prefix='p:')} (writing jobs/j2)" in str(caught.value)
        own_redis.restart()  # empty: it kept nothing (--save '')
        store.put("jobs", "j3", "after")  # the store reconnects by itself
        assert store.items("jobs") == [("j3", "after")]
    finally:
        store.close()


def test_a_redis_that_stops_answering_times_out_naming_it(own_redis: RedisServer) -> None:
    store = make_metadata_store(own_redis.url(prefix="p:", socket_timeout="0.5"))
    try:
        store.put("jobs", "j1", "before")
        own_redis.pause()
        try:
            started = time.monotonic()
            with pytest.raises(ClusterConnectionError, match=r"did not answer within 0\.5 s \(listing jobs\)"):
                store.items("jobs")
            assert time.monotonic() - started < 3
        finally:
            own_redis.resume()
        assert store.get("jobs", "j1") == "before"
    finally:
        store.close()
