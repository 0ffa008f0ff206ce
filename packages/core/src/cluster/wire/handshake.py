"""The handshake every connection opens with, before anything else is read.

1. the server sends ``Hello(version, role, server_nonce)``;
2. the client checks the version and answers ``Auth(version, role, client_nonce, mac)`` with
   ``mac = HMAC-SHA256(token, "client" | server_nonce | client_nonce)``;
3. the server checks version and mac and answers ``Welcome(HMAC(token, "server" | client_nonce |
   server_nonce))``, so the client knows the server holds the token too; or ``Refuse`` naming
   the problem.

The token itself never crosses the wire, and no pickle is ever loaded from a peer before it
has authenticated: until then only small msgpack frames of the handshake types are decoded.

Owns: protocol version, handshake deadline. Imports: codec, messages, errors.
"""

from __future__ import annotations

import hashlib
import hmac
import os

import trio

from cluster.errors import (
    AuthenticationError,
    ClusterConnectionError,
    ProtocolError,
    ProtocolVersionError,
)
from cluster.wire import messages as m
from cluster.wire.codec import decode, encode

PROTOCOL_VERSION = 1
MAX_HANDSHAKE_FRAME = 4096
HANDSHAKE_TIMEOUT = 10.0


async def _receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        data = await stream.receive_some(n - len(chunks))
        if not data:
            raise ClusterConnectionError("the peer closed the connection during the handshake")
        chunks += data
    return bytes(chunks)


async def _receive_handshake_frame(stream: trio.abc.ReceiveStream, allowed: frozenset[int]) -> m.Message:
    header = await _receive_exactly(stream, 4)
    size = int.from_bytes(header, "little")
    if size > MAX_HANDSHAKE_FRAME:
        if header in (b"GET ", b"POST", b"HEAD", b"PUT "):
            raise ProtocolError("the peer spoke HTTP; this port speaks the cluster protocol")
        raise ProtocolError("the peer does not speak the cluster protocol (oversized first frame)")
    msg, _ = decode(await _receive_exactly(stream, size), allowed=allowed)
    return msg


def _mac(token: str, label: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(token.encode(), label + first + second, hashlib.sha256).digest()


_HS_CLIENT = frozenset({m.Hello.TAG, m.Welcome.TAG, m.Refuse.TAG})
_HS_SERVER = frozenset({m.Auth.TAG, m.Refuse.TAG})


async def client_handshake(stream: trio.abc.Stream, token: str, role: str, where: str) -> str:
    """Authenticate to a server; return the server's role. Raises a clear error on refusal."""
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        hello = await _receive_handshake_frame(stream, _HS_CLIENT)
        if isinstance(hello, m.Refuse):
            raise _refusal(hello, where)
        if not isinstance(hello, m.Hello):
            raise ProtocolError(f"{where} did not greet with a Hello")
        nonce = os.urandom(16)
        if hello.version != PROTOCOL_VERSION:
            await stream.send_all(
                encode(m.Refuse("version", f"client speaks protocol {PROTOCOL_VERSION}"))
            )
            raise ProtocolVersionError(_version_message(where, hello.version))
        mac = _mac(token, b"client", hello.nonce, nonce)
        await stream.send_all(encode(m.Auth(PROTOCOL_VERSION, role, nonce, mac)))
        reply = await _receive_handshake_frame(stream, _HS_CLIENT)
        if isinstance(reply, m.Refuse):
            raise _refusal(reply, where)
        if not isinstance(reply, m.Welcome) or not hmac.compare_digest(
            reply.mac, _mac(token, b"server", nonce, hello.nonce)
        ):
            raise AuthenticationError(
                f"{where} could not prove it holds the cluster token; it may not be the cluster "
                "you meant to join. Check the address."
            )
        return hello.role


async def server_handshake(stream: trio.abc.Stream, token: str, role: str) -> str:
    """Authenticate a client; return its role. Refuses (and raises) on a bad token or version."""
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        nonce = os.urandom(16)
        await stream.send_all(encode(m.Hello(PROTOCOL_VERSION, role, nonce)))
        auth = await _receive_handshake_frame(stream, _HS_SERVER)
        if isinstance(auth, m.Refuse):
            raise ProtocolVersionError(f"client refused the connection: {auth.reason}")
        if not isinstance(auth, m.Auth):  # (decode let through only Auth and Refuse)
            raise ProtocolError("the client did not answer with an Auth")
        if auth.version != PROTOCOL_VERSION:
            reason = (
                f"protocol version mismatch: this {role} speaks version {PROTOCOL_VERSION}, "
                f"the client speaks version {auth.version}. Install the same cluster-core version "
                "on every machine of the cluster."
            )
            await stream.send_all(encode(m.Refuse("version", reason)))
            raise ProtocolVersionError(reason)
        if not hmac.compare_digest(auth.mac, _mac(token, b"client", nonce, auth.nonce)):
            reason = (
                "authentication failed: the cluster token you gave does not match this "
                "cluster's token. Use the token printed by `cluster start --head` (it is in the "
                "head's session directory, file `token`)."
            )
            await stream.send_all(encode(m.Refuse("token", reason)))
            raise AuthenticationError(f"refused a {auth.role}: wrong cluster token")
        await stream.send_all(encode(m.Welcome(_mac(token, b"server", auth.nonce, nonce))))
        return auth.role


def _version_message(where: str, theirs: int) -> str:
    return (
        f"protocol version mismatch: {where} speaks version {theirs}, this cluster-core speaks "
        f"version {PROTOCOL_VERSION}. Install the same cluster-core version on every machine."
    )


def _refusal(refuse: m.Refuse, where: str) -> Exception:
    if refuse.code == "token":
        return AuthenticationError(f"{where} refused the connection: {refuse.reason}")
    if refuse.code == "version":
        return ProtocolVersionError(f"{where} refused the connection: {refuse.reason}")
    return ClusterConnectionError(f"{where} refused the connection: {refuse.reason}")

