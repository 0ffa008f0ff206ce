"""Workers forked from a pre-imported parent: start-up in milliseconds instead of ~0.4 s.

A node daemon forks one *zygote* before it starts its event loop, after importing everything a
worker needs. The zygote is a small synchronous loop with no threads: on each request it forks
a worker (which runs :func:`cluster.worker.run`) and reports the pid; when a worker exits it
reports the exit code. It dies with the daemon (parent-death signal), and its workers die with
it. The daemon talks to it over two pipes, one JSON line per message.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import sys
import time
import traceback
from collections.abc import AsyncIterator
from typing import Any

import attrs
import trio

from cluster.session import die_with_parent
from cluster.wire import messages as m
from cluster.wire.codec import decode, encode

# Workers are forked from the zygote, so all that they import is imported once, with this.
from cluster.worker.executor import run


@attrs.define(eq=False)
class Zygote:
    """The daemon's end of the zygote: ask for workers, hear of their births and deaths."""

    pid: int
    _requests: int
    _events: int
    _stream: trio.lowlevel.FdStream | None = None

    def spawn(self, worker_id: str, config: dict[str, Any], log_path: str) -> None:
        os.write(self._requests, encode(m.SpawnWorker(worker_id, config, log_path)))

    async def events(self) -> AsyncIterator[m.WorkerSpawned | m.WorkerExited]:
        """Yield WorkerSpawned and WorkerExited as they happen."""
        self._stream = trio.lowlevel.FdStream(self._events)
        buf = b""
        while True:
            data = await self._stream.receive_some(65536)
            if not data:
                return
            buf += data
            events, buf = _frames(buf)
            for event in events:
                yield event

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._requests)


def start_zygote(close_in_workers: list[int]) -> Zygote:
    """Fork the zygote. Call before any thread or event loop exists in this process."""
    req_r, req_w = os.pipe()
    ev_r, ev_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the zygote
        try:
            os.close(req_w)
            os.close(ev_r)
            for fd in close_in_workers:
                with contextlib.suppress(OSError):
                    os.close(fd)
            _zygote_loop(req_r, ev_w)
        finally:
            os._exit(0)
    os.close(req_r)
    os.close(ev_w)
    os.set_blocking(ev_r, False)
    return Zygote(pid, req_w, ev_r)


def _zygote_loop(requests: int, events: int) -> None:

    die_with_parent()
    # `cluster stop` signals the daemon's whole process group: the zygote stays while the
    # daemon lets its workers finish (it goes when the daemon closes its pipe, or dies).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    buf = b""

    def report(event: m.WorkerSpawned | m.WorkerExited) -> None:
        os.write(events, encode(event))

    while True:
        try:
            readable, _, _ = select.select([requests, wake_r], [], [])
        except InterruptedError:
            readable = [wake_r]
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            report(m.WorkerExited(pid, os.waitstatus_to_exitcode(status)))
        if requests in readable:
            data = os.read(requests, 65536)
            if not data:  # the daemon is gone or shutting down: take the workers along
                _stop_children(children)
                return
            buf += data
            spawns, buf = _frames(buf)
            for request in spawns:
                pid = os.fork()
                if pid == 0:
                    _become_worker(request, [requests, events, wake_r, wake_w])
                children.add(pid)
                report(m.WorkerSpawned(request.worker_id, pid))


def _stop_children(children: set[int], grace: float = 1.0) -> None:
    """Wait briefly for children already told to stop, then kill the rest; reap them all."""
    deadline = time.monotonic() + grace
    while children and time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            children.discard(pid)
        else:
            time.sleep(0.01)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _frames(buf: bytes) -> tuple[list[Any], bytes]:
    """The whole frames at the start of ``buf``, decoded, and what is left of it."""
    found, pos = [], 0
    while len(buf) - pos >= 4:
        size = int.from_bytes(buf[pos : pos + 4], "little")
        if len(buf) - pos - 4 < size:
            break
        found.append(decode(buf[pos + 4 : pos + 4 + size])[0])
        pos += 4 + size
    return found, buf[pos:]


def _become_worker(request: m.SpawnWorker, close: list[int]) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in close:
            os.close(fd)
        fd = os.open(request.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)

        run(request.config)
        code = 0
    except BaseException as exc:
        if not (isinstance(exc, OSError) and exc.errno == errno.EPIPE):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
