"""A fake one-node Kubernetes cluster, for tests of the Kubernetes provider.

``FakeKube`` runs, in a background thread with its own asyncio loop:

- an API server on 127.0.0.1 (kmock's ``KubernetesEmulator`` for HTTP, discovery and the
  built-in kinds; the objects are kept here) that the official ``kubernetes`` client talks to
  unchanged: create (uid, creationTimestamp, resourceVersion, generateName, a few defaults),
  get, list and watch (label selectors; field selectors on metadata.name/namespace), replace,
  merge patch, delete (propagationPolicy), ownerReference garbage collection, pod logs, and
  Status error bodies like the real server's (400, 404 NotFound, 409 AlreadyExists, 415, 422);
- a scheduler: one node, "fake-node", with the allocatable cpu and memory given; a pod fits by
  its requests (limits where requests are missing), nodeSelector (``NODE_LABELS``) and extended
  resources (the node has none), else it stays Pending with the real scheduler's message;
- a kubelet: runs the first container of each scheduled pod as a local process in its own
  session, with env (values, Secret and ConfigMap keys, the downward API, ``$(VAR)``),
  configMap/secret/emptyDir volumes, restart policies with CrashLoopBackOff, and SIGTERM then
  SIGKILL when the pod goes away;
- a Deployment controller: keeps ``spec.replicas`` pods for each Deployment.

Where it differs from a real cluster, on purpose:
- no images: a container needs an explicit ``command``, run on this host with this venv first
  on PATH; the pod's directory stands in for its filesystem and a mount is a path rewrite
  (see ``_Kubelet``); ``KUBECONFIG`` stands in for the in-cluster service account;
- no networking: every pod's IP is 127.0.0.1, Services are only stored (no clusterIP);
- short timings: restart back-off 1 s doubling to 8 s (real: 10 s to 5 min), SIGKILL at most
  5 s after SIGTERM; deletion is immediate (no Terminating, no finalizers; Foreground acts as
  Background) and so is garbage collection (plus a sweep each round, for owners never seen);
- a watch starts now: ADDED for what exists, then live events (an object that enters or leaves
  the selection is ADDED or DELETED); resourceVersion is ignored there and on writes;
- a status is the controllers': client writes keep it, ``/status`` is 405; validation covers
  only names, and a pod's containers and quantities;
- the log endpoint serves the current run (``previous=true``: the one before);
  ``FakeKube.pod_log`` has every run, even after the pod is deleted;
- not there at all: Namespace and Node objects, authentication and RBAC (Roles are only
  stored), admission, probes (running is ready), init and sidecar containers, affinity, taints,
  ReplicaSets (a Deployment owns its pods; a new template replaces them at once), strategic
  merge patch (done as a merge patch), JSON patch and apply (415), preconditions,
  deletecollection, envFrom, hostPath, subPath, volume ``items``, log ``follow``, exec, pagination.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import kubernetes

log = logging.getLogger(__name__)

Obj = dict[str, Any]

NODE = "fake-node"
NODE_LABELS = {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux"}  # what nodeSelector matches
POD_IP = HOST_IP = "127.0.0.1"
TICK = 0.2  # seconds between reconcile rounds (any API write wakes the controllers sooner)
GRACE_CAP = 5.0  # SIGTERM -> SIGKILL after min(terminationGracePeriodSeconds, this)
BACKOFF_START, BACKOFF_MAX = 1.0, 8.0  # the real kubelet: 10 s, doubling, up to 5 min

PODS = kmock.resource("", "v1", "pods")
SECRETS = kmock.resource("", "v1", "secrets")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")


# --- small helpers -------------------------------------------------------------------------------

def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error(code: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=code, reason=reason, message=message)


def _qualified(res: kmock.resource) -> str:
    return f"{res.plural}.{res.group}" if res.group else str(res.plural)  # as in `deployments.apps "x"`


def _api_version(res: kmock.resource) -> str:
    return f"{res.group}/{res.version}" if res.group else str(res.version)


_QUANTITY = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?")
_SCALE = {"": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
          **{s: Decimal(1000) ** (i + 1) for i, s in enumerate("kMGTPE")},
          **{s + "i": Decimal(1024) ** (i + 1) for i, s in enumerate("KMGTPE")}}


def parse_quantity(quantity: str | int | float) -> Decimal:
    """A Kubernetes quantity ("500m", "1.5", "8Gi", "1G", "1e3", 1024) as a Decimal (cores, bytes)."""
    match = _QUANTITY.fullmatch(str(quantity).strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    number, suffix = Decimal(match[1]), match[2] or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return number.scaleb(int(suffix[1:]))
    return number * _SCALE[suffix]


def _pod_requests(pod: Obj) -> dict[str, Decimal]:
    """What the scheduler counts: the pod itself, and its containers' requests (limits where a
    request is missing)."""
    total = {"pods": Decimal(1)}
    for container in pod["spec"].get("containers") or []:
        res = container.get("resources") or {}
        for name, q in {**(res.get("limits") or {}), **(res.get("requests") or {})}.items():
            total[name] = total.get(name, Decimal(0)) + parse_quantity(q)
    return total


def _set_condition(conditions: list[Obj], kind: str, status: str,
                   reason: str | None = None, message: str | None = None) -> None:
    """Set a condition in place; lastTransitionTime moves only when the status flips."""
    old = next((c for c in conditions if c["type"] == kind), None)
    new = {"type": kind, "status": status, **({"reason": reason} if reason else {}),
           **({"message": message} if message else {}),
           "lastTransitionTime": old["lastTransitionTime"] if old and old["status"] == status else _now()}
    if old is None:
        conditions.append(new)
    else:
        conditions[conditions.index(old)] = new


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, undefined references are
    left as they are, and $$ is an escaped $."""
    def one(m: re.Match[str]) -> str:
        return "$" if m[0] == "$$" else env.get(m[1], m[0])

    return re.sub(r"\$\$|\$\(([^)]*)\)", one, text)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: dicts merge recursively, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _fold_string_data(secret: Obj) -> None:
    """As the apiserver: Secret.stringData is write-only, merged into data (base64)."""
    if string_data := secret.pop("stringData", None):
        secret["data"] = {**(secret.get("data") or {}),
                          **{k: base64.b64encode(v.encode()).decode() for k, v in string_data.items()}}


