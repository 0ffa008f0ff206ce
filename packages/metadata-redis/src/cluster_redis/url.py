"""Which metadata-store URLs are Redis's, our option in them, and how to show one without its password.

The schemes are those redis-py's ``Redis.from_url`` reads: ``redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]``,
``rediss://`` (the same over TLS) and ``unix://[[USER]:PASSWORD@]/PATH/redis.sock[?db=N]``. Their
query takes redis-py's connection options (``socket_timeout``, ``password``, ...) and ours,
``prefix``: what every key of this store starts with, so that several clusters can share one Redis
database. Pure: no redis-py here, so the plugin can answer "is this URL mine?" without loading it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs

from cluster.errors import ConfigError

SCHEMES = ("redis", "rediss", "unix")
DEFAULT_PREFIX = "cluster:"
HIDDEN = "***"  # stands for a password in every message


@attrs.frozen
class RedisUrl:
    """A metadata-store URL taken apart: what redis-py connects to, our prefix, and the URL to show."""

    connect: str  # for redis-py's from_url: the URL less our own option
    prefix: str
    shown: str  # for messages and logs: the URL as given, with any password replaced by ***


def is_redis_url(url: str) -> bool:
    """True if ``url``'s scheme is one of redis-py's (whatever else is wrong with it)."""
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.lower() in SCHEMES


def shown(url: str) -> str:
    """``url`` with the password of its user part and of a ``password=`` option replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed [ of an IPv6 address: show no part that may hold a secret
        return f"{url.partition('://')[0]}://(a URL that cannot be parsed; not shown)"
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.partition(":")[0] + ":" + HIDDEN
    netloc = f"{userinfo}@{hostport}" if at else hostport
    query = "&".join(f"password={HIDDEN}" if item.partition("=")[0] == "password" else item
                     for item in parts.query.split("&")) if parts.query else ""
    return _joined(parts.scheme, netloc, parts.path, query)


def parse_redis_url(url: str) -> RedisUrl:
    """Take a Redis URL apart; ConfigError (naming the URL without its password) if it is not one."""
    display = shown(url)
    if not is_redis_url(url):
        raise ConfigError(f"{display} is not a Redis URL: write redis://HOST:PORT/DB, rediss://... "
                          "or unix:///PATH/redis.sock")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"the metadata store URL {display} cannot be parsed ({exc}); write "
                          "redis://[:PASSWORD@]HOST[:PORT][/DB] or unix:///PATH/redis.sock[?db=N]") from None
    options = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for name, value in options if name == "prefix"]
    if len(prefixes) > 1:
        raise ConfigError(f"the metadata store URL {display} gives prefix= {len(prefixes)} times; give it once")
    rest = urlencode([(name, value) for name, value in options if name != "prefix"])
    return RedisUrl(connect=_joined(parts.scheme, parts.netloc, parts.path, rest),
                    prefix=prefixes[0] if prefixes else DEFAULT_PREFIX, shown=display)


def _joined(scheme: str, netloc: str, path: str, query: str) -> str:
    # not urlunsplit: it writes unix:///run/redis.sock as unix:/run/redis.sock, which redis-py refuses
    return f"{scheme}://{netloc}{path}" + (f"?{query}" if query else "")
