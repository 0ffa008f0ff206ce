"""The head's metadata store in Redis, through redis-py.

Under the URL's prefix P (``cluster:`` unless ``?prefix=`` says otherwise), table T is two keys:
``P rows:T``, a hash from each key to its JSON value, and ``P order:T``, a sorted set from each key
to the sequence number of its first write (``P seq``, one counter for every table). ``items``
lists a table by that number: in the order its keys were first written, as core's SQLite store
does (an overwrite keeps a key's place; a key deleted and written again goes last). A write is
one Lua script, so the hash and the sorted set never disagree.

Every call is bounded by the client's timeouts (5 s unless the URL's ``socket_timeout`` and
``socket_connect_timeout`` say otherwise) and reconnects once if its connection broke, so a head
outlives a Redis restart and never hangs on a Redis that went away: it gets a
``ClusterConnectionError`` naming the store.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import attrs
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cluster.errors import ClusterConnectionError, ClusterError, ConfigError
from cluster_redis.url import RedisUrl, parse_redis_url

TIMEOUT_S = 5.0  # connect and answer; the head calls the store on its event loop

# KEYS: rows, order, seq; ARGV: key, JSON value.
_PUT = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
"""

_ADDRESS_HELP = ("--metadata-store takes redis://[:PASSWORD@]HOST[:PORT][/DB] or "
                 "unix://[:PASSWORD@]/PATH/redis.sock[?db=N], optionally with ?prefix=")


@attrs.define
class RedisMetadataStore:
    """Tables of JSON values in one Redis database, under a key prefix."""

    url: RedisUrl
    _client: redis.Redis
    _put: Any = attrs.field(init=False)  # the write script, run by its SHA once Redis knows it

    def __attrs_post_init__(self) -> None:
        self._put = self._client.register_script(_PUT)

    @classmethod
    def from_url(cls, url: str) -> RedisMetadataStore:
        """Connect and check that Redis answers; ConfigError saying what to fix if it does not."""
        parsed = parse_redis_url(url)
        try:
            client = redis.Redis.from_url(
                parsed.connect, decode_responses=True, socket_timeout=TIMEOUT_S,
                socket_connect_timeout=TIMEOUT_S, retry=Retry(NoBackoff(), 1, (redis.ConnectionError,)),
            )
        except ValueError as exc:  # from redis-py's reading of the URL: a port that is no number, ...
            raise ConfigError(f"the metadata store URL {parsed.shown} is not valid: {exc}. "
                              f"{_ADDRESS_HELP}") from None
        try:
            client.ping()
        except (redis.RedisError, TypeError) as exc:
            timeout = client.connection_pool.connection_kwargs.get("socket_connect_timeout")
            client.close()
            raise ConfigError(_why_unusable(parsed, exc, timeout)) from None
        return cls(parsed, client)

    # ------------------------------------------------------------------ MetadataStore

    def put(self, table: str, key: str, value: Any) -> None:
        document = json.dumps(value)  # before Redis: a value that is no JSON changes nothing
        with self._reaching(f"writing {table}/{key}"):
            self._put(keys=[self._rows(table), self._order(table), self.url.prefix + "seq"],
                      args=[key, document])

    def get(self, table: str, key: str) -> Any | None:
        with self._reaching(f"reading {table}/{key}"):
            document = self._client.hget(self._rows(table), key)
        return None if document is None else json.loads(document)

    def delete(self, table: str, key: str) -> bool:
        with self._reaching(f"deleting {table}/{key}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.hdel(self._rows(table), key)
            pipe.zrem(self._order(table), key)
            removed, _ = pipe.execute()
        return bool(removed)

    def items(self, table: str) -> list[tuple[str, Any]]:
        with self._reaching(f"listing {table}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.zrange(self._order(table), 0, -1)
            pipe.hgetall(self._rows(table))
            order, rows = pipe.execute()
        return [(key, json.loads(rows[key])) for key in order if key in rows]

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ inside

    def _rows(self, table: str) -> str:
        return f"{self.url.prefix}rows:{table}"

    def _order(self, table: str) -> str:
        return f"{self.url.prefix}order:{table}"

    @contextlib.contextmanager
    def _reaching(self, doing: str) -> Iterator[None]:
        """Turn redis-py's errors into ours, naming the store and what the head was doing."""
        try:
            yield
        except redis.TimeoutError as exc:
            timeout = self._client.connection_pool.connection_kwargs.get("socket_timeout")
            raise ClusterConnectionError(
                f"the metadata store {self.url.shown} did not answer within {timeout} s ({doing}): "
                f"{exc}. Is Redis overloaded or stopped? The head keeps its records there."
            ) from exc
        except redis.ConnectionError as exc:
            raise ClusterConnectionError(
                f"lost the metadata store {self.url.shown} ({doing}): {exc}. Is redis-server still "
                "running there? The head keeps its records there: bring Redis back (the head "
                "reconnects by itself)."
            ) from exc
        except redis.ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                raise ClusterError(
                    f"the metadata store {self.url.shown} holds keys under the prefix "
                    f"{self.url.prefix!r} that are not a cluster's ({doing}): {exc}. Give this "
                    "cluster a prefix of its own (?prefix=NAME: in the URL)."
                ) from exc
            raise ClusterError(f"the metadata store {self.url.shown} refused {doing}: {exc}") from exc
        except redis.RedisError as exc:
            raise ClusterError(f"the metadata store {self.url.shown} failed {doing}: {exc}") from exc


def _why_unusable(url: RedisUrl, exc: Exception, timeout: float | None) -> str:
    """What went wrong on the first PING, and what to do, in words."""
    where = f"the metadata store {url.shown}"
    text = str(exc)
    if isinstance(exc, TypeError):  # an option in the URL's query that redis-py has no parameter for
        return (f"{where} has an option redis-py does not know ({text}). The query takes "
                "prefix= and redis-py's connection options (db, socket_timeout, "
                "socket_connect_timeout, password, ...).")
    if isinstance(exc, redis.AuthenticationError):
        if "invalid username-password" in text or "WRONGPASS" in text:
            said = "refused the user name or password in the URL"
        else:
            said = "needs a password and the URL gives none"
        return (f"{where} {said} ({text}). Give Redis' password in the URL: "
                "redis://:PASSWORD@HOST:PORT/DB, or unix:///PATH/redis.sock?password=PASSWORD.")
    if isinstance(exc, redis.TimeoutError):
        return (f"{where} did not answer within {timeout} s ({text}). Is that address a Redis, and "
                f"is it up? {_ADDRESS_HELP} (a longer wait: ?socket_connect_timeout=SECONDS).")
    if isinstance(exc, redis.ConnectionError):
        return (f"cannot reach Redis at {url.shown}: {text}. Start redis-server there, or fix the "
                f"address: {_ADDRESS_HELP}.")
    if isinstance(exc, redis.ResponseError) and "DB index is out of range" in text:
        return (f"{where} names a database that Redis does not have ({text}). Use a DB number below "
                "Redis' `databases` setting (16 unless configured).")
    return f"{where} cannot be used: Redis answered {text!r}. {_ADDRESS_HELP}."
