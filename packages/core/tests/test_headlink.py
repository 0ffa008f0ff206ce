"""HeadLink: the head's connection comes back by itself, and what needs the head waits for it.

A stand-in head (a trio server doing the real handshake and connection, answering ListNodes
with how many times it was started) is stopped and started again on the same port, in
process; the link under test dials it as a node or driver would.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio

from cluster.errors import AuthenticationError, ClusterConnectionError, HeadUnreachableError
from cluster.wire import messages as m
from cluster.wire.connection import Connection, run_connection
from cluster.wire.handshake import server_handshake
from cluster.wire.headlink import HeadLink

TOKEN = "t" * 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StandInHead:
    """A head that answers ListNodes with its generation (how many times it was started), or
    (``mute``) reads requests and never answers, as one whose machine went away would."""

    def __init__(self, port: int, *, mute: bool = False) -> None:
        self.port = port
        self.mute = mute
        self.generation = 0
        self.accepted = 0
        self.scope: trio.CancelScope | None = None

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.generation += 1
        generation = self.generation

        def handler(conn: Connection, msg: Any, request_id: int) -> None:
            if not self.mute:
                conn.reply(request_id, generation)

        async def one(stream: trio.SocketStream) -> None:
            self.accepted += 1
            try:
                role = await server_handshake(stream, TOKEN, "head")
            except ClusterConnectionError:  # a wrong token: refused, as a daemon does
                await trio.aclose_forcefully(stream)
                return
            await run_connection(stream, "peer", role, handler)

        with trio.CancelScope() as self.scope:
            sock = socket.create_server(("127.0.0.1", self.port))
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, one, [listener])
                task_status.started()

    def stop(self) -> None:
        assert self.scope is not None
        self.scope.cancel()  # (its connections close with it, as a killed head's would)


def test_a_call_waits_while_the_head_is_down_and_goes_on_once_it_is_back() -> None:
    said: list[str] = []
    connects: list[Connection] = []

    async def main() -> None:
        head = StandInHead(free_port())
        async with trio.open_nursery() as nursery:
            await nursery.start(head.serve)

            async def registered(conn: Connection) -> None:
                connects.append(conn)

            link = HeadLink(f"127.0.0.1:{head.port}", TOKEN, "node", lambda *a: None,
                            on_connect=registered, say=said.append)
            await nursery.start(link.run)
            assert await link.request(m.ListNodes()) == 1
            head.stop()
            with trio.fail_after(10):
                while link.conn is not None:  # the link sees the connection close
                    await trio.sleep(0.01)
            assert link.outages == 1

            answers: list[int] = []

            async def ask() -> None:
                answers.append(await link.request(m.ListNodes(), wait_s=30))

            async with trio.open_nursery() as callers:
                for _ in range(3):
                    callers.start_soon(ask)
                await trio.sleep(0.5)  # they wait, the head being down
                assert answers == []
                await nursery.start(head.serve)  # started again, on the same port
            assert answers == [2, 2, 2]
            assert len(said) == 1  # told once for the outage, however many waited
            assert said[0].startswith(f"the head at 127.0.0.1:{head.port} is unreachable since ")
            assert said[0].endswith("s; waiting for it to come back")
            assert len(connects) == 2 and connects[0].closed and not connects[1].closed  # registered again
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_call_that_waits_longer_than_its_bound_names_the_head_and_what_to_do() -> None:
    async def main() -> None:
        head = StandInHead(free_port())
        async with trio.open_nursery() as nursery:
            await nursery.start(head.serve)
            link = HeadLink(f"127.0.0.1:{head.port}", TOKEN, "driver", lambda *a: None, say=lambda text: None)
            await nursery.start(link.run)
            head.stop()
            with trio.fail_after(10):
                while link.conn is not None:
                    await trio.sleep(0.01)
            started = trio.current_time()
            with pytest.raises(HeadUnreachableError) as caught:
                await link.request(m.ListNodes(), wait_s=1.0)
            assert 1.0 <= trio.current_time() - started < 5
            message = str(caught.value)
            assert f"the head at 127.0.0.1:{head.port} has been unreachable for" in message
            assert "gave up after waiting 1s" in message and "CLUSTER_HEAD_WAIT_S" in message
            assert f"cluster start --head --port {head.port} --metadata-store URL" in message
            assert isinstance(caught.value, ClusterConnectionError)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_the_first_connect_fails_at_once_or_waits_as_asked() -> None:
    async def main() -> None:
        port = free_port()
        async with trio.open_nursery() as nursery:
            link = HeadLink(f"127.0.0.1:{port}", TOKEN, "driver", lambda *a: None)
            with pytest.raises(ClusterConnectionError) as caught:  # nothing listens: no waiting
                await nursery.start(link.run)
            assert not isinstance(caught.value, HeadUnreachableError)

            waiting = HeadLink(f"127.0.0.1:{port}", TOKEN, "node", lambda *a: None)
            with pytest.raises(HeadUnreachableError, match="unreachable"):
                await nursery.start(lambda **kw: waiting.run(first_wait_s=0.5, **kw))

            head = StandInHead(port)
            late = HeadLink(f"127.0.0.1:{port}", TOKEN, "node", lambda *a: None)

            async def start_head_later() -> None:
                await trio.sleep(0.3)
                await nursery.start(head.serve)

            nursery.start_soon(start_head_later)
            conn = await nursery.start(lambda **kw: late.run(first_wait_s=20, **kw))
            assert not conn.closed and await late.request(m.ListNodes()) == 1

            wrong = HeadLink(f"127.0.0.1:{port}", "w" * 64, "node", lambda *a: None)
            with pytest.raises(AuthenticationError):  # a wrong token: waiting would not help
                await nursery.start(lambda **kw: wrong.run(first_wait_s=20, **kw))
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_head_that_never_answers_counts_as_unreachable_and_is_dialled_again() -> None:
    async def main() -> None:
        head = StandInHead(free_port(), mute=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(head.serve)
            link = HeadLink(f"127.0.0.1:{head.port}", TOKEN, "driver", lambda *a: None, say=lambda text: None)
            await nursery.start(link.run)
            with pytest.raises(HeadUnreachableError, match="no answer on the connection for 1s"):
                await link.request(m.ListNodes(), wait_s=1.0)
            with trio.fail_after(10):
                while head.accepted < 2:  # the silent connection was dropped, and the link dialled again
                    await trio.sleep(0.01)
            assert link.outages == 1
            nursery.cancel_scope.cancel()

    trio.run(main)