# --- selectors ------------------------------------------------------------------------------------

_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"


def _selector(request: kmock.Request) -> Callable[[Obj], bool]:
    """What a list or a watch asks for: the URL's namespace, labelSelector and fieldSelector."""
    labels = []  # (in|notin|exists|!, key, values)
    for req in re.split(r",(?![^()]*\))", request.params.get("labelSelector", "")):  # not in "in (a,b)"
        if not (req := req.strip()):
            continue
        if m := re.fullmatch(rf"({_KEY})\s+(in|notin)\s*\(([^()]*)\)", req):
            labels.append((m[2], m[1], {v.strip() for v in m[3].split(",") if v.strip()}))
        elif m := re.fullmatch(rf"({_KEY})\s*(==|=|!=)\s*([-A-Za-z0-9_.]*)", req):
            labels.append(("notin" if m[2] == "!=" else "in", m[1], {m[3]}))
        elif m := re.fullmatch(rf"(!?)\s*({_KEY})", req):
            labels.append(("!" if m[1] else "exists", m[2], set()))
        else:
            raise _error(400, "BadRequest", f"unable to parse requirement: {req!r}")
    fields = []  # (name|namespace, equal?, value)
    for req in filter(None, (r.strip() for r in request.params.get("fieldSelector", "").split(","))):
        if (m := re.fullmatch(r"metadata\.(name|namespace)\s*(==|=|!=)\s*(.*)", req)) is None:
            raise _error(400, "BadRequest", f"field label not supported: {re.split('[!=]', req)[0]}")
        fields.append((m[1], m[2] != "!=", m[3].strip()))
    if request.namespace is not None:
        fields.append(("namespace", True, request.namespace))

    def match(obj: Obj) -> bool:
        meta = obj["metadata"]
        have = meta.get("labels") or {}
        for op, key, values in labels:
            present, matched = key in have, key in have and have[key] in values
            if not {"exists": present, "!": not present, "in": matched, "notin": not matched}[op]:
                return False
        return all((meta.get(name, "") == value) == equal for name, equal, value in fields)

    return match


# --- the API server -------------------------------------------------------------------------------

_DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"


