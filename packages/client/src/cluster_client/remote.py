"""Remote client mode: ``cluster.init("cluster://HOST:PORT")`` from a machine that can reach
only the head.

``ClientRuntime`` stands in for the driver's Runtime: everything ``cluster.api`` asks of it
becomes a call through the head to this client's proxy driver (cluster_client.proxy), which
runs it on a real runtime. ObjectRefs and ActorHandles here stand for the proxy's; this side
counts them and gives them back (``release``) when it holds none. Nothing listens on this
machine and nothing reads a node's shared memory: values travel pickled, through the head.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Any

import attrs
import cloudpickle
import trio

from cluster.errors import ClusterConnectionError, ConfigError, RemoteCallError
from cluster.objects import refs as object_ref_module
from cluster.objects.refs import ObjectRef
from cluster.owner.runtime import print_worker_output
from cluster.wire import messages as m
from cluster.wire.connection import dial
from cluster.wire.streams import parse_address
from cluster_client.messages import Call, OpenSession, RelayCall, SessionEnded
from cluster_client.relay import END_SERVICE, OUTPUT_SERVICE, RELAY_SERVICE

RELEASE_EVERY_S = 0.1


def connect(address: str, token: str | None) -> ClientRuntime:
    host_port = address.split("://", 1)[1].rstrip("/")
    parse_address(host_port)
    if not token:
        raise ConfigError(f"connecting to {address} needs the cluster token: pass token=... or set CLUSTER_TOKEN")
    runtime = ClientRuntime(host_port, token)
    runtime.start()
    return runtime


class ClientRuntime:
    def __init__(self, head_address: str, token: str) -> None:
        self.head_address = head_address
        self.token = token
        self.address = ""  # the proxy driver's: refs it owns are "ours"
        self.node_id = ""
        self.session_dir = ""
        self.session = ""
        self.proxy_pid = 0  # the proxy driver's, on the head's machine
        self.log_sink: Any = print_worker_output
        self.namespace = "default"  # (the proxy driver's on the head: names resolve there)
        self.runtime_env: dict[str, Any] | None = None  # (runtime envs: not through the head yet)
        self._lock = threading.Lock()
        self._counts: collections.Counter = collections.Counter()  # local refs per object id
        self._grants: collections.Counter = collections.Counter()  # how many the proxy granted
        self._handle_counts: collections.Counter = collections.Counter()
        self._handle_grants: collections.Counter = collections.Counter()
        self._released: dict[str, collections.Counter] = {"refs": collections.Counter(),
                                                          "handles": collections.Counter()}
        self._conn: Any = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._lost = ""

    def resolve_env(self, user_env: Any) -> dict[str, Any] | None:
        if user_env:
            raise ConfigError("runtime_env is not supported in remote client mode (cluster://) yet: "
                              "connect with cluster.init('HOST:PORT'), or submit a job with its runtime_env")
        return None

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main, ready), name="cluster-client",
                                        daemon=True)
        self._thread.start()
        ready.wait()
        if self._error is not None:
            raise self._error
        object_ref_module._runtime = self

    def stop(self) -> None:
        if object_ref_module._runtime is self:
            object_ref_module._runtime = None
        if self._token is not None and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def _main(self, ready: threading.Event) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        try:
            async with trio.open_nursery() as nursery:
                try:
                    self._conn = await dial(nursery, self.head_address, self.token, "client", self._on_message,
                                            what="the head")
                    self._conn.on_close.append(self._closed)
                    info = await self._conn.request(m.ServiceRequest(RELAY_SERVICE, OpenSession()))
                except (ClusterConnectionError, RemoteCallError) as exc:
                    self._error = ClusterConnectionError(
                        f"could not open a client session with the head at {self.head_address}: {exc}")
                    return
                finally:
                    if self._error is not None:
                        ready.set()
                self.session = info.session
                self.address = info.address
                self.node_id = info.node_id
                self.session_dir = info.session_dir
                self.proxy_pid = info.pid
                ready.set()
                nursery.start_soon(self._release_loop)
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            ready.set()

    def _closed(self, _conn: Any) -> None:
        self._lost = self._lost or (f"the connection to the head at {self.head_address} closed; the "
                                    "objects and actors this client owned are gone. Call "
                                    "cluster.shutdown() and cluster.init() again to reconnect")

    def _on_message(self, conn: Any, msg: Any, request_id: int) -> None:
        service, payload = (msg.service, msg.payload) if type(msg) is m.ServiceRequest else (None, None)
        if service == OUTPUT_SERVICE and type(payload) is m.LogLines:
            if self.log_sink is not None:
                self.log_sink(payload)
        elif service == END_SERVICE and type(payload) is SessionEnded:
            self._lost = (f"the client session ended: {payload.reason}; the objects and actors this "
                          "client owned are gone. Call cluster.shutdown() and cluster.init() again")
        elif request_id:
            conn.reply_error(request_id, "unexpected", "a remote client takes no requests")

    # ------------------------------------------------------------------ calls

    def _call(self, op: str, *args: Any, build: Any = None) -> Any:
        """Run ``op`` on the proxy; ``build(value)`` makes the objects that hold its grants."""
        if self._lost:
            raise ClusterConnectionError(self._lost)
        payload = RelayCall(self.session, Call(op, cloudpickle.dumps(args)))
        try:
            reply = trio.from_thread.run(self._conn.request, m.ServiceRequest(RELAY_SERVICE, payload),
                                         trio_token=self._token)
        except (ClusterConnectionError, RemoteCallError, trio.RunFinishedError) as exc:
            raise ClusterConnectionError(self._lost or f"lost the client session with the head at "
                                                       f"{self.head_address}: {exc}") from None
        refs, handles = reply.refs, reply.handles
        with self._lock:
            # Counted as held until the value is built, so that a copy of the same ref dropped
            # meanwhile cannot give these grants back before the new objects take them.
            self._grants.update(refs)
            self._counts.update(refs)
            self._handle_grants.update(handles)
            self._handle_counts.update(handles)
        try:
            value = cloudpickle.loads(reply.value)
            if not reply.raised and build is not None:
                value = build(value)
        finally:
            for oid, n in refs.items():
                for _ in range(n):
                    self.remove_local_ref(oid)
            for actor_id, n in handles.items():
                for _ in range(n):
                    self.actor_handle_dropped(actor_id)
        if reply.raised:
            raise value
        return value

    def _refs(self, ids: list[bytes]) -> list[ObjectRef]:
        return [ObjectRef(oid, self.address) for oid in ids]

    @staticmethod
    def _wire(refs: list[ObjectRef]) -> list[tuple[bytes, str]]:
        return [(ref.id, ref.owner) for ref in refs]

    # what cluster.api, ActorClass and ActorMethod call:

    def caller_namespace(self) -> str:
        return ""  # the proxy driver submits, in its own namespace

    def new_task_id(self) -> bytes:
        return b"client" + os.urandom(10)

    def submit(self, task: Any) -> list[ObjectRef]:
        fields = {
            "task_id": task.task_id, "name": task.name, "function_id": task.function_id,
            "function": task.function, "args": task.args, "dep_refs": self._wire(task.dep_refs),
            "num_returns": task.num_returns, "return_ids": task.return_ids, "shape": task.shape,
            "retries_left": task.retries_left, "retry_exceptions": task.retry_exceptions,
            "held": self._wire(task.held),
        }
        return self._call("submit", fields, build=self._refs)

    def create_actor(self, actor_class: Any, blob: bytes, payload: bytes, dep_refs: list, held: list) -> Any:
        return self._call("create_actor", actor_class.__name__, actor_class._methods, attrs.asdict(actor_class._options),
                          blob, payload, self._wire(dep_refs), self._wire(held), build=tuple)

    def submit_actor_call(self, handle: Any, method: str, num_returns: int, payload: bytes, dep_refs: list,
                          held: list, stream: tuple[int, bool] | None = None, group: str = "") -> list[ObjectRef]:
        spec = (handle._actor_id, handle._class_name, handle._methods, handle._owner, handle._name_key)
        return self._call("actor_call", spec, method, num_returns, payload, self._wire(dep_refs),
                          self._wire(held), group, build=self._refs)

    def put(self, value: Any) -> ObjectRef:
        return self._call("put", value, build=lambda oid: self._refs([oid])[0])

    def get(self, refs: list[ObjectRef], timeout: float | None) -> list:
        return self._call("get", self._wire(refs), timeout)  # (a GetTimeoutError comes back raised)

    def wait(self, refs: list[ObjectRef], num_returns: int, timeout: float | None) -> tuple[list, list]:
        ready = set(self._call("wait", self._wire(refs), num_returns, timeout))
        return ([r for i, r in enumerate(refs) if i in ready], [r for i, r in enumerate(refs) if i not in ready])

    def cancel(self, ref: ObjectRef, force: bool, recursive: bool = True) -> None:
        self._call("cancel", (ref.id, ref.owner), force, recursive)

    def kill_actor(self, handle: Any, no_restart: bool) -> None:
        spec = (handle._actor_id, handle._class_name, handle._methods, handle._owner, handle._name_key)
        self._call("kill_actor", spec, no_restart)

    def named_actor(self, name: str, namespace: str | None) -> Any:
        return self._call("named_actor", name, namespace, build=lambda spec: spec and tuple(spec))

    def list_nodes(self) -> list[dict]:
        return self._call("nodes")

    # reference counting (ObjectRef and ActorHandle call these)

    def add_local_ref(self, object_id: bytes) -> None:
        with self._lock:
            self._counts[object_id] += 1

    def remove_local_ref(self, object_id: bytes) -> None:
        self._drop(self._counts, self._grants, "refs", object_id)

    def _drop(self, counts: collections.Counter, grants: collections.Counter, kind: str, key: bytes) -> None:
        """One local copy of ``key`` went; at the last, give back what the proxy granted of it."""
        with self._lock:
            counts[key] -= 1
            if counts[key] > 0:
                return
            del counts[key]
            granted = grants.pop(key, 0)
            if granted:
                self._released[kind][key] += granted

    def mark_escaped(self, object_id: bytes, owner: str) -> None:
        pass  # the proxy holds it for as long as this client does

    def register_borrowed(self, refs: list) -> None:
        pass  # the proxy borrowed it when it sent it here

    def actor_handle_added(self, actor_id: bytes) -> None:
        with self._lock:
            self._handle_counts[actor_id] += 1

    def actor_handle_dropped(self, actor_id: bytes) -> None:
        self._drop(self._handle_counts, self._handle_grants, "handles", actor_id)

    def actor_handle_escaped(self, actor_id: bytes) -> None:
        if not self._lost:
            try:
                self._call("handle_escaped", actor_id)
            except ClusterConnectionError:
                pass

    async def _release_loop(self) -> None:
        """Give the proxy back what this client no longer holds, in batches."""
        while True:
            await trio.sleep(RELEASE_EVERY_S)
            with self._lock:
                refs, handles = self._released["refs"], self._released["handles"]
                if not refs and not handles:
                    continue
                self._released = {"refs": collections.Counter(), "handles": collections.Counter()}
            if self._conn is None or self._conn.closed:
                return
            call = Call("release", cloudpickle.dumps((dict(refs), dict(handles))))
            try:
                await self._conn.request(m.ServiceRequest(RELAY_SERVICE, RelayCall(self.session, call)))
            except (ClusterConnectionError, RemoteCallError):
                return
