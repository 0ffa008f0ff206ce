"""Addresses and raw streams: ``HOST:PORT``, TCP, and the same-host Unix-socket shortcut.

Owns: how a process reaches an address (and the errors that say why it could not).
Imports: errors only.
"""

from __future__ import annotations

import os
import socket
import sys

import trio

from cluster.errors import ClusterConnectionError, ConfigError


def parse_address(address: str) -> tuple[str, int]:
    """Split ``HOST:PORT``; raise ConfigError naming the problem."""

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"{address!r} is not a cluster address; expected HOST:PORT, e.g. 127.0.0.1:6380"
        )
    return host.strip("[]"), int(port)


# with namespaces hold), and leave nothing behind on disk. The handshake is the same.

LOCAL_SOCKETS = sys.platform.startswith("linux") and os.environ.get("CLUSTER_LOCAL_SOCKETS", "1") != "0"


def _local_name(address: str) -> bytes:
    return b"\0cluster " + address.encode()


def open_local_listener(address: str) -> trio.SocketListener | None:
    """A listener for the same-host shortcut to ``address`` (None where there is none)."""
    if not LOCAL_SOCKETS:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # bound here: trio's bind is async
    try:
        sock.bind(_local_name(address))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        return None
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


async def _open_local_stream(address: str) -> trio.SocketStream | None:
    if not LOCAL_SOCKETS:
        return None
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.connect(_local_name(address))
    except OSError:  # nobody on this host serves that address: use TCP
        sock.close()
        return None
    return trio.SocketStream(sock)


async def open_stream(address: str, *, timeout: float = 10.0, what: str = "the cluster") -> trio.SocketStream:
    host, port = parse_address(address)
    try:
        with trio.fail_after(timeout):
            local = await _open_local_stream(address)
            if local is not None:
                return local
            return await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise ClusterConnectionError(
            f"could not reach {what} at {address}: no answer within {timeout:.0f}s. "
            "Check the address and that the machine is reachable."
        ) from None
    except OSError as exc:
        causes = [exc, *_leaf_errors(exc.__cause__)]
        reason = next((c.strerror for c in reversed(causes) if isinstance(c, OSError) and c.strerror),
                      str(exc))
        if any(isinstance(c, ConnectionRefusedError) for c in causes):
            reason = "connection refused (nothing is listening there)"
        hint = (" Is the cluster running? Start one with `cluster start --head`, or check the address."
                if what in ("the cluster", "the head") else "")  # (else a process of the cluster, which has gone)
        raise ClusterConnectionError(f"could not reach {what} at {address}: {reason}.{hint}") from None


def _leaf_errors(exc: BaseException | None) -> list[BaseException]:
    if exc is None:
        return []
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaf_errors(inner)]
    return [exc]