@attrs.define(kw_only=True)
class _ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator, with Kubernetes requests served here (see ``_handle``).

    The objects live in ``stored``, oldest first (a deleted key is gone, a new one goes last).
    Every change goes through ``put``/``_remove``: the resourceVersion (one counter, like
    etcd's) goes up and the resource's open watches get the event. The controllers call the
    same methods in-process. All runs in one asyncio loop and none of them awaits: no lock.
    """

    stored: dict[tuple[kmock.resource, str | None, str], Obj] = attrs.field(factory=dict, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _watches: dict[kmock.resource, set[asyncio.Queue[Any]]] = attrs.field(factory=lambda: defaultdict(set),
                                                                         init=False)
    changed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)  # wakes the controllers
    grace: dict[str, float] = attrs.field(factory=dict, init=False)  # deleted pod uid -> seconds
    kubelet: _Kubelet | None = None  # serves pod logs

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        with warnings.catch_warnings():  # kmock 0.8 reads it with a deprecated importlib call
            warnings.simplefilter("ignore", DeprecationWarning)
            self.resources.load_bundled()  # the built-in resources: kinds, scopes, subresources

    def get(self, res: kmock.resource, namespace: str | None, name: str | None) -> Obj | None:
        return self.stored.get((res, namespace, name or ""))

    def must(self, res: kmock.resource, namespace: str | None, name: str | None) -> Obj:
        if (obj := self.get(res, namespace, name)) is None:
            raise _error(404, "NotFound", f'{_qualified(res)} "{name}" not found')
        return obj

    def live(self, res: kmock.resource, namespace: str | None = None) -> list[Obj]:
        """The objects of a resource (all namespaces if None), oldest first."""
        return [obj for (r, ns, _), obj in self.stored.items() if r == res and namespace in (None, ns)]

    def _publish(self, res: kmock.resource, kind: str, obj: Obj, old: Obj | None = None) -> Obj:
        for queue in self._watches[res]:
            queue.put_nowait((kind, obj, old))
        return obj

    def put(self, res: kmock.resource, obj: Obj, old: Obj | None = None) -> Obj:
        """Store a new version of ``obj`` (a new object if ``old`` is None)."""
        self._rv += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self._rv)}}
        self.stored[res, obj["metadata"].get("namespace"), obj["metadata"]["name"]] = obj
        return self._publish(res, "ADDED" if old is None else "MODIFIED", obj, old)

    def _remove(self, res: kmock.resource, obj: Obj) -> Obj:
        del self.stored[res, obj["metadata"].get("namespace"), obj["metadata"]["name"]]
        self._rv += 1
        return self._publish(res, "DELETED", {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self._rv)}})

    def set_status(self, res: kmock.resource, obj: Obj, status: Obj) -> None:
        """For controllers: write a status, if it differs (a MODIFIED event and a new rv)."""
        if obj.get("status") != status:
            self.put(res, {**obj, "status": status}, obj)

    def create(self, res: kmock.resource, namespace: str | None, body: Obj) -> Obj:
        info = self.resources[res]
        obj = {"apiVersion": _api_version(res), "kind": info.kind, **copy.deepcopy(body)}
        meta = obj["metadata"] = dict(obj.get("metadata") or {})
        if not info.namespaced:
            meta.pop("namespace", None)
        elif meta.setdefault("namespace", namespace) != namespace:
            raise _error(400, "BadRequest", "the namespace of the object does not match the one of the request")
        if not meta.get("name") and not meta.get("generateName"):
            raise _error(422, "Invalid", f'{info.kind} "" is invalid: metadata.name: Required value: name or '
                                         "generateName is required")
        name = meta["name"] = meta.get("name") or meta["generateName"] + "".join(
            secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))  # as the apiserver
        if len(name) > 253 or not re.fullmatch(_DNS_SUBDOMAIN, name):
            raise _error(422, "Invalid", f'{info.kind} "{name}" is invalid: metadata.name: Invalid value: '
                                         f'"{name}": a lowercase RFC 1123 subdomain must match {_DNS_SUBDOMAIN}')
        if self.get(res, meta.get("namespace"), name) is not None:
            raise _error(409, "AlreadyExists", f'{_qualified(res)} "{name}" already exists')
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now())
        if "status" in info.subresources:
            obj["status"] = {}  # the controllers' business
        if res == PODS:
            spec = obj.setdefault("spec", {})
            if not spec.get("containers"):
                raise _error(422, "Invalid", f'Pod "{name}" is invalid: spec.containers: Required value')
            try:
                _pod_requests(obj)
            except ValueError as exc:
                raise _error(422, "Invalid", f'Pod "{name}" is invalid: spec.containers[].resources: {exc}') from None
            for key, value in (("restartPolicy", "Always"), ("terminationGracePeriodSeconds", 30),
                               ("serviceAccountName", "default"), ("schedulerName", "default-scheduler")):
                spec.setdefault(key, value)
            obj["status"] = {"phase": "Pending"}
        elif res == DEPLOYMENTS:
            obj.setdefault("spec", {}).setdefault("replicas", 1)
        elif res == SECRETS:
            _fold_string_data(obj)
        return self.put(res, obj)

    def replace(self, res: kmock.resource, namespace: str | None, name: str, body: Obj) -> Obj:
        """PUT (and a merge PATCH, once applied): the identity and the status stay the server's."""
        current = self.must(res, namespace, name)
        kept = {k: v for k, v in current["metadata"].items() if k in ("name", "namespace", "uid", "creationTimestamp")}
        obj = {**body, "apiVersion": current["apiVersion"], "kind": current["kind"],
               "metadata": {**(body.get("metadata") or {}), **kept}}
        if "status" in self.resources[res].subresources:
            obj["status"] = current.get("status") or {}
        if res == SECRETS:
            _fold_string_data(obj)
        return self.put(res, obj, current)

    def delete(self, res: kmock.resource, namespace: str | None, name: str, options: Mapping[str, Any]) -> Obj:
        current = self.must(res, namespace, name)
        uid = current["metadata"]["uid"]
        if res == PODS and options.get("gracePeriodSeconds") is not None:
            self.grace[uid] = float(options["gracePeriodSeconds"])
        if options.get("propagationPolicy") == "Orphan":  # the dependents lose their reference to it
            for (dep_res, _, _), obj in list(self.stored.items()):
                refs = obj["metadata"].get("ownerReferences") or []
                if any(ref.get("uid") == uid for ref in refs):
                    meta = {**obj["metadata"], "ownerReferences": [r for r in refs if r.get("uid") != uid]}
                    if not meta["ownerReferences"]:
                        del meta["ownerReferences"]
                    self.put(dep_res, {**obj, "metadata": meta}, obj)
        gone = self._remove(res, current)
        self.collect_garbage()
        return gone

    def collect_garbage(self) -> None:
        """Delete every object whose owners are all gone, until there is none."""
        while True:
            uids = {obj["metadata"]["uid"] for obj in self.stored.values()}
            doomed = [(key[0], obj) for key, obj in self.stored.items()
                      if (refs := obj["metadata"].get("ownerReferences"))
                      and not any(ref.get("uid") in uids for ref in refs)]
            if not doomed:
                return
            for res, obj in doomed:
                self._remove(res, obj)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # kmock keeps every request, and its dispatch to reactions scans them all (per request,
        # per reaction): a long test would slow down quadratically. So Kubernetes requests are
        # served here directly, and only a short tail of requests is kept.
        del self._requests[:-100]
        res, ns, name, sub, method = request.resource, request.namespace, request.name, request.subresource, \
            request.method
        if res is None or not res.plural or not res.version:
            return await super()._handle(request)  # discovery and non-Kubernetes URLs: kmock's
        if res not in self.resources:
            raise _error(404, "NotFound", "the server could not find the requested resource")
        if method == "GET" and res == PODS and sub == "log":
            assert self.kubelet is not None
            text = self.kubelet.read_log(self.must(PODS, ns, name), request.params)
            return aiohttp.web.Response(text=text, content_type="text/plain")
        unsupported = _error(405, "MethodNotAllowed", f"fakekube does not support {method} {request.url.path}")
        if sub is not None:
            raise unsupported
        if method == "GET" and name:
            return aiohttp.web.json_response(self.must(res, ns, name))
        if method == "GET":
            match = _selector(request)  # a bad selector is a 400 before anything is streamed
            if request.params.get("watch", "").lower() in ("true", "1"):  # the official client sends True
                stream = kmock.Response(payload=self._watch(request, match), headers={"Content-Type": "application/json"})
                return await stream(request)
            items = sorted((obj for obj in self.live(res) if match(obj)),
                           key=lambda o: (o["metadata"].get("namespace") or "", o["metadata"]["name"]))
            return aiohttp.web.json_response({"apiVersion": _api_version(res), "kind": f"{self.resources[res].kind}List",
                                              "metadata": {"resourceVersion": str(self._rv)}, "items": items})
        content_type = request.headers.get("Content-Type", "")
        if method == "PATCH" and "merge-patch" not in content_type:  # (strategic merge: as merge patch)
            raise _error(415, "UnsupportedMediaType", f"fakekube: {content_type} is not supported, only merge patch")
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise _error(400, "BadRequest", "the body must be a JSON object")
        code = 200
        if method == "POST" and name is None:
            obj, code = self.create(res, ns, body), 201
        elif method == "PUT" and name:
            obj = self.replace(res, ns, name, body)
        elif method == "PATCH" and name:
            obj = self.replace(res, ns, name, _merge_patch(self.must(res, ns, name), body))
        elif method == "DELETE" and name:
            obj = self.delete(res, ns, name, {**request.params, **body})
            if res != PODS:  # (pods answer with the pod, other kinds with a Status)
                obj = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success"}
        else:
            raise unsupported
        self.changed.set()
        return aiohttp.web.json_response(obj, status=code)

    async def _watch(self, request: kmock.Request, match: Callable[[Obj], bool]) -> AsyncIterator[Any]:
        """ADDED for what matches now, then the events that concern the selection, until
        timeoutSeconds or the server's end."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        timeout = float(request.params.get("timeoutSeconds") or 0)
        deadline = time.monotonic() + timeout if timeout else None
        self._watches[request.resource].add(queue)
        try:
            for obj in self.live(request.resource):
                queue.put_nowait(("ADDED", obj, None))
            yield b""  # send the headers now
            while True:
                left = None if deadline is None else max(deadline - time.monotonic(), 0)
                try:
                    item = await asyncio.wait_for(queue.get(), left)
                except TimeoutError:
                    return
                if item is None:  # the server is closing
                    return
                kind, obj, old = item
                now = match(obj)
                before = now if old is None else match(old)
                if now != before:  # a MODIFIED object that enters or leaves the selection
                    kind = "ADDED" if now else "DELETED"
                if now or before:
                    yield {"type": kind, "object": obj}
        finally:
            self._watches[request.resource].discard(queue)

    def close_watches(self) -> None:
        for queues in self._watches.values():
            for queue in queues:
                queue.put_nowait(None)

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesError) and exc.status < 500:  # a Status without traceback
            return aiohttp.web.json_response({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                                              "message": exc.message, "reason": exc.reason, "code": exc.status},
                                             status=exc.status)
        return await super()._render_error(exc)


# --- processes ------------------------------------------------------------------------------------

def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # start_new_session=True: its pid is its process group id


class _Procs:
    """Every container process, shared by the kubelet (loop thread) and the test thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closing = False
        self.alive: set[subprocess.Popen[bytes]] = set()  # not reaped yet
        self.running: dict[str, subprocess.Popen[bytes]] = {}  # "ns/name" -> its container

    def spawn(self, key: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes] | None:
        """The process, or None if FakeKube is closing: it starts nothing more then."""
        with self.lock:
            if self.closing:
                return None
            proc = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL, **kwargs)
            self.alive.add(proc)
            self.running[key] = proc
            return proc

    def forget(self, proc: subprocess.Popen[bytes], *, reaped: bool) -> None:
        """It is stopping (not running any more); or it is reaped too (not alive any more)."""
        if reaped:  # what is left of its group dies with it, as a container's PID namespace with its init
            _signal_group(proc, signal.SIGKILL)
        with self.lock:
            self.running = {key: p for key, p in self.running.items() if p is not proc}
            if reaped:
                self.alive.discard(proc)

    def pids(self) -> dict[str, int]:
        with self.lock:
            return {key: proc.pid for key, proc in self.running.items() if proc.returncode is None}

    def kill_all(self) -> None:
        """SIGTERM every process group, SIGKILL what is left after GRACE_CAP seconds, reap all."""
        with self.lock:
            self.closing = True
            procs = list(self.alive)
        for proc in procs:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_CAP
        while time.monotonic() < deadline and any(proc.poll() is None for proc in procs):
            time.sleep(0.05)
        for proc in procs:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        with self.lock:
            self.alive.clear()
            self.running.clear()


