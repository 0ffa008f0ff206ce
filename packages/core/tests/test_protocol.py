"""The wire protocol and handshake, over in-memory streams and real sockets."""

from __future__ import annotations

import functools
import os
import socket
import threading
import time

import attrs
import pytest
import trio
import trio.testing

from cluster.errors import AuthenticationError, ProtocolError, ProtocolVersionError, RemoteCallError
from cluster.wire import codec, connection, handshake, streams
from cluster.wire import messages as m


def test_codec_round_trip_with_nested_messages() -> None:
    spec = m.TaskSpec(b"t" * 16, "f", b"i" * 16, None, b"args", [m.InlineValue(b"", b"x", [])], 1, "127.0.0.1:1")
    frame = codec.encode(m.PushTasks([spec, spec]), request_id=7)
    size = int.from_bytes(frame[:4], "little")
    assert size == len(frame) - 4
    msg, request_id = codec.decode(frame[4:])
    assert request_id == 7
    assert msg == m.PushTasks([spec, spec])


def test_messages_travel_anywhere_inside_others_and_come_back_as_themselves() -> None:
    stored = m.StoredValue(b"o" * 20, "node-1", "127.0.0.1:2", 10_000_000, "127.0.0.1:3")
    inline = m.InlineValue(b"E", b"pickled", [b"buffer"])
    reply = m.Ok({"entries": [inline, stored], "lease": m.LeaseGranted(7, "127.0.0.1:4", "w1", "n1"),
                  "plain": [80, 0, "not a message"]})
    msg, request_id = codec.decode(codec.encode(reply, 9)[4:])
    assert (msg, request_id) == (reply, 9)
    assert type(msg.value["entries"][1]) is m.StoredValue and msg.value["entries"][0].is_error
    assert msg.value["plain"] == [80, 0, "not a message"]  # a list that merely starts with a tag


def test_what_is_not_a_message_type_cannot_be_sent() -> None:
    class Stranger:
        pass

    with pytest.raises(TypeError, match="Stranger cannot travel on the wire"):
        codec.encode(m.Ok(Stranger()))


def test_a_nested_message_of_a_type_unknown_here_arrives_as_data_and_a_top_level_one_is_refused() -> None:
    body = codec.encode(m.ServiceRequest("jobs", m.LeaseSpill("127.0.0.1:1")))[4:]
    unknown = body.replace(m.LeaseSpill.TAG.to_bytes(2, "little"), (65000).to_bytes(2, "little"))
    msg, _ = codec.decode(unknown)  # e.g. a plugin's payload, the plugin not installed here
    assert msg == m.ServiceRequest("jobs", m.UnknownMessage(65000, ["127.0.0.1:1"]))
    top = codec.encode(m.LeaseSpill("127.0.0.1:1"))[4:]
    with pytest.raises(ProtocolError, match="malformed"):
        codec.decode(top.replace(m.LeaseSpill.TAG.to_bytes(1, "little"), b"\xcd\xfd\xe8", 1))


def test_a_nested_message_in_the_handshake_is_refused() -> None:
    hello = codec.encode(m.Hello(1, "head", m.Welcome(b"mac")))[4:]  # a message hidden in a field
    with pytest.raises(ProtocolError, match="malformed"):
        codec.decode(hello, allowed=frozenset({m.Hello.TAG}))


def test_a_message_type_declared_later_travels_too() -> None:
    @m.message(1999)
    @attrs.frozen
    class LateComer:
        text: str

    try:
        msg, _ = codec.decode(codec.encode(m.Ok([LateComer("hi")]))[4:])
        assert msg == m.Ok([LateComer("hi")])
    finally:
        del m.MESSAGE_TYPES[1999]


def test_decode_rejects_garbage_with_a_clear_error() -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        codec.decode(b"\xc1\xc1\xc1")
    with pytest.raises(ProtocolError, match="malformed"):
        codec.decode(codec.encode(m.Ok(1))[4:][:-1] + b"")  # truncated


