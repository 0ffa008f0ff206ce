"""The head's side of remote client mode: a proxy driver per client, and the relay between them.

A client (cluster_client.remote) can reach only the head. It asks for a session (``OpenSession``);
the head starts ``python -m cluster_client.proxy SESSION``, a driver of the cluster, waits
until it attaches, and from then on relays each of the client's calls to it and the answer
back. When the client's connection closes, its proxy is stopped, and with it everything it
owned; when the proxy dies, the client's calls fail saying so.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from typing import Any

import structlog
import trio

from cluster.errors import ClusterConnectionError, RemoteCallError
from cluster.session import die_with_parent
from cluster.wire import messages as m
from cluster_client.messages import (
    AttachProxy,
    Call,
    OpenSession,
    RelayCall,
    SessionEnded,
    SessionOpened,
    SessionOutput,
)

log = structlog.get_logger("cluster.client.relay")

RELAY_SERVICE = "client"
CALL_SERVICE = "client-call"
OUTPUT_SERVICE = "client-output"  # head -> client: what the job's workers print
END_SERVICE = "client-end"  # head -> client: why its session ended
ATTACH_TIMEOUT_S = 60.0


class Session:
    def __init__(self, session_id: str, client: Any, proc: subprocess.Popen) -> None:
        self.id = session_id
        self.client = client
        self.proc = proc
        self.proxy: Any = None  # its connection, once attached
        self.attach: AttachProxy | None = None  # what its proxy driver said when it attached
        self.attached = trio.Event()


class ClientRelay:
    def __init__(self, head: Any) -> None:
        self.head = head
        self.sessions: dict[str, Session] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.head.services.add(RELAY_SERVICE, self._on_request)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            for session in list(self.sessions.values()):
                self._end(session)

    def _on_request(self, conn: Any, payload: Any, request_id: int) -> None:
        kind = type(payload)
        if kind is OpenSession:
            self._nursery.start_soon(self._open, conn, request_id)
            return
        if kind not in (RelayCall, AttachProxy, SessionOutput):
            conn.reply_error(request_id, "unexpected", f"the client relay does not handle {kind.__name__}")
            return
        session = self.sessions.get(payload.session)
        if session is None:
            conn.reply_error(request_id, "closed", "this client session is over (its proxy driver is gone); "
                                                   "call cluster.init() again")
            return
        if kind is RelayCall and conn is session.client:
            self._nursery.start_soon(self._relay, session, payload.call, request_id)
        elif kind is AttachProxy and session.proxy is None:
            session.proxy = conn
            session.attach = payload
            conn.on_close.append(lambda _c: self._end(
                session, "its proxy driver on the head exited (see client-proxy-*.out in the head's logs)"))
            session.attached.set()
            conn.reply(request_id, True)
        elif kind is SessionOutput and conn is session.proxy:
            if not session.client.closed:
                session.client.send(m.ServiceRequest(OUTPUT_SERVICE, payload.lines))
        else:
            conn.reply_error(request_id, "unexpected", f"client sessions do not take {kind.__name__} here")

    async def _open(self, conn: Any, request_id: int) -> None:
        session_id = secrets.token_hex(8)
        env = {**os.environ, "CLUSTER_ADDRESS": self.head.address, "CLUSTER_TOKEN": self.head.token}
        env.pop("CLUSTER_NODE_ID", None)
        log_path = os.path.join(self.head.session_dir, "logs", f"client-proxy-{session_id}.out")
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen([sys.executable, "-m", "cluster_client.proxy", session_id], env=env,
                                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                    preexec_fn=die_with_parent)
        session = self.sessions[session_id] = Session(session_id, conn, proc)
        conn.on_close.append(lambda _c: self._end(session))
        log.info("client_session_opening", session=session_id, proxy_pid=proc.pid)
        with trio.move_on_after(ATTACH_TIMEOUT_S):
            while not session.attached.is_set():
                if proc.poll() is not None:
                    break
                with trio.move_on_after(0.1):
                    await session.attached.wait()
        if not session.attached.is_set():
            self._end(session)
            conn.reply_error(request_id, "proxy", f"the head could not start a driver for this client (see "
                                                  f"{log_path} on the head's machine)")
            return
        attach = session.attach
        conn.reply(request_id, SessionOpened(session_id, self.head.address, attach.address, attach.node_id,
                                             attach.session_dir, attach.pid))

    async def _relay(self, session: Session, call: Call, request_id: int) -> None:
        try:
            reply = await session.proxy.request(m.ServiceRequest(CALL_SERVICE, call))
        except (ClusterConnectionError, RemoteCallError) as exc:
            if not session.client.closed:
                session.client.reply_error(request_id, "closed", f"the client's proxy driver on the head is "
                                                                 f"gone ({exc}); call cluster.init() again")
            return
        if not session.client.closed:
            session.client.reply(request_id, reply)

    def _end(self, session: Session, reason: str = "") -> None:
        if self.sessions.pop(session.id, None) is None:
            return
        log.info("client_session_ended", session=session.id, reason=reason or "the client left")
        if reason and not session.client.closed:
            session.client.send(m.ServiceRequest(END_SERVICE, SessionEnded(reason)))
        if session.proc.poll() is None:
            session.proc.send_signal(signal.SIGTERM)
            if self._nursery is not None:
                self._nursery.start_soon(self._reap, session.proc)
        if session.proxy is not None:
            session.proxy.abort()
        if not session.client.closed:
            session.client.abort()

    @staticmethod
    async def _reap(proc: subprocess.Popen) -> None:
        with trio.move_on_after(10):
            while proc.poll() is None:
                await trio.sleep(0.1)
        if proc.poll() is None:
            proc.kill()
            await trio.to_thread.run_sync(proc.wait)