class _Waiting(Exception):
    """The container cannot start yet: args are (reason, message) for its state.waiting."""


@dataclass
class _Container:
    """The kubelet's memory of one pod's (first) container."""

    key: str  # "ns/name"
    name: str
    image: str
    dir: Path  # the pod's directory: HOME, tmp/, and root/ where the volumes are
    log: Path
    grace: float
    seen_at: str = field(default_factory=_now)  # the pod's status.startTime
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0  # starts so far; restartCount = runs - 1
    started_at: str = ""
    container_id: str = ""  # "fake://<pid>" of the current or last run
    starts: list[int] = field(default_factory=list)  # log offset of each run
    waiting: tuple[str, str] | None = None
    last: Obj | None = None  # lastState.terminated
    final: Obj | None = None  # state.terminated for good: the pod is Succeeded or Failed
    finished: float = 0.0  # monotonic time of the last exit


class _Kubelet:
    """Runs the first container of every pod bound to fake-node as a local process.

    Each pod gets a directory standing in for its filesystem: HOME, with TMPDIR (and
    CLUSTER_TMPDIR) its tmp/ and the volumes under its root/ (a configMap or secret mounted at
    /etc/x is written to <poddir>/root/etc/x/<key>; an emptyDir at /dev/shm is ignored, the
    host's is shared). A mount is a path rewrite: an argv element or env value that is a
    mountPath, or starts with mountPath + "/", is rewritten to the directory standing in for it
    (so ``--config /etc/x/a.yaml`` works, ``--config=/etc/x/a.yaml`` does not).
    """

    def __init__(self, server: _ApiServer, kube: FakeKube) -> None:
        self.server, self.kube = server, kube
        self.containers: dict[str, _Container] = {}  # by pod uid
        self.dying: list[tuple[subprocess.Popen[bytes], float]] = []  # (process, SIGKILL time)

    def sync(self) -> None:
        now = time.monotonic()
        pods = {pod["metadata"]["uid"]: pod for pod in self.server.live(PODS) if pod["spec"].get("nodeName") == NODE}
        for uid in [uid for uid in self.containers if uid not in pods]:  # deleted
            self._stop(self.containers.pop(uid), self.server.grace.pop(uid, None))
        self.dying = [(proc, kill_at) for proc, kill_at in self.dying if not self._reap(proc, kill_at, now)]
        for pod in pods.values():
            self._sync_pod(pod, now)

    def _sync_pod(self, pod: Obj, now: float) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        c = self.containers.get(meta["uid"])
        if c is None:
            first = spec["containers"][0]
            poddir = self.kube.root / "pods" / meta["namespace"] / f"{meta['name']}-{meta['uid'][:8]}"
            (poddir / "tmp").mkdir(parents=True, exist_ok=True)
            (self.kube.root / "logs").mkdir(exist_ok=True)
            c = self.containers[meta["uid"]] = _Container(
                key=f"{meta['namespace']}/{meta['name']}", name=first.get("name", ""), image=first.get("image", ""),
                dir=poddir, log=self.kube.root / "logs" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}.log",
                grace=float(spec.get("terminationGracePeriodSeconds", 30)))
            c.log.touch()
            self.kube._logs[c.key] = c.log
        if c.proc is not None and c.proc.poll() is not None:
            proc, c.proc = c.proc, None
            self.kube._procs.forget(proc, reaped=True)
            code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
            term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": c.started_at,
                    "finishedAt": _now(), "containerID": c.container_id}
            c.finished = now
            policy = spec.get("restartPolicy", "Always")
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                c.final = term
            else:
                c.last = term
        if c.proc is None and c.final is None:
            # The restart back-off: the first restart is at once, then 1 s, 2 s... up to the maximum.
            delay = min(BACKOFF_START * 2 ** (c.runs - 2), BACKOFF_MAX) if c.runs > 1 else 0
            if c.last is not None and now - c.finished < delay:
                c.waiting = ("CrashLoopBackOff", f"back-off {delay:g}s restarting failed container={c.name} "
                                                 f"pod={meta['name']}_{meta['namespace']}({meta['uid']})")
            else:
                self._start(pod, c)
        self.server.set_status(PODS, pod, self._status(pod, c))

    def _start(self, pod: Obj, c: _Container) -> None:
        container = pod["spec"]["containers"][0]
        try:
            mounts = self._mount(pod, container, c.dir)
            own_env = self._env(pod, container)
            if not container.get("command"):
                raise _Waiting("CreateContainerError", f'fake kubelet: container "{c.name}" has no command; '
                                                       "it runs no images, so give the command explicitly")
        except _Waiting as waiting:
            c.waiting = waiting.args  # tried again next round
            return

        def rewrite(value: str) -> str:
            for path, host in mounts:
                if value == path or value.startswith(path.rstrip("/") + "/"):
                    return host + value[len(path):]
            return value

        expansion = {**self.kube.env, **own_env}
        argv = [rewrite(_expand(str(a), expansion)) for a in [*container["command"], *(container.get("args") or [])]]
        env = {k: os.environ[k] for k in ("LANG", "PYTHONDONTWRITEBYTECODE") if k in os.environ}
        env.update({
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOME": str(c.dir), "HOSTNAME": pod["metadata"]["name"], "TMPDIR": str(c.dir / "tmp"),
            "CLUSTER_TMPDIR": str(c.dir / "tmp"),
            "KUBECONFIG": str(self.kube.kubeconfig),  # stands in for the in-cluster service account
            **self.kube.env, **{k: rewrite(v) for k, v in own_env.items()}})
        try:
            with c.log.open("ab") as out:
                offset = out.tell()
                c.proc = self.kube._procs.spawn(c.key, argv, cwd=c.dir, env=env, stdout=out, stderr=subprocess.STDOUT)
        except OSError as exc:  # (real: a StartError, exit code 128, then CrashLoopBackOff)
            c.waiting = ("RunContainerError", f"fake kubelet: cannot run {argv[0]!r}: {exc.strerror or exc}")
        if c.proc is None:
            return
        c.container_id = f"fake://{c.proc.pid}"
        c.waiting, c.started_at = None, _now()
        c.runs += 1
        c.starts.append(offset)

    def _status(self, pod: Obj, c: _Container) -> Obj:
        status = copy.deepcopy(pod["status"])
        running = c.proc is not None
        cs: Obj = {"name": c.name, "image": c.image, "imageID": "", "ready": running, "started": running,
                   "restartCount": max(c.runs - 1, 0), "lastState": {"terminated": c.last} if c.last else {}}
        if c.container_id:
            cs["containerID"] = c.container_id
        if running:
            cs["state"] = {"running": {"startedAt": c.started_at}}
        elif c.final is not None:
            cs["state"] = {"terminated": c.final}
        else:
            reason, message = c.waiting or ("ContainerCreating", "")
            cs["state"] = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        conditions = status.setdefault("conditions", [])
        _set_condition(conditions, "Initialized", "True")
        reason, message = ((None, None) if running else ("PodCompleted", None) if c.final is not None
                           else ("ContainersNotReady", f"containers with unready status: [{c.name}]"))
        for kind in ("ContainersReady", "Ready"):
            _set_condition(conditions, kind, "True" if running else "False", reason, message)
        phase = (("Succeeded" if c.final["exitCode"] == 0 else "Failed") if c.final is not None
                 else "Running" if c.runs else "Pending")
        status.update(phase=phase, startTime=c.seen_at, containerStatuses=[cs])
        status.setdefault("hostIP", HOST_IP)  # for a pod created with spec.nodeName (not scheduled)
        status.setdefault("podIP", POD_IP)
        return status

    def _stop(self, c: _Container, grace: float | None) -> None:
        proc, c.proc = c.proc, None
        if proc is None:
            return
        self.kube._procs.forget(proc, reaped=False)
        seconds = min(c.grace if grace is None else grace, GRACE_CAP)
        _signal_group(proc, signal.SIGTERM if seconds > 0 else signal.SIGKILL)
        self.dying.append((proc, time.monotonic() + seconds))

    def _reap(self, proc: subprocess.Popen[bytes], kill_at: float, now: float) -> bool:
        if proc.poll() is not None:
            self.kube._procs.forget(proc, reaped=True)
            return True
        if now >= kill_at:
            _signal_group(proc, signal.SIGKILL)
        return False

    def _data(self, res: kmock.resource, namespace: str, name: str) -> dict[str, bytes] | None:
        if (obj := self.server.get(res, namespace, name)) is None:
            return None
        decode = base64.b64decode if res == SECRETS else str.encode
        return {k: decode(v) for k, v in (obj.get("data") or {}).items()}

    def _mount(self, pod: Obj, container: Obj, poddir: Path) -> list[tuple[str, str]]:
        """Materialize the container's volumes; (mountPath, host path), longest mountPath first."""
        volumes = {v.get("name"): v for v in pod["spec"].get("volumes") or []}
        mounts = []
        for mount in container.get("volumeMounts") or []:
            path = mount["mountPath"].rstrip("/") or "/"
            host = poddir / "root" / path.lstrip("/")
            volume = volumes.get(mount.get("name"))
            if volume is None:
                raise _Waiting("CreateContainerConfigError", f'volume "{mount.get("name")}" not found')
            if "emptyDir" in volume:
                if path == "/dev/shm":
                    continue
                host.mkdir(parents=True, exist_ok=True)  # survives container restarts, as emptyDir does
            elif "configMap" in volume or "secret" in volume:
                kind, res, source = (("configmap", CONFIGMAPS, volume["configMap"]) if "configMap" in volume
                                     else ("secret", SECRETS, volume["secret"]))
                name = source.get("name") or source.get("secretName")
                data = self._data(res, pod["metadata"]["namespace"], name)
                if data is None:
                    raise _Waiting("ContainerCreating", f'MountVolume.SetUp failed for volume "{volume["name"]}" : '
                                                        f'{kind} "{name}" not found')
                host.mkdir(parents=True, exist_ok=True)
                for key, content in data.items():
                    (host / key).unlink(missing_ok=True)  # (it may be read-only)
                    (host / key).write_bytes(content)
                    (host / key).chmod(int(source.get("defaultMode", 0o644)))
            else:
                raise _Waiting("ContainerCreating", f'fake kubelet: volume "{volume.get("name")}": only '
                                                    "configMap, secret and emptyDir are supported")
            mounts.append((path, str(host)))
        return sorted(mounts, key=lambda m: len(m[0]), reverse=True)

    def _env(self, pod: Obj, container: Obj) -> dict[str, str]:
        """The container's env, in order: a value's $(VAR) sees the variables defined before it."""
        namespace = pod["metadata"]["namespace"]
        env: dict[str, str] = {}
        for var in container.get("env") or []:
            name, source = var["name"], var.get("valueFrom")
            if source is None:
                env[name] = _expand(var.get("value", ""), {**self.kube.env, **env})
            elif ref := source.get("secretKeyRef") or source.get("configMapKeyRef"):
                kind, res = ("Secret", SECRETS) if "secretKeyRef" in source else ("ConfigMap", CONFIGMAPS)
                data = self._data(res, namespace, ref.get("name", ""))
                if data is None:
                    raise _Waiting("CreateContainerConfigError", f'{kind.lower()} "{ref.get("name")}" not found')
                if ref["key"] not in data:
                    raise _Waiting("CreateContainerConfigError",
                                   f"couldn't find key {ref['key']} in {kind} {namespace}/{ref['name']}")
                env[name] = data[ref["key"]].decode(errors="replace")
            elif "fieldRef" in source:
                env[name] = _field_ref(pod, source["fieldRef"]["fieldPath"])
            else:
                raise _Waiting("CreateContainerConfigError", f"fake kubelet: env {name}: only value, "
                                                             "secretKeyRef, configMapKeyRef and fieldRef are supported")
        return env

    def read_log(self, pod: Obj, params: Mapping[str, str]) -> str:
        """GET pods/NAME/log: the current (or, with previous=true, the previous) run's output."""
        c = self.containers.get(pod["metadata"]["uid"])
        previous = params.get("previous", "").lower() in ("true", "1")
        if c is None or len(c.starts) < 1 + previous:
            raise _error(400, "BadRequest", f'{"previous terminated " if previous else ""}container '
                                            f'"{c.name if c else ""}" in pod "{pod["metadata"]["name"]}" not found')
        data = c.log.read_bytes()[c.starts[-2]:c.starts[-1]] if previous else c.log.read_bytes()[c.starts[-1]:]
        lines = data.decode(errors="replace").splitlines(keepends=True)
        return "".join(lines[max(len(lines) - int(params.get("tailLines") or len(lines)), 0):])


