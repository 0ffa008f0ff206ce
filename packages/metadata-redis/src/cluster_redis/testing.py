"""A throwaway ``redis-server`` for tests: a temp dir of its own, no persistence, stopped by its pid.

    with RedisServer.started() as server:        # skips the test if redis-server is not installed
        store = RedisMetadataStore.from_url(server.url(prefix="t1:"))
        server.client().hgetall("t1:rows:jobs")  # what Redis holds, read with redis-py

It listens on a Unix socket in its temp dir, and on a free TCP port of 127.0.0.1 with
``tcp=True``. ``started()`` returns once Redis says it is ready: it is run supervised by
"systemd", which here means it sends ``READY=1`` to a datagram socket of ours (``NOTIFY_SOCKET``),
so nobody polls. ``stop()`` (also on leaving the ``with``, pass or fail) ends it by its pid and
removes the temp dir. ``kill``, ``pause``/``resume`` and ``restart`` are for tests of a Redis
that goes away.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import attrs
import pytest
import redis

READY_TIMEOUT_S = 15.0


def redis_server_binary() -> str:
    """The path of ``redis-server``; skips the calling test when it is not installed."""
    path = shutil.which("redis-server")
    if path is None:
        pytest.skip("redis-server is not installed: apt-get install -y redis-server (as root, "
                    "`nox -s tests` installs Debian's)")
    return path


@attrs.define
class RedisServer:
    binary: str
    password: str | None = None
    tcp: bool = False
    root: Path = attrs.field(init=False, factory=lambda: Path(tempfile.mkdtemp(prefix="cluster-redis-")))
    port: int | None = attrs.field(init=False, default=None)
    _proc: subprocess.Popen[bytes] | None = attrs.field(init=False, default=None)

    @classmethod
    @contextlib.contextmanager
    def started(cls, *, password: str | None = None, tcp: bool = False) -> Iterator[RedisServer]:
        server = cls(redis_server_binary(), password=password, tcp=tcp)
        try:
            server.start()
            yield server
        finally:
            server.stop()

    @property
    def socket_path(self) -> Path:
        return self.root / "redis.sock"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "the server is not running"
        return self._proc.pid

    def url(self, *, prefix: str | None = None, db: int = 0, password: str | None = None,
            **options: str) -> str:
        """``unix://`` URL of this server; the server's password unless ``password`` is given."""
        password = self.password if password is None else password
        auth = f":{quote(password, safe='')}@" if password else ""
        query = {"db": str(db), **({"prefix": prefix} if prefix is not None else {}), **options}
        return f"unix://{auth}{self.socket_path}?{urlencode(query)}"

    def tcp_url(self, *, prefix: str | None = None, db: int = 0, password: str | None = None) -> str:
        """``redis://127.0.0.1:PORT/DB`` URL of this server (started with ``tcp=True``)."""
        assert self.port is not None, "started without tcp=True"
        password = self.password if password is None else password
        auth = f":{quote(password, safe='')}@" if password else ""
        query = f"?{urlencode({'prefix': prefix})}" if prefix is not None else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}{query}"

    def client(self) -> redis.Redis:
        """A redis-py client of this server, to look at what a store wrote."""
        return redis.Redis(unix_socket_path=str(self.socket_path), password=self.password,
                           decode_responses=True, socket_timeout=10)

    def start(self) -> None:
        """Start redis-server and return once it accepts connections."""
        if self.tcp and self.port is None:
            self.port = _free_port()
        notify_path = self.root / "notify.sock"
        notify_path.unlink(missing_ok=True)
        args = [self.binary, "--port", str(self.port or 0), "--bind", "127.0.0.1",
                "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", str(self.root),
                "--logfile", str(self.root / "redis.log"), "--supervised", "systemd"]
        if self.password:
            args += ["--requirepass", self.password]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(notify_path))
            notify.settimeout(0.2)  # to look whether the server died meanwhile, not to poll Redis
            self._proc = subprocess.Popen(args, env={**os.environ, "NOTIFY_SOCKET": str(notify_path)},
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while True:
                try:
                    if b"READY=1" in notify.recv(4096):
                        return
                except TimeoutError:
                    pass
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    state = "exited" if self._proc.poll() is not None else "is not ready"
                    self.kill()
                    raise RuntimeError(f"redis-server {state} ({' '.join(args)}):\n{self.log_tail()}")

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL) and remove its temp dir."""
        try:
            if self._proc is not None and self._proc.poll() is None:
                os.kill(self._proc.pid, signal.SIGCONT)  # a paused server cannot hear SIGTERM
                os.kill(self._proc.pid, signal.SIGTERM)
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.kill()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would, keeping its temp dir (``restart`` reuses it)."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=10)

    def restart(self) -> None:
        """Kill it and start a new, empty one at the same socket (and port)."""
        self.kill()
        self.socket_path.unlink(missing_ok=True)
        self.start()

    def pause(self) -> None:
        """SIGSTOP: the server keeps its sockets open and answers nothing."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        log = self.root / "redis.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
