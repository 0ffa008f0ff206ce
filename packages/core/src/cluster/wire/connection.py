"""Authenticated connections: batched sends, request/reply, a reader thread per connection.

A :class:`Connection` runs over a stream that passed the handshake (:mod:`.handshake`); it
sends from any thread, matches replies to requests, and reads in a thread of its own, handing
messages to trio in arrival order (hot ones may be handled in the reader, docs/design/0007).
:class:`Dialer` keeps one connection per address.

Owns: connection state and its threads. Imports: codec, handshake, streams, messages, errors.
"""

from __future__ import annotations

import collections
import itertools
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import structlog
import trio

from cluster.errors import ClusterConnectionError, ProtocolError, RemoteCallError
from cluster.wire import messages as m
from cluster.wire.codec import MAX_FRAME, RAW_FLAG, decode, encode, packb, unpackb
from cluster.wire.handshake import HANDSHAKE_TIMEOUT, client_handshake
from cluster.wire.streams import open_stream

log = structlog.get_logger("cluster.wire")

# --- connections ------------------------------------------------------------------------------

Handler = Callable[["Connection", m.Message, int], None]
# Called in the connection's reader thread; returns True if it handled the message there.
FastHandler = Callable[["Connection", m.Message, int], bool]
# How many batches of messages the reader may hand to the trio thread before it waits.
_MAX_FORWARDED = 64
# What the reader hands to the trio thread: (message, request_id), or for a raw frame (the
# reply to a request_into) (its payload's size, request_id).
_Batch = list[tuple[m.Message | int, int]]
# What answers a request: Ok, Fail, the size of a raw reply; None if the connection closed.
_Reply = m.Ok | m.Fail | int | None


class _Waiter:
    """A request waiting for its reply."""

    __slots__ = ("destination", "done", "on_pending", "reply")

    def __init__(self, on_pending: Callable[[str], None] | None = None,
                 destination: memoryview | None = None) -> None:
        self.done = trio.Event()
        self.reply: _Reply = None
        self.on_pending = on_pending
        self.destination = destination  # where the payload of a raw reply goes