def _field_ref(pod: Obj, path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod["status"]
    if m := re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path):
        return str((meta.get(m[1]) or {}).get(m[2], ""))
    values = {"metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
              "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
              "spec.serviceAccountName": spec.get("serviceAccountName"), "status.podIP": status.get("podIP"),
              "status.hostIP": status.get("hostIP")}
    if path not in values:
        raise _Waiting("CreateContainerConfigError", f"fake kubelet: unsupported fieldRef {path}")
    return str(values[path] or "")


# --- controllers ----------------------------------------------------------------------------------

def _schedule(server: _ApiServer, allocatable: dict[str, Decimal]) -> None:
    pods = server.live(PODS)  # oldest first, as a FIFO queue
    used: dict[str, Decimal] = defaultdict(Decimal)
    for pod in pods:
        if pod["spec"].get("nodeName") == NODE and pod["status"].get("phase") not in ("Succeeded", "Failed"):
            for name, q in _pod_requests(pod).items():
                used[name] += q
    for pod in pods:
        spec = pod["spec"]
        if spec.get("nodeName"):
            continue
        wanted = _pod_requests(pod)
        if any(NODE_LABELS.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()):
            reasons = ["1 node(s) didn't match Pod's node affinity/selector"]
        else:
            reasons = sorted("1 Too many pods" if name == "pods" else f"1 Insufficient {name}"
                             for name, q in wanted.items()
                             if q > 0 and used[name] + q > allocatable.get(name, Decimal(0)))
        status = copy.deepcopy(pod["status"])
        conditions = status.setdefault("conditions", [])
        if reasons:
            _set_condition(conditions, "PodScheduled", "False", "Unschedulable",
                           f"0/1 nodes are available: {', '.join(reasons)}.")
            server.set_status(PODS, pod, status)
            continue
        _set_condition(conditions, "PodScheduled", "True")
        status.update(hostIP=HOST_IP, podIP=POD_IP)  # (real: a Binding, then the kubelet reports the IPs)
        server.put(PODS, {**pod, "spec": {**spec, "nodeName": NODE}, "status": status}, pod)
        for name, q in wanted.items():
            used[name] += q


