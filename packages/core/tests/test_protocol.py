"""The wire protocol and handshake, over in-memory streams and real sockets."""

from __future__ import annotations

import functools

import pytest
import trio
import trio.testing
from cluster import messages as m
from cluster import protocol
from cluster.errors import AuthenticationError, ProtocolError, ProtocolVersionError


def test_codec_round_trip_with_nested_messages() -> None:
    spec = m.TaskSpec(b"t" * 16, "f", b"i" * 16, None, b"args", [[0, b"", b"x", []]], 1, "127.0.0.1:1")
    frame = protocol.encode(m.PushTasks([spec, spec]), request_id=7)
    size = int.from_bytes(frame[:4], "little")
    assert size == len(frame) - 4
    msg, request_id = protocol.decode(frame[4:])
    assert request_id == 7
    assert msg == m.PushTasks([spec, spec])


def test_decode_rejects_garbage_with_a_clear_error() -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        protocol.decode(b"\xc1\xc1\xc1")
    with pytest.raises(ProtocolError, match="malformed"):
        protocol.decode(protocol.encode(m.Ok(1))[4:][:-1] + b"")  # truncated


async def _handshake(server_token: str, client_token: str) -> tuple[object, object]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    results: dict[str, object] = {}

    async def run(name: str, fn: object, *args: object) -> None:
        try:
            results[name] = await fn(*args)
        except Exception as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "server", protocol.server_handshake, server_stream, server_token, "head")
        nursery.start_soon(run, "client", protocol.client_handshake, client_stream, client_token, "driver", "the head")
    return results["server"], results["client"]


def test_handshake_with_the_right_token() -> None:
    server, client = trio.run(_handshake, "secret", "secret")
    assert server == "driver"
    assert client == "head"


def test_wrong_token_is_refused_on_both_sides_with_a_message() -> None:
    server, client = trio.run(_handshake, "secret", "wrong")
    assert isinstance(server, AuthenticationError)
    assert isinstance(client, AuthenticationError)
    assert "token" in str(client)
    assert "does not match" in str(client)


def test_version_mismatch_names_both_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[object, object]:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        out: dict[str, object] = {}

        async def server() -> None:
            # A server from the future: speaks version 99.
            monkeypatch.setattr(protocol, "PROTOCOL_VERSION", 99)
            try:
                await protocol.server_handshake(server_stream, "t", "head")
            except Exception as exc:
                out["server"] = exc

        async def client() -> None:
            await trio.sleep(0.01)
            monkeypatch.setattr(protocol, "PROTOCOL_VERSION", 1)
            try:
                await protocol.client_handshake(client_stream, "t", "driver", "the head")
            except Exception as exc:
                out["client"] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            nursery.start_soon(client)
        return out.get("server"), out.get("client")

    server, client = trio.run(scenario)
    assert isinstance(client, ProtocolVersionError)
    assert "99" in str(client) and "1" in str(client)
    assert isinstance(server, ProtocolVersionError)


def test_a_stranger_speaking_http_is_refused_before_anything_is_decoded() -> None:
    async def scenario() -> Exception:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client_stream.send_all, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                await protocol.server_handshake(server_stream, "t", "head")
            except Exception as exc:
                return exc
        raise AssertionError("the handshake accepted an HTTP request")

    exc = trio.run(scenario)
    assert isinstance(exc, ProtocolError)
    assert "HTTP" in str(exc)


def test_parse_address_errors_name_the_problem() -> None:
    from cluster.errors import ConfigError

    assert protocol.parse_address("127.0.0.1:6380") == ("127.0.0.1", 6380)
    for bad in ("localhost", "host:notaport", ":80", "h:70000"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            protocol.parse_address(bad)


async def _serve_and_dial(nursery: trio.Nursery, on_message: object) -> protocol.Connection:
    """A server on a free port whose connections call ``on_message``, and a client dialled to it."""

    async def serve(stream: trio.SocketStream) -> None:
        role = await protocol.server_handshake(stream, "tok", "node")
        await protocol.run_connection(stream, "peer", role, on_message)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return await protocol.dial(nursery, f"127.0.0.1:{port}", "tok", "driver", lambda *a: None)


def test_connection_request_reply_over_a_real_socket() -> None:
    async def scenario() -> list:
        def on_message(conn: protocol.Connection, msg: object, request_id: int) -> None:
            conn.reply(request_id, ["echo", msg.key])

        async with trio.open_nursery() as nursery:
            conn = await _serve_and_dial(nursery, on_message)
            replies = [await conn.request(m.KvGet(f"k{i}")) for i in range(3)]
            nursery.cancel_scope.cancel()
        return replies

    assert trio.run(scenario) == [["echo", "k0"], ["echo", "k1"], ["echo", "k2"]]


def test_raw_replies_land_in_their_destination_between_ordinary_frames() -> None:
    payload = bytes(range(256)) * (40_000)  # 10 MB: arrives over many reads

    async def scenario() -> tuple:
        def on_message(conn: protocol.Connection, msg: object, request_id: int) -> None:
            if msg.key == "raw":
                conn.reply_raw(request_id, memoryview(payload))
            elif msg.key == "raw-unasked":  # answered raw although the asker wants a value
                conn.reply_raw(request_id, memoryview(payload)[:1000])
            else:
                conn.reply(request_id, msg.key)

        async with trio.open_nursery() as nursery:
            conn = await _serve_and_dial(nursery, on_message)
            destination = bytearray(len(payload))
            results: dict = {}

            async def raw() -> None:
                results["n"] = await conn.request_into(m.KvGet("raw"), memoryview(destination))

            async def small(i: int) -> None:
                results[i] = await conn.request(m.KvGet(f"k{i}"))

            async with trio.open_nursery() as inner:
                inner.start_soon(small, 0)
                inner.start_soon(raw)
                inner.start_soon(small, 1)
            unasked = await conn.request(m.KvGet("raw-unasked"))
            after = await conn.request(m.KvGet("after"))
            nursery.cancel_scope.cancel()
        return results, bytes(destination), unasked, after

    results, received, unasked, after = trio.run(scenario)
    assert results == {"n": len(payload), 0: "k0", 1: "k1"}
    assert received == payload
    assert unasked == 1000  # a raw answer to a plain request gives its size; the bytes are dropped
    assert after == "after"  # and the stream is still in step