class Connection:
    """An authenticated connection: batched sends, request/reply, and a message handler.

    Created and run by :func:`run_connection`, which owns its tasks. ``send`` is synchronous
    (it queues), so it may be called from callbacks; frames queued together go out together.
    """

    def __init__(self, stream: trio.SocketStream, peer: str, peer_role: str, handler: Handler,
                 fast_handler: FastHandler | None = None) -> None:
        self.stream = stream
        self.peer = peer
        self.peer_role = peer_role
        self.handler = handler  # runs in the trio thread
        # Runs in the reader thread, for messages it can handle without the trio loop (it must
        # be thread-safe); only while nothing handed to the trio thread is still waiting there,
        # so messages are always handled in the order they arrived.
        self.fast_handler = fast_handler
        self._forwarded = 0  # batches handed to the trio thread (written by the reader only)
        self._handled = 0  # ... and handled there (written by the trio thread only)
        self._room = threading.Semaphore(_MAX_FORWARDED)
        self.closed = False
        self.nursery: trio.Nursery | None = None
        self.sent_functions: set[bytes] = set()
        self.on_close: list[Callable[[Connection], None]] = []
        self.context: Any = None  # whatever the owner of the connection wants to hang on it
        # Frames waiting for the writer task. Any thread may send (see send_threadsafe): the
        # lock makes "send it now, or queue it (and its unsent rest) behind the others" atomic,
        # so frames never interleave on the wire.
        self._frames: collections.deque[bytes | memoryview] = collections.deque()
        self._send_lock = threading.Lock()
        self._frames_added = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        # A second handle on the same socket, for sending straight from send() when nothing is
        # queued: saves a trip through the writer task per message on the hot path.
        self._direct = socket.socket(fileno=os.dup(stream.socket.fileno()))
        self._direct.setblocking(False)
        self._queued = 0
        self._writing = False
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}

    def __repr__(self) -> str:
        return f"<Connection to {self.peer_role} {self.peer}{' closed' if self.closed else ''}>"

    def send(self, msg: m.Message, request_id: int = 0) -> None:
        if self.closed:
            raise ClusterConnectionError(f"the connection to {self.peer} is closed")
        self._send_frame(encode(msg, request_id))

    def reply(self, request_id: int, value: Any = None) -> None:
        if not self.closed:
            self.send(m.Ok(value), request_id)

    def reply_raw(self, request_id: int, payload: memoryview) -> None:
        """Answer a ``request_into`` with bytes, without copying them into a frame."""
        if self.closed:
            return
        payload = payload.cast("B") if payload.format != "B" else payload
        header = packb([request_id, payload.nbytes])
        prefix = (RAW_FLAG | (4 + len(header) + payload.nbytes)).to_bytes(4, "little")
        self._send_frame(prefix + len(header).to_bytes(4, "little") + header)
        self._send_frame(payload)

    def _send_frame(self, frame: bytes | memoryview) -> None:
        if self._enqueue(frame):
            self._frames_added.set()

    def send_threadsafe(self, msg: m.Message) -> None:
        """``send`` from a thread other than the connection's trio thread."""
        if self.closed:
            raise ClusterConnectionError(f"the connection to {self.peer} is closed")
        if self._enqueue(encode(msg)):
            try:
                self._token.run_sync_soon(self._frames_added.set)
            except trio.RunFinishedError:
                pass

    def _enqueue(self, frame: bytes | memoryview) -> bool:
        """Send ``frame`` now if nothing is ahead of it, else queue it; True if queued."""
        with self._send_lock:
            if self.closed:
                return False  # dropped, as sends to a closed connection are
            if not self._queued and not self._writing:
                try:
                    sent = self._direct.send(frame)
                except OSError:  # would block, or broken: the writer task sorts it out
                    sent = 0
                if sent == len(frame):
                    return False
                frame = memoryview(frame)[sent:]
            self._queued += 1
            self._frames.append(frame)
            return True

    async def request_into(self, msg: m.Message, destination: memoryview) -> int:
        """Like ``request``, for a reply of raw bytes: they land in ``destination``."""
        reply = await self._exchange(msg, _Waiter(destination=destination))
        if isinstance(reply, int):
            return reply
        if isinstance(reply, m.Ok):  # a peer that answered with an ordinary value
            data = memoryview(reply.value).cast("B")
            destination[: data.nbytes] = data
            return data.nbytes
        raise self._error_of(reply)

    def reply_error(self, request_id: int, kind: str, message: str) -> None:
        if not self.closed:
            self.send(m.Fail(kind, message), request_id)

    async def request(self, msg: m.Message, on_pending: Callable[[str], None] | None = None) -> Any:
        """Send ``msg`` and wait for its reply; return ``Ok.value`` or raise.

        ``on_pending(reason)`` is called if the peer says the answer will take a while.
        """
        reply = await self._exchange(msg, _Waiter(on_pending))
        if isinstance(reply, m.Ok):
            return reply.value
        if isinstance(reply, int):
            return reply
        raise self._error_of(reply)

    async def _exchange(self, msg: m.Message, waiter: _Waiter) -> _Reply:
        """Send ``msg`` as a request and wait for what answers it (None: the connection closed)."""
        request_id = next(self._ids)
        self._waiting[request_id] = waiter
        try:
            self.send(msg, request_id)
            await waiter.done.wait()
        finally:
            self._waiting.pop(request_id, None)
        return waiter.reply

    def _error_of(self, reply: m.Fail | None) -> Exception:
        """What a request raises when it failed (``reply``), or the connection closed (None)."""
        if reply is None:
            return ClusterConnectionError(f"the connection to {self.peer} closed before it replied")
        error = RemoteCallError(reply.message)
        error.kind = reply.kind
        return error

    @property
    def sending(self) -> bool:
        """True while frames wait in the queue or are being written."""
        return bool(self._queued or self._writing)

    def abort(self) -> None:
        """Drop the connection at once (both sides see it close)."""
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    # -- internals --

    async def _write_loop(self) -> None:
        frames = self._frames
        send_all = self.stream.send_all
        while True:
            while not frames:
                self._frames_added = trio.Event()
                if frames:  # added by another thread between the check and the new event
                    break
                await self._frames_added.wait()
            with self._send_lock:
                batch = [frames.popleft()]
                size = len(batch[0])
                while frames and size < 1 << 20:
                    batch.append(frames.popleft())
                    size += len(batch[-1])
                self._queued -= len(batch)
                self._writing = True
            if len(batch) == 1:
                await send_all(batch[0])
            elif size <= 4 << 20:
                await send_all(b"".join(batch))
            else:  # a raw payload is in there: don't copy it into a joined buffer
                for frame in batch:
                    await send_all(frame)
            with self._send_lock:
                self._writing = False
            if frames:
                continue

    # The read side runs in a thread of its own: a blocking read per message is far cheaper
    # than a turn of the trio loop (two wakeups, four syscalls and the scheduler), and raw
    # payloads land in their destination without holding up the loop. Each batch of messages
    # read together goes to the trio thread in one run_sync_soon, in order; a ``fast_handler``
    # may instead handle a message right in the reader thread (see Connection.__init__).

    async def _read_loop(self) -> None:
        finished = trio.Event()
        outcome: list[BaseException | None] = []

        def report(error: BaseException | None) -> None:
            outcome.append(error)
            finished.set()

        reader = socket.socket(fileno=os.dup(self.stream.socket.fileno()))
        thread = threading.Thread(target=self._reader_main, args=(reader, report), daemon=True,
                                  name=f"cluster-reader-{self.peer}")
        thread.start()
        try:
            await finished.wait()
        finally:
            if not finished.is_set():  # cancelled: wake the reader (it sees end-of-stream)
                try:
                    self.stream.socket.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if outcome[0] is not None:
            raise outcome[0]

    def _reader_main(self, sock: socket.socket, report: Callable[[BaseException | None], None]) -> None:
        error: BaseException | None = None
        try:
            self._read_frames(sock)
        except OSError:
            pass  # the connection broke: same as the peer closing it
        except BaseException as exc:  # a malformed frame (ProtocolError), or a bug: the loop raises it
            error = exc
        finally:
            sock.close()
            try:
                self._token.run_sync_soon(report, error)
            except trio.RunFinishedError:
                pass

    def _read_frames(self, sock: socket.socket) -> None:
        # The socket is non-blocking (trio's writer shares it): wait in poll when it is empty.
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        wait = poller.poll
        buf = bytearray()
        fast = self.fast_handler
        recv = sock.recv
        while True:
            try:
                data = recv(1 << 18)
            except BlockingIOError:
                wait()
                continue
            if not data:
                return
            buf += data
            pos = 0
            end = len(buf)
            batch: _Batch = []
            while end - pos >= 4:
                size = int.from_bytes(buf[pos : pos + 4], "little")
                if size & RAW_FLAG:
                    taken = self._read_raw(sock, wait, buf, pos, end, size & ~RAW_FLAG, batch)
                    if taken is None:
                        break  # its header has not fully arrived yet
                    pos += taken
                    end = len(buf)
                    continue
                if size > MAX_FRAME:
                    raise ProtocolError(f"{self.peer} sent a frame of {size} bytes")
                if end - pos - 4 < size:
                    break
                msg, request_id = decode(buf[pos + 4 : pos + 4 + size])
                pos += 4 + size
                if (fast is not None and not batch and self._forwarded == self._handled
                        and not (request_id and isinstance(msg, m.Ok | m.Fail | m.Pending))
                        and fast(self, msg, request_id)):
                    continue
                batch.append((msg, request_id))
            if pos:
                del buf[:pos]
            if batch:
                self._forward(batch)

    def _forward(self, batch: _Batch) -> None:
        """Hand messages to the trio thread; waits while it is far behind (backpressure)."""
        while not self._room.acquire(timeout=1.0):
            if self.closed:
                return
        self._forwarded += 1
        self._token.run_sync_soon(self._handle_batch, batch)

    def _handle_batch(self, batch: _Batch) -> None:
        self._room.release()
        try:
            if self.closed:
                return  # aborted meanwhile: its requests have been answered with "closed"
            waiting = self._waiting
            for msg, request_id in batch:
                if request_id:
                    if isinstance(msg, m.Ok | m.Fail | m.Pending | int):
                        waiter = waiting.get(request_id)
                        if waiter is None:
                            continue
                        if isinstance(msg, m.Pending):
                            if waiter.on_pending is not None:
                                waiter.on_pending(msg.reason)
                        else:
                            waiter.reply = msg
                            waiter.done.set()
                        continue
                elif isinstance(msg, int):  # a raw frame that answers no request
                    continue
                try:
                    self.handler(self, msg, request_id)
                except Exception as exc:  # a handler's failure is its request's, not the process's
                    self._handler_failed(msg, request_id, exc)
                if self.closed:
                    return
        finally:
            # Only now may the reader handle messages itself again: until the last one of
            # this batch is handled, a fast message would overtake the batch's later ones.
            self._handled += 1

    def _handler_failed(self, msg: Any, request_id: int, exc: Exception) -> None:
        log.error("handler_failed", message=type(msg).__name__, peer=self.peer, error=repr(exc), exc_info=exc)
        if request_id and not self.closed:
            self.reply_error(request_id, "internal", f"handling {type(msg).__name__} failed: "
                             f"{type(exc).__name__}: {exc} (the log of the process that handled it has the traceback)")

    def _read_raw(self, sock: socket.socket, wait: Callable[[], Any], buf: bytearray, pos: int,
                  end: int, size: int, batch: _Batch) -> int | None:
        """Handle a raw frame at ``buf[pos:]``: its payload goes straight to its destination.

        Returns how many bytes of ``buf`` it consumed, or None if its header is incomplete.
        The rest of the payload is read from the socket directly into the destination; the
        reply (the payload's size) joins ``batch``.
        """
        if size > MAX_FRAME:
            raise ProtocolError(f"{self.peer} sent a frame of {size} bytes")
        if end - pos < 8:
            return None
        header_size = int.from_bytes(buf[pos + 4 : pos + 8], "little")
        start = pos + 8 + header_size
        if end < start:
            return None
        try:
            request_id, n = unpackb(buf[pos + 8 : start])
        except Exception as exc:
            raise ProtocolError(f"received a malformed raw frame ({exc})") from None
        if type(request_id) is not int or type(n) is not int or n != size - 4 - header_size:
            raise ProtocolError(f"{self.peer} sent a raw frame whose sizes disagree")
        waiter = self._waiting.get(request_id)
        destination = waiter.destination if waiter is not None else None
        if destination is None or destination.nbytes < n:
            destination = memoryview(bytearray(n))  # no room for it: the asker gets its size only
        have = min(end - start, n)
        destination[:have] = buf[start : start + have]
        received = have
        while received < n:
            try:
                got = sock.recv_into(destination[received:n], n - received)
            except BlockingIOError:
                wait()
                continue
            if not got:
                raise ConnectionResetError("the peer closed the connection mid-frame")
            received += got
        batch.append((n, request_id))
        return start + have - pos

    def _close(self) -> None:
        if self.closed:
            return
        with self._send_lock:  # no thread is sending on it as it closes
            self.closed = True
            self._direct.close()
        for waiter in self._waiting.values():
            waiter.done.set()
        for callback in self.on_close:
            callback(self)


