"""The head's HTTP API: Ray's job paths under ``/api/jobs/``, served by hypercorn on the head's
trio loop. Every request needs the cluster token (``Authorization: Bearer TOKEN``); a bad one
gets 401, a malformed request 400, an unknown job 404, each with ``{"error": "..."}``."""

from __future__ import annotations

import hmac
import importlib
import ipaddress
import json
import math
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
import trio

from cluster.errors import ConfigError
from cluster.packaging import valid_package_name
from cluster.wire.streams import parse_address
from cluster_client.jobs import JobError, JobManager, public

log = structlog.get_logger("cluster.http")

DEFAULT_PORT = 8265  # Ray's dashboard port: what users of its job CLI expect
API_VERSION = 1
_SUBMIT_FIELDS = {"entrypoint", "submission_id", "runtime_env", "metadata", "entrypoint_num_cpus",
                  "entrypoint_num_gpus", "entrypoint_resources", "job_id"}
_RUNTIME_ENV_FIELDS = {"env_vars", "working_dir", "excludes"}
MAX_CHUNK = 16 << 20  # one PUT of a package upload

Send = Callable[[dict], Awaitable[None]]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class JobApi:
    """The ASGI application."""

    def __init__(self, jobs: JobManager, token: str) -> None:
        self.jobs = jobs
        self.token = token

    async def __call__(self, scope: dict, receive: Callable, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        started = []

        async def tracked(event: dict) -> None:
            started.append(True)
            await send(event)

        try:
            self._authorize(scope)
            await self._route(scope, receive, tracked)
        except HttpError as exc:
            await _json(send, exc.status, {"error": str(exc)})
        except JobError as exc:
            await _json(send, exc.status, {"error": str(exc)})
        except Exception as exc:  # (e.g. the metadata store went away): say so, keep serving
            log.error("http_request_failed", method=scope.get("method"), path=scope.get("path"),
                      error=repr(exc), exc_info=exc)
            if not started:
                await _json(send, 500, {"error": f"the head could not handle {scope.get('method')} "
                                                 f"{scope.get('path')}: {type(exc).__name__}: {exc}"})

    def _authorize(self, scope: dict) -> None:
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HttpError(401, "this API needs the cluster token: send 'Authorization: Bearer TOKEN' "
                                 "(the token is in the head's session dir, file `token`)")
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise HttpError(401, "the token does not match this cluster's token")

    async def _route(self, scope: dict, receive: Callable, send: Send) -> None:
        method = scope["method"]
        parts = [p for p in scope["path"].split("/") if p]
        if parts[:1] != ["api"]:
            raise HttpError(404, f"no such path {scope['path']}; the job API is under /api/jobs/")
        rest = parts[1:]
        jobs = self.jobs
        if rest == ["version"] and method == "GET":
            from importlib.metadata import version

            return await _json(send, 200, {"version": version("cluster-core"), "api_version": API_VERSION})
        if rest == ["jobs"]:
            if method == "GET":
                return await _json(send, 200, [public(r) for r in jobs.list()])
            if method == "POST":
                spec = validate_submission(await _read_json(receive))
                job_id = jobs.submit(spec)
                return await _json(send, 200, {"submission_id": job_id, "job_id": job_id})
        elif len(rest) == 2 and rest[0] == "jobs":
            if method == "GET":
                return await _json(send, 200, public(jobs.get(rest[1])))
            if method == "DELETE":
                return await _json(send, 200, {"deleted": jobs.delete(rest[1])})
        elif len(rest) == 3 and rest[0] == "jobs":
            job_id, action = rest[1], rest[2]
            if action == "stop" and method == "POST":
                return await _json(send, 200, {"stopped": jobs.stop(job_id)})
            if action == "logs" and method == "GET":
                return await _json(send, 200, {"logs": jobs.logs(job_id).decode(errors="replace")})
        elif len(rest) == 2 and rest[0] == "packages":
            name = rest[1]
            if method == "GET":
                if not jobs.has_package(name):
                    raise HttpError(404, f"the head has no package {name}")
                return await _json(send, 200, {"exists": True})
            if method == "PUT":
                query = _query(scope)
                try:
                    offset, total = int(query["offset"]), int(query["total"])
                except (KeyError, ValueError):
                    raise HttpError(400, "a package upload needs ?offset=N&total=N (integers)") from None
                data = await _read_body(receive, MAX_CHUNK)
                have = jobs.receive_package_chunk(name, offset, total, data)
                return await _json(send, 200, {"received": have, "complete": have == total})
        elif len(rest) == 4 and rest[0] == "jobs" and rest[2:] == ["logs", "follow"] and method == "GET":
            jobs.get(rest[1])  # 404 before the stream starts
            return await self._follow(rest[1], send)
        raise HttpError(404 if method in ("GET", "POST", "DELETE") else 405,
                        f"no route for {method} {scope['path']}")

    async def _follow(self, job_id: str, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"cache-control", b"no-cache")]})
        async for chunk in self.jobs.follow(job_id):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def validate_submission(body: Any) -> dict:
    """The submission as the job manager takes it, or HttpError(400) naming what is wrong."""
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object with at least 'entrypoint'")
    unknown = sorted(set(body) - _SUBMIT_FIELDS)
    if unknown:
        raise HttpError(400, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_SUBMIT_FIELDS))}")
    entrypoint = body.get("entrypoint")
    if not isinstance(entrypoint, str) or not entrypoint.strip():
        raise HttpError(400, "'entrypoint' must be a non-empty string: the shell command to run")
    submission_id = body.get("submission_id") or body.get("job_id")
    if submission_id is not None and not isinstance(submission_id, str):
        raise HttpError(400, "'submission_id' must be a string")
    runtime_env = body.get("runtime_env") or {}
    if not isinstance(runtime_env, dict):
        raise HttpError(400, "'runtime_env' must be an object, e.g. {\"env_vars\": {\"KEY\": \"value\"}}")
    unknown = sorted(set(runtime_env) - _RUNTIME_ENV_FIELDS)
    if unknown:
        raise HttpError(400, f"runtime_env field(s) {', '.join(unknown)} are not supported; "
                             f"supported: {', '.join(sorted(_RUNTIME_ENV_FIELDS))}")
    env_vars = runtime_env.get("env_vars") or {}
    if not isinstance(env_vars, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()):
        raise HttpError(400, "runtime_env.env_vars must map strings to strings")
    working_dir = runtime_env.get("working_dir")
    if working_dir is not None and not (isinstance(working_dir, str) and valid_package_name(working_dir)):
        raise HttpError(400, "runtime_env.working_dir must name an uploaded package (pkg_<hash>.zip); "
                             "the SDK and `cluster job submit --working-dir` upload a local directory for you")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise HttpError(400, "'metadata' must map strings to strings")
    for name in ("entrypoint_num_cpus", "entrypoint_num_gpus"):
        if body.get(name) is not None and not _amount(body[name]):
            raise HttpError(400, f"'{name}' must be a non-negative number")
    resources = body.get("entrypoint_resources") or {}
    if not isinstance(resources, dict) or not all(isinstance(k, str) and _amount(v) for k, v in resources.items()):
        raise HttpError(400, "'entrypoint_resources' must map resource names to non-negative numbers")
    return {**body, "entrypoint": entrypoint, "submission_id": submission_id, "runtime_env": runtime_env,
            "metadata": metadata, "entrypoint_resources": resources}


