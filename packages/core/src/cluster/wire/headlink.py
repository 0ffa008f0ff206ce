"""A process's connection to the head, which comes back by itself (docs/design/0013).

The head is off the task path: a node, a driver or a worker goes on working while the head is
away (killed, being started again, cut off). :class:`HeadLink` holds the connection to it.
Whenever it closes, the link dials the head again, with backoff (0.1 s, doubling to 2 s, with
jitter), and runs ``on_connect`` on the new connection (the process registers again) before
anything else may use it. What needs the head waits for it (:meth:`HeadLink.connection`,
:meth:`HeadLink.request`) at most ``$CLUSTER_HEAD_WAIT_S`` seconds (60 by default): the first
call to wait in an outage says so, once, and a call that runs out of time raises
:class:`~cluster.errors.HeadUnreachableError`, naming the head and what to do.

Owns: the head's connection of one process, and the outage it is in.
Imports: connection, messages, errors.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from cluster.errors import (
    AuthenticationError,
    ClusterConnectionError,
    ConfigError,
    HeadUnreachableError,
    ProtocolVersionError,
)
from cluster.wire import messages as m
from cluster.wire.connection import Connection, FastHandler, Handler, dial

log = structlog.get_logger("cluster.head_link")

HEAD_WAIT_S = 60.0  # how long a call that needs the head waits for it, unless $CLUSTER_HEAD_WAIT_S says
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0

OnConnect = Callable[[Connection], Awaitable[None]]


def head_wait_s() -> float:
    """How long a call that needs the head waits for it: ``$CLUSTER_HEAD_WAIT_S``, else 60 s."""
    text = os.environ.get("CLUSTER_HEAD_WAIT_S")
    if not text:
        return HEAD_WAIT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # (also NaN)
        raise ConfigError(f"CLUSTER_HEAD_WAIT_S must be a number of seconds >= 0, got {text!r}")
    return value


class HeadLink:
    """The connection to the head at ``address``, dialled again whenever it closes.

    ``on_connect(conn)`` runs on each new connection before it is handed out (raising
    ClusterConnectionError there means "that one broke too: dial again"); ``say(text)`` tells
    the user that a call waits for the head (once per outage; default: a log event).
    """

    def __init__(self, address: str, token: str, role: str, handler: Handler, *,
                 on_connect: OnConnect | None = None, say: Callable[[str], None] | None = None,
                 fast_handler: FastHandler | None = None) -> None:
        self.address = address
        self.token = token
        self.role = role
        self.handler = handler
        self.fast_handler = fast_handler
        self.on_connect = on_connect
        self.say = say or (lambda text: log.warning("waiting_for_head", head=address, message=text))
        self.conn: Connection | None = None  # while connected (and registered)
        self.outages = 0  # how many times the connection was lost
        self._up = trio.Event()  # set while connected; a new one after each loss
        self._down = trio.Event()  # set once the current connection is lost
        self._down_since: float | None = None  # (trio's clock) when the connection was lost
        self._said = False  # this outage was told to a waiting call
        self._last_error = ""
        self._nursery: trio.Nursery | None = None

    async def run(self, *, first_wait_s: float | None = 0.0,
                  task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, report the connection, then keep the head connected until cancelled.

        ``first_wait_s``: how long the first connection may wait for the head to be there: 0,
        not at all (its error is raised: a driver's first connect); None, for as long as it
        takes. Later connections are tried for as long as it takes.
        """
        failed: ClusterConnectionError | None = None
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                first = await self._establish(first_wait_s)
            except ClusterConnectionError as exc:
                failed = exc  # raised below, as itself rather than in the nursery's group
                nursery.cancel_scope.cancel()
            else:
                task_status.started(first)
                while True:
                    await self._down.wait()
                    await self._establish(None)
        if failed is not None:
            raise failed

    async def connection(self, wait_s: float | None = None) -> Connection:
        """The connection to the head, once there is one: waits at most ``wait_s`` seconds
        (default ``$CLUSTER_HEAD_WAIT_S``), then raises HeadUnreachableError."""
        conn = self.conn
        if conn is not None and not conn.closed:
            return conn
        wait = head_wait_s() if wait_s is None else wait_s
        if not self._said and wait > 0:
            self._said = True
            self.say(f"the head at {self.address} is unreachable since {self.down_for():.0f}s; "
                     "waiting for it to come back")
        with trio.move_on_after(wait):
            while True:
                await self._up.wait()
                conn = self.conn
                if conn is not None and not conn.closed:
                    return conn
                await trio.sleep(0)  # (lost again between the event and now: wait for the next)
        raise HeadUnreachableError(self._unreachable(wait))

    async def request(self, msg: m.Message, wait_s: float | None = None) -> Any:
        """Ask the head ``msg`` and return its answer, waiting for the head while it is away,
        also when the connection closes before the answer came: ``msg`` is sent again, so it
        must mean the same twice (a read, a put, a delete)."""
        wait = head_wait_s() if wait_s is None else wait_s
        deadline = trio.current_time() + wait
        while True:
            conn = await self.connection(max(0.0, deadline - trio.current_time()))
            with trio.move_on_after(max(0.0, deadline - trio.current_time())):
                try:
                    return await conn.request(msg)
                except ClusterConnectionError:
                    if not conn.closed:
                        raise
                    continue
            # No answer in all that time: the connection is dead without having closed (the
            # head's machine went away); drop it, so that the link dials again.
            self._last_error = f"no answer on the connection for {wait:.0f}s"
            conn.abort()
            raise HeadUnreachableError(self._unreachable(wait))

    def down_for(self) -> float:
        """Seconds since the connection was lost (0 while connected)."""
        return 0.0 if self._down_since is None else trio.current_time() - self._down_since

    # -- internals --

    async def _establish(self, wait_s: float | None) -> Connection:
        assert self._nursery is not None
        deadline = None if wait_s is None else trio.current_time() + wait_s
        delay = BACKOFF_FIRST_S
        if self._down_since is None:
            self._down_since = trio.current_time()
        while True:
            try:
                conn = await dial(self._nursery, self.address, self.token, self.role, self.handler,
                                  what="the head", fast_handler=self.fast_handler)
                if self.on_connect is not None:
                    try:
                        await self.on_connect(conn)
                    except BaseException:
                        conn.abort()
                        raise
                if conn.closed:
                    raise ClusterConnectionError(f"the connection to the head at {self.address} closed "
                                                 "as soon as it opened")
            except (AuthenticationError, ProtocolVersionError) as exc:
                if deadline is not None:
                    raise  # a first connect: the token or version is wrong, waiting won't help
                error: ClusterConnectionError = exc  # another cluster (or version) listens there now
            except ClusterConnectionError as exc:
                error = exc
            else:
                self._connected(conn)
                return conn
            if self._last_error != str(error):
                log.warning("head_unreachable", head=self.address, error=str(error))
            self._last_error = str(error)
            pause = delay * random.uniform(0.5, 1.0)
            if deadline is not None and trio.current_time() + pause > deadline:
                if wait_s == 0:
                    raise error
                raise HeadUnreachableError(self._unreachable(wait_s or 0.0)) from None
            await trio.sleep(pause)
            delay = min(delay * 2, BACKOFF_MAX_S)

    def _connected(self, conn: Connection) -> None:
        if self.outages:
            log.info("head_back", head=self.address, after_s=round(self.down_for(), 1))
        self.conn = conn
        self._down = trio.Event()
        self._down_since = None
        self._said = False
        self._last_error = ""
        conn.on_close.append(self._lost)
        self._up.set()

    def _lost(self, conn: Connection) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        self.outages += 1
        self._up = trio.Event()
        self._down_since = trio.current_time()
        log.warning("head_lost", head=self.address)
        self._down.set()

    def _unreachable(self, waited: float) -> str:
        port = self.address.rpartition(":")[2]
        cause = f" ({self._last_error})" if self._last_error else ""
        return (
            f"the head at {self.address} has been unreachable for {self.down_for():.0f}s{cause}, and "
            f"this call gave up after waiting {waited:.0f}s for it ($CLUSTER_HEAD_WAIT_S). Start the head "
            f"again on the same port with the same metadata store (`cluster start --head --port {port} "
            "--metadata-store URL`), or check that its machine is reachable from here."
        )