async def _handshake(server_token: str, client_token: str) -> tuple[object, object]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    results: dict[str, object] = {}

    async def run(name: str, fn: object, *args: object) -> None:
        try:
            results[name] = await fn(*args)
        except Exception as exc:
            results[name] = exc

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "server", handshake.server_handshake, server_stream, server_token, "head")
        nursery.start_soon(run, "client", handshake.client_handshake, client_stream, client_token, "driver", "the head")
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
            monkeypatch.setattr(handshake, "PROTOCOL_VERSION", 99)
            try:
                await handshake.server_handshake(server_stream, "t", "head")
            except Exception as exc:
                out["server"] = exc

        async def client() -> None:
            await trio.sleep(0.01)
            monkeypatch.setattr(handshake, "PROTOCOL_VERSION", 1)
            try:
                await handshake.client_handshake(client_stream, "t", "driver", "the head")
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
                await handshake.server_handshake(server_stream, "t", "head")
            except Exception as exc:
                return exc
        raise AssertionError("the handshake accepted an HTTP request")

    exc = trio.run(scenario)
    assert isinstance(exc, ProtocolError)
    assert "HTTP" in str(exc)


def test_parse_address_errors_name_the_problem() -> None:
    from cluster.errors import ConfigError

    assert streams.parse_address("127.0.0.1:6380") == ("127.0.0.1", 6380)
    for bad in ("localhost", "host:notaport", ":80", "h:70000"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            streams.parse_address(bad)


async def _serve_and_dial(nursery: trio.Nursery, on_message: object, fast: object = None,
                          local: bool = False) -> connection.Connection:
    """A server on a free port whose connections call ``on_message`` (and ``fast`` in their
    reader thread), and a client dialled to it; ``local``: also serve the same-host socket."""

    async def serve(stream: trio.SocketStream) -> None:
        role = await handshake.server_handshake(stream, "tok", "node")
        await connection.run_connection(stream, "peer", role, on_message, fast)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    if local:
        local_listener = streams.open_local_listener(address)
        if local_listener is not None:
            nursery.start_soon(trio.serve_listeners, serve, [local_listener])
    return await connection.dial(nursery, address, "tok", "driver", lambda *a: None)


def test_connection_request_reply_over_a_real_socket() -> None:
    async def scenario() -> list:
        def on_message(conn: connection.Connection, msg: object, request_id: int) -> None:
            conn.reply(request_id, ["echo", msg.key])

        async with trio.open_nursery() as nursery:
            conn = await _serve_and_dial(nursery, on_message)
            replies = [await conn.request(m.KvGet(f"k{i}")) for i in range(3)]
            nursery.cancel_scope.cancel()
        return replies

    assert trio.run(scenario) == [["echo", "k0"], ["echo", "k1"], ["echo", "k2"]]


def test_a_handler_that_raises_fails_its_request_and_the_process_and_connection_go_on() -> None:
    async def scenario() -> tuple[str, list]:
        def on_message(conn: connection.Connection, msg: object, request_id: int) -> None:
            if msg.key == "bad":
                raise OSError(28, "No space left on device")
            conn.reply(request_id, msg.key)

        async with trio.open_nursery() as nursery:
            conn = await _serve_and_dial(nursery, on_message)
            with pytest.raises(RemoteCallError) as excinfo:
                await conn.request(m.KvGet("bad"))
            after = [await conn.request(m.KvGet(f"k{i}")) for i in range(2)]
            nursery.cancel_scope.cancel()
        return str(excinfo.value), after

    message, after = trio.run(scenario)
    assert "handling KvGet failed: OSError" in message and "No space left" in message, message
    assert after == ["k0", "k1"]


def test_raw_replies_land_in_their_destination_between_ordinary_frames() -> None:
    payload = bytes(range(256)) * (40_000)  # 10 MB: arrives over many reads

    async def scenario() -> tuple:
        def on_message(conn: connection.Connection, msg: object, request_id: int) -> None:
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


def test_a_fast_message_never_overtakes_the_rest_of_a_batch_still_being_handled() -> None:
    """The reader may handle a message itself only once trio has handled *all* it was handed:
    here the second frame arrives while the first batch's first message is still running."""
    seen: list[str] = []
    after = m.KvGet("f-after")

    def on_message(conn: connection.Connection, msg: object, request_id: int) -> None:
        seen.append(msg.key)
        if msg.key == "s-block":
            # The client's next frame arrives now, while this batch is half done.
            forwarded = conn._forwarded
            os.write(client.stream.socket.fileno(), codec.encode(after))
            deadline = time.monotonic() + 10
            while "f-after" not in seen and conn._forwarded == forwarded and time.monotonic() < deadline:
                time.sleep(0.001)  # until the reader has dealt with it, one way or the other

    def fast(conn: connection.Connection, msg: object, request_id: int) -> bool:
        if not msg.key.startswith("f"):
            return False
        seen.append(msg.key)
        return True

    async def scenario() -> None:
        nonlocal client
        async with trio.open_nursery() as nursery:
            client = await _serve_and_dial(nursery, on_message, fast)
            # One write, so both frames reach the reader in one read: one batch.
            os.write(client.stream.socket.fileno(), codec.encode(m.KvGet("s-block")) + codec.encode(m.KvGet("s-next")))
            with trio.fail_after(10):
                while len(seen) < 3:
                    await trio.sleep(0.001)
            nursery.cancel_scope.cancel()

    client = None
    trio.run(scenario)
    assert seen == ["s-block", "s-next", "f-after"]


def test_a_fast_handler_runs_in_the_reader_thread_and_every_message_keeps_its_order() -> None:
    seen: list[tuple[str, str]] = []

    def on_message(conn: connection.Connection, msg: object, request_id: int) -> None:
        if msg.key == "sync":
            conn.reply(request_id, len(seen))
        else:
            seen.append((msg.key, threading.current_thread().name))
            time.sleep(0.001)  # a slow trio handler: fast messages behind it must wait their turn

    def fast(conn: connection.Connection, msg: object, request_id: int) -> bool:
        if not msg.key.startswith("f"):
            return False
        seen.append((msg.key, threading.current_thread().name))
        return True

    keys = ["f-first", *(f"{'f' if i % 3 else 's'}{i}" for i in range(60))]

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            conn = await _serve_and_dial(nursery, on_message, fast)
            conn.send(m.KvGet(keys[0]))
            assert await conn.request(m.KvGet("sync")) == 1
            for key in keys[1:]:
                conn.send(m.KvGet(key))
            assert await conn.request(m.KvGet("sync")) == len(keys)
            nursery.cancel_scope.cancel()

    trio.run(scenario)
    assert [key for key, _ in seen] == keys
    assert seen[0][1].startswith("cluster-reader")  # nothing was ahead of it: handled in the reader
    assert all(not thread.startswith("cluster-reader") for key, thread in seen if key.startswith("s"))


@pytest.mark.skipif(not streams.LOCAL_SOCKETS, reason="abstract Unix sockets are Linux-only")
def test_a_peer_on_the_same_host_is_dialled_over_its_unix_socket_and_tcp_still_works(
        monkeypatch: pytest.MonkeyPatch) -> None:
    async def family(local: bool) -> tuple[int, object]:
        def on_message(conn: connection.Connection, msg: object, request_id: int) -> None:
            conn.reply(request_id, msg.key)

        async with trio.open_nursery() as nursery:
            conn = await _serve_and_dial(nursery, on_message, local=local)
            reply = await conn.request(m.KvGet("hello"))
            nursery.cancel_scope.cancel()
        return conn.stream.socket.family, reply

    assert trio.run(family, True) == (socket.AF_UNIX, "hello")
    assert trio.run(family, False) == (socket.AF_INET, "hello")  # nobody serves the local name
    monkeypatch.setattr(streams, "LOCAL_SOCKETS", False)
    assert trio.run(family, True) == (socket.AF_INET, "hello")  # turned off