def _deployments(server: _ApiServer) -> None:
    """Keep spec.replicas pods per Deployment. With no ReplicaSet in between (real: one per pod
    template, for rolling updates), the Deployment owns its pods; an older template's all go."""
    for dep in server.live(DEPLOYMENTS):
        meta, spec = dep["metadata"], dep["spec"]
        ns, template = meta["namespace"], spec.get("template") or {}
        template_hash = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        pods = []
        for pod in server.live(PODS, ns):
            if any(ref.get("uid") == meta["uid"] and ref.get("controller")
                   for ref in pod["metadata"].get("ownerReferences") or []):
                if (pod["metadata"].get("labels") or {}).get("pod-template-hash") == template_hash:
                    pods.append(pod)
                else:
                    server.delete(PODS, ns, pod["metadata"]["name"], {})
        want = spec.get("replicas", 1)
        try:
            while len(pods) < want:
                pods.append(server.create(PODS, ns, _pod_for(dep, template, template_hash)))
        except kmock.KubernetesError as exc:  # a template the API refuses (real: a ReplicaFailure condition)
            log.warning("fakekube: Deployment %s/%s cannot create its pod: %s", ns, meta["name"], exc.message)
        for pod in pods[want:]:  # too many: the newest go
            server.delete(PODS, ns, pod["metadata"]["name"], {})
        pods = pods[:want]
        ready = sum(any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
                    for p in pods)
        counts = {"replicas": len(pods), "updatedReplicas": len(pods), "readyReplicas": ready,
                  "availableReplicas": ready}
        server.set_status(DEPLOYMENTS, dep, {k: v for k, v in counts.items() if v})  # zeros are omitted