def _amount(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


async def _read_body(receive: Callable, limit: int) -> bytes:
    body = bytearray()
    while True:
        event = await receive()
        body += event.get("body", b"")
        if len(body) > limit:
            raise HttpError(413, f"the request body is over {limit} bytes")
        if not event.get("more_body"):
            return bytes(body)


def _query(scope: dict) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))


async def _read_json(receive: Callable) -> Any:
    body = await _read_body(receive, 1 << 20)
    try:
        return json.loads(body or b"null")
    except ValueError as exc:
        raise HttpError(400, f"the request body is not valid JSON: {exc}") from None


async def _json(send: Send, status: int, value: Any) -> None:
    body = json.dumps(value).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def bind_api_socket(host: str, port: int | None) -> socket.socket:
    """The API's listening socket: ``port`` None means 8265, or any free port if that is taken."""
    wanted = DEFAULT_PORT if port is None else port
    try:
        return socket.create_server((host, wanted), backlog=128)
    except OSError as exc:
        if port is None:
            log.warning("http_port_taken", port=DEFAULT_PORT, error=exc.strerror)
            return socket.create_server((host, 0), backlog=128)
        raise ConfigError(f"the HTTP API could not listen on {host}:{wanted}: {exc.strerror}. Choose "
                          "another port with --dashboard-port (0 picks a free one).") from None


async def serve_api(head: Any, jobs: JobManager, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    sock = bind_api_socket(head.dashboard_host, head.dashboard_port)
    host, port = sock.getsockname()[:2]
    if ipaddress.ip_address(host).is_unspecified:  # every interface: say the one others reach the head at
        host = parse_address(head.address)[0]
    head.dashboard_url = f"http://{host}:{port}"
    # Ready as soon as the port is bound (requests wait in its backlog). The HTTP server costs
    # ~0.4 s of imports: paid when the first request arrives, not by every cluster.init().
    task_status.started()
    await trio.lowlevel.wait_readable(sock)
    await trio.to_thread.run_sync(importlib.import_module, "hypercorn.trio")
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"fd://{sock.detach()}"]  # hypercorn owns the socket from here
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    log.info("http_api_listening", url=head.dashboard_url)
    await serve(JobApi(jobs, head.token), config)