async def run_connection(
    stream: trio.SocketStream,
    peer: str,
    peer_role: str,
    handler: Handler,
    fast_handler: FastHandler | None = None,
    *,
    task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a connection until either side closes it; reports the Connection once running."""
    conn = Connection(stream, peer, peer_role, handler, fast_handler)
    try:
        async with trio.open_nursery() as nursery:
            conn.nursery = nursery
            nursery.start_soon(conn._write_loop)
            task_status.started(conn)
            await conn._read_loop()
            nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError, OSError):
        pass
    finally:
        conn._close()
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)



class Dialer:
    """The connections a process dials: one per address, reused while open, dialled once
    however many tasks ask at the same moment."""

    def __init__(self, token: str, role: str, handler: Handler, fast_handler: FastHandler | None = None) -> None:
        self.token = token
        self.role = role
        self.handler = handler
        self.fast_handler = fast_handler
        self.nursery: trio.Nursery | None = None  # where connections run; set before the first connect
        self.conns: dict[str, Connection] = {}
        self._locks: dict[str, trio.Lock] = collections.defaultdict(trio.Lock)

    async def connect(self, address: str, what: str) -> Connection:
        conn = self.conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        async with self._locks[address]:
            conn = self.conns.get(address)
            if conn is None or conn.closed:
                if self.nursery is None:
                    raise RuntimeError("Dialer.nursery must be set before the first connect")
                conn = await dial(self.nursery, address, self.token, self.role, self.handler, what=what,
                                  fast_handler=self.fast_handler)
                self.conns[address] = conn
                conn.on_close.append(self._forget)
        return conn

    def open(self, address: str) -> Connection | None:
        """The open connection to ``address``, if there is one (no dialling)."""
        conn = self.conns.get(address)
        return conn if conn is not None and not conn.closed else None

    def _forget(self, conn: Connection) -> None:
        if self.conns.get(conn.peer) is conn:
            del self.conns[conn.peer]


async def dial(
    nursery: trio.Nursery,
    address: str,
    token: str,
    role: str,
    handler: Handler,
    *,
    timeout: float = 10.0,
    what: str = "the cluster",
    fast_handler: FastHandler | None = None,
) -> Connection:
    """Connect to ``address``, authenticate, and run the connection in ``nursery``."""
    stream = await open_stream(address, timeout=timeout, what=what)
    try:
        peer_role = await client_handshake(stream, token, role, f"{what} at {address}")
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise ClusterConnectionError(
            f"{what} at {address} accepted the connection but did not complete the handshake "
            f"within {HANDSHAKE_TIMEOUT:.0f}s; is that port really a cluster daemon?"
        ) from None
    except ClusterConnectionError:  # refused (a wrong token, another version): says so itself
        await trio.aclose_forcefully(stream)
        raise
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        await trio.aclose_forcefully(stream)  # (e.g. reset by a daemon that was just stopping)
        raise ClusterConnectionError(f"the connection to {what} at {address} broke during the handshake: {exc}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    conn: Connection = await nursery.start(run_connection, stream, address, peer_role, handler,
                                           fast_handler)
    return conn


# --- same-host shortcut -----------------------------------------------------------------------
#
# A process that listens on HOST:PORT also listens on the abstract Unix socket named after that
# address, and a dialer on the same host uses it: a message over a Unix socket costs the kernel
# far less than one through the TCP loopback stack. Abstract names live in the network
# namespace, like ports do, so they reach exactly the processes HOST:PORT would (partitions made