def _pod_for(dep: Obj, template: Obj, template_hash: str) -> Obj:
    meta, tmeta = dep["metadata"], template.get("metadata") or {}
    pod_meta: Obj = {
        "generateName": f"{meta['name']}-{template_hash}-",
        "labels": {**(tmeta.get("labels") or {}), "pod-template-hash": template_hash},
        "annotations": dict(tmeta.get("annotations") or {}),
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                             "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
    }
    return {"metadata": pod_meta, "spec": copy.deepcopy(template.get("spec") or {})}


# --- the public face ------------------------------------------------------------------------------

class FakeKube:
    """Context manager: with FakeKube(tmp_path, cpu="4", memory="8Gi", env={...}) as kube: ...

    ``url`` is the API server, ``kubeconfig`` a kubeconfig for it (cluster, user and context
    all "fake", no auth), ``api_client()`` an official client configured from it. ``pod_log``,
    ``pids`` and ``close`` are for the tests' own inspection and cleanup. ``env`` is added to
    every container's environment (under the container's own env).
    """

    def __init__(self, root: Path, *, cpu: str = "4", memory: str = "8Gi", env: dict[str, str] | None = None):
        self.root = Path(root)
        self.allocatable = {"cpu": parse_quantity(cpu), "memory": parse_quantity(memory),
                            "pods": Decimal(110), "ephemeral-storage": parse_quantity("100Gi")}
        self.env = dict(env or {})
        self.url = ""
        self.kubeconfig = self.root / "kubeconfig"
        self._procs = _Procs()
        self._logs: dict[str, Path] = {}  # "ns/name" -> the log of the latest pod of that name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _ApiServer | None = None
        self._failure: BaseException | None = None
        self._closed = self._stopping = False

    def __enter__(self) -> FakeKube:
        self.root.mkdir(parents=True, exist_ok=True)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fakekube", daemon=True)
        self._thread.start()
        ready.wait(30)
        if not self.url:
            self.close()
            raise RuntimeError("fakekube did not start") from self._failure
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def api_client(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(str(self.kubeconfig))

    def pod_log(self, namespace: str, name: str) -> str:
        """Everything the pod's container wrote (stdout and stderr), every run; "" if it never
        ran. Unlike the API's log endpoint, this still works once the pod is deleted."""
        path = self._logs.get(f"{namespace}/{name}")
        return path.read_text(errors="replace") if path is not None and path.exists() else ""

    def pids(self) -> dict[str, int]:
        """"namespace/name" -> the pid of each pod's container process that is running now."""
        return self._procs.pids()

    def close(self) -> None:
        """Kill every process it started (SIGTERM to each process group, SIGKILL after 5 s),
        then stop the API server and its thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._procs.kill_all()  # first, while the API they may talk to on the way out is still up
        self._stopping = True
        if self._loop is not None and self._server is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already gone
                self._loop.call_soon_threadsafe(self._server.changed.set)
        if self._thread is not None:
            self._thread.join(30)

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as exc:
            self._failure = exc
            log.exception("fakekube: the server thread failed")
        finally:
            ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        server = self._server = _ApiServer()
        kubelet = server.kubelet = _Kubelet(server, self)
        async with server, kmock.Server(server) as http:
            self.url = f"http://127.0.0.1:{http.port}"
            self.kubeconfig.write_text(json.dumps({
                "apiVersion": "v1", "kind": "Config", "current-context": "fake",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": "fake", "user": {}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
            }, indent=2))
            self._loop = asyncio.get_running_loop()
            ready.set()
            while not self._stopping:  # the reconcile loop
                try:
                    server.collect_garbage()  # e.g. of what was created with an owner that never existed
                    _deployments(server)
                    _schedule(server, self.allocatable)
                    kubelet.sync()
                except Exception:
                    log.exception("fakekube: a reconcile round failed")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.changed.wait(), TICK)
                server.changed.clear()
            server.close_watches()
