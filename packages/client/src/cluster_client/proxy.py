"""The proxy driver of a remote client (``python -m cluster_client.proxy SESSION``).

The head starts one per ``cluster.init("cluster://HOST:PORT")``. It is an ordinary driver of
the cluster: it owns what the client submits, and runs each call the client sends through the
head (cluster_client.remote) on its own runtime. The client's ObjectRefs and ActorHandles
stand for the ones kept here: each reply says how many it *granted* of each, and the client
gives them back (``release``) once it holds none, so this process knows exactly when it may
let go.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
from typing import Any

import cloudpickle
import structlog
import trio

from cluster import api
from cluster.api.actors import ActorHandle
from cluster.api.options import ActorOptions
from cluster.objects.refs import ObjectRef, _rebuild_ref, collect_outgoing
from cluster.owner.runtime import PendingTask
from cluster.wire import messages as m
from cluster.wire.connection import dial
from cluster_client.messages import AttachProxy, Call, CallResult, SessionOutput

log = structlog.get_logger("cluster.client.proxy")

RELAY_SERVICE = "client"  # on the head (cluster_client.relay)
CALL_SERVICE = "client-call"  # what the head sends here


class _ActorClassShim:
    """What Runtime.create_actor reads of an actor class."""

    def __init__(self, name: str, methods: dict, options: dict) -> None:
        self.__name__ = name
        self._methods = methods
        self._options = ActorOptions(**options)


class Proxy:
    def __init__(self) -> None:
        self.rt = api.current_runtime()
        self.lock = threading.Lock()
        self.refs: dict[bytes, ObjectRef] = {}  # what the client holds, kept alive here
        self.ref_grants: collections.Counter = collections.Counter()
        self.handles: dict[bytes, ActorHandle] = {}
        self.handle_grants: collections.Counter = collections.Counter()

    # -- grants --

    def _grant_ref(self, ref: ObjectRef, grants: dict) -> bytes:
        with self.lock:
            self.refs.setdefault(ref.id, ref)
            self.ref_grants[ref.id] += 1
        grants.setdefault("refs", collections.Counter())[ref.id] += 1
        return ref.id

    def _grant_handle(self, handle: ActorHandle, grants: dict) -> tuple:
        with self.lock:
            self.handles.setdefault(handle._actor_id, handle)
            self.handle_grants[handle._actor_id] += 1
        grants.setdefault("handles", collections.Counter())[handle._actor_id] += 1
        return (handle._actor_id, handle._class_name, handle._methods, handle._owner, handle._name_key)

    def _ref(self, oid: bytes, owner: str) -> ObjectRef:
        with self.lock:
            ref = self.refs.get(oid)
        return ref if ref is not None else _rebuild_ref(oid, owner)

    def _handle(self, spec: tuple) -> ActorHandle:
        with self.lock:
            handle = self.handles.get(spec[0])
        return handle if handle is not None else ActorHandle(*spec)

    def _release(self, refs: dict, handles: dict) -> None:
        dropped = []  # dropped outside the lock: letting go may free objects
        with self.lock:
            for oid, n in refs.items():
                self.ref_grants[oid] -= n
                if self.ref_grants[oid] <= 0:
                    del self.ref_grants[oid]
                    dropped.append(self.refs.pop(oid, None))
            for actor_id, n in handles.items():
                self.handle_grants[actor_id] -= n
                if self.handle_grants[actor_id] <= 0:
                    del self.handle_grants[actor_id]
                    dropped.append(self.handles.pop(actor_id, None))
        del dropped

    # -- calls --

    def handle(self, call: Call) -> CallResult:
        grants: dict = {}
        try:
            args = cloudpickle.loads(call.args)
            Call.check_args(call.op, args)
            result, raised = getattr(self, f"op_{call.op}")(grants, *args), False
        except Exception as exc:  # the client raises it, as a direct driver would
            result, raised = exc, True
        try:
            with collect_outgoing() as outgoing:
                data = cloudpickle.dumps(result)
        except Exception as exc:
            outgoing = []
            data = cloudpickle.dumps(TypeError(f"the result could not be sent to the client: {exc}"))
            raised = True
        for ref in outgoing:  # refs inside values: the client holds them now
            self._grant_ref(ref, grants)
        return CallResult(data, raised, dict(grants.get("refs", {})), dict(grants.get("handles", {})))

    def op_submit(self, grants: dict, fields: dict) -> list[bytes]:
        fields["dep_refs"] = [self._ref(*r) for r in fields["dep_refs"]]
        fields["held"] = [self._ref(*r) for r in fields["held"]]
        refs = self.rt.submit(PendingTask(**fields))
        return [self._grant_ref(ref, grants) for ref in refs]

    def op_create_actor(self, grants: dict, name: str, methods: dict, options: dict, blob: bytes,
                        payload: bytes, deps: list, held: list) -> tuple:
        fields = self.rt.create_actor(_ActorClassShim(name, methods, options), blob, payload,
                                      [self._ref(*r) for r in deps], [self._ref(*r) for r in held])
        return self._grant_handle(ActorHandle(*fields), grants)

    def op_actor_call(self, grants: dict, spec: tuple, method: str, num_returns: int, payload: bytes,
                      deps: list, held: list, group: str = "") -> list[bytes]:
        refs = self.rt.submit_actor_call(self._handle(spec), method, num_returns, payload,
                                         [self._ref(*r) for r in deps], [self._ref(*r) for r in held],
                                         group=group)
        return [self._grant_ref(ref, grants) for ref in refs]

    def op_put(self, grants: dict, value: Any) -> bytes:
        return self._grant_ref(self.rt.put(value), grants)

    def op_get(self, grants: dict, refs: list, timeout: float | None) -> list:
        return self.rt.get([self._ref(*r) for r in refs], timeout)

    def op_wait(self, grants: dict, refs: list, num_returns: int, timeout: float | None) -> list[int]:
        objects = [self._ref(*r) for r in refs]
        ready, _ = self.rt.wait(objects, num_returns, timeout)
        ready_ids = {ref.id for ref in ready}
        return [i for i, ref in enumerate(objects) if ref.id in ready_ids]

    def op_cancel(self, grants: dict, ref: tuple, force: bool, recursive: bool) -> None:
        self.rt.cancel(self._ref(*ref), force, recursive)

    def op_kill_actor(self, grants: dict, spec: tuple, no_restart: bool) -> None:
        self.rt.kill_actor(self._handle(spec), no_restart)

    def op_named_actor(self, grants: dict, name: str, namespace: str | None) -> tuple | None:
        fields = self.rt.named_actor(name, namespace)
        return None if fields is None else self._grant_handle(ActorHandle(*fields), grants)

    def op_handle_escaped(self, grants: dict, actor_id: bytes) -> None:
        self.rt.actor_handle_escaped(actor_id)

    def op_release(self, grants: dict, refs: dict, handles: dict) -> None:
        self._release(refs, handles)

    def op_nodes(self, grants: dict) -> list:
        return self.rt.list_nodes()


async def serve(session: str) -> None:
    proxy = Proxy()
    rt = proxy.rt
    token = trio.lowlevel.current_trio_token()
    async with trio.open_nursery() as nursery:

        def on_message(conn: Any, msg: Any, request_id: int) -> None:
            if type(msg) is m.ServiceRequest and msg.service == CALL_SERVICE:
                if type(msg.payload) is Call:
                    nursery.start_soon(answer, conn, msg.payload, request_id)
                else:
                    conn.reply_error(request_id, "unexpected",
                                     f"a client proxy does not handle {type(msg.payload).__name__}")
            else:
                conn.reply_error(request_id, "unexpected", f"a client proxy does not handle {type(msg).__name__}")

        async def answer(conn: Any, call: Call, request_id: int) -> None:
            reply = await trio.to_thread.run_sync(proxy.handle, call, abandon_on_cancel=True)
            if not conn.closed:
                conn.reply(request_id, reply)

        conn = await dial(nursery, rt.head_address, rt.token, "driver", on_message, what="the head")
        closed = trio.Event()
        conn.on_close.append(lambda _c: closed.set())

        def forward_output(msg: Any) -> None:  # worker prints, on to the client's console
            payload = SessionOutput(session, msg)
            try:
                token.run_sync_soon(lambda: conn.closed or conn.send(m.ServiceRequest(RELAY_SERVICE, payload)))
            except trio.RunFinishedError:
                pass

        rt.log_sink = forward_output
        await conn.request(m.ServiceRequest(RELAY_SERVICE, AttachProxy(session, rt.address, rt.node_id,
                                                                        rt.session_dir, os.getpid())))
        log.info("client_proxy_attached", session=session, address=rt.address)
        await closed.wait()  # the head let go of us: the client is gone
        nursery.cancel_scope.cancel()


def main() -> None:
    session = sys.argv[1]
    api.init()  # CLUSTER_ADDRESS and CLUSTER_TOKEN, set by the head
    try:
        trio.run(serve, session)
    finally:
        api.shutdown()


if __name__ == "__main__":
    main()
