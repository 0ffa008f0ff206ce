"""``JobSubmissionClient``: submit jobs to a cluster's HTTP API and follow them (Ray's shape)."""

from __future__ import annotations

import enum
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import attrs
import httpx

from cluster.packaging import DEFAULT_MAX_BYTES, build_package, valid_package_name

UPLOAD_CHUNK = 8 << 20


class JobSubmissionError(Exception):
    """The API refused a request, or could not be reached; the message says why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class JobStatus(enum.StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)


@attrs.frozen
class JobDetails:
    submission_id: str
    entrypoint: str
    status: JobStatus
    message: str
    start_time: int | None = None  # ms since the epoch
    end_time: int | None = None
    metadata: dict = attrs.Factory(dict)
    runtime_env: dict = attrs.Factory(dict)
    shape: dict = attrs.Factory(dict)
    driver_node_id: str | None = None
    driver_pid: int | None = None
    driver_exit_code: int | None = None
    type: str = "SUBMISSION"
    job_id: str | None = None

    @classmethod
    def from_json(cls, data: dict) -> JobDetails:
        known = {f.name for f in attrs.fields(cls)}
        fields = {k: v for k, v in data.items() if k in known}
        fields["status"] = JobStatus(fields["status"])
        return cls(**fields)


def _local_api() -> tuple[str | None, str | None]:
    """The HTTP API address and token of the cluster `cluster start --head` started here."""
    from cluster import session  # core (and trio) loads only when no address or token is given

    current = session.read_current() or {}
    token = session.read_token(current["token_file"]) if current.get("token_file") else None
    return current.get("dashboard_url"), token


class JobSubmissionClient:
    """``JobSubmissionClient(address=None, token=None)``.

    ``address``: the head's HTTP API, ``http://HOST:PORT`` (default: ``$CLUSTER_API_ADDRESS``,
    else the cluster started on this machine). ``token``: the cluster token (default:
    ``$CLUSTER_TOKEN``, else the local head's).
    """

    def __init__(self, address: str | None = None, token: str | None = None, *, timeout: float = 30.0,
                 max_working_dir_bytes: int = DEFAULT_MAX_BYTES, progress: bool = True) -> None:
        local_address, local_token = (None, None)
        if address is None or token is None:
            local_address, local_token = _local_api()
        address = address or os.environ.get("CLUSTER_API_ADDRESS") or local_address
        if not address:
            raise JobSubmissionError(
                "no cluster HTTP API to talk to: pass address='http://HOST:8265', set "
                "CLUSTER_API_ADDRESS, or start a cluster here with `cluster start --head`"
            )
        if "://" not in address:
            address = f"http://{address}"
        self.address = address.rstrip("/")
        self.token = token or os.environ.get("CLUSTER_TOKEN") or local_token or ""
        self._headers = {"Authorization": f"Bearer {self.token}"}
        self._timeout = timeout
        self.max_working_dir_bytes = max_working_dir_bytes
        self.progress = progress  # show upload progress on stderr
        self._http = httpx.Client(base_url=self.address, headers=self._headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JobSubmissionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the API --

    def get_version(self) -> dict:
        return self._call("GET", "/api/version")

    def submit_job(
        self,
        *,
        entrypoint: str,
        submission_id: str | None = None,
        runtime_env: dict | None = None,
        metadata: dict | None = None,
        entrypoint_num_cpus: float | None = None,
        entrypoint_num_gpus: float | None = None,
        entrypoint_resources: dict | None = None,
    ) -> str:
        """Submit a job; returns its submission id at once (the job starts PENDING).

        ``runtime_env``: ``{"env_vars": {...}, "working_dir": "./dir", "excludes": [...]}``. A
        local working dir is zipped (``excludes`` and the dir's .gitignore leave files out) and
        uploaded unless the head has it already; the job runs in it, with it on ``sys.path``.
        """
        runtime_env = dict(runtime_env or {})
        if runtime_env.get("working_dir") and not valid_package_name(str(runtime_env["working_dir"])):
            runtime_env["working_dir"] = self.upload_working_dir(runtime_env["working_dir"],
                                                                 runtime_env.get("excludes"))
        body = {"entrypoint": entrypoint, "submission_id": submission_id, "runtime_env": runtime_env or {},
                "metadata": metadata or {}, "entrypoint_num_cpus": entrypoint_num_cpus,
                "entrypoint_num_gpus": entrypoint_num_gpus, "entrypoint_resources": entrypoint_resources or {}}
        return self._call("POST", "/api/jobs/", json={k: v for k, v in body.items() if v is not None})["submission_id"]

    def upload_working_dir(self, directory: str, excludes: list[str] | None = None) -> str:
        """Zip and upload ``directory`` (once: the head keeps it by content); returns its name."""
        try:
            name, zip_path, size = build_package(directory, excludes, self.max_working_dir_bytes)
        except ValueError as exc:
            raise JobSubmissionError(str(exc)) from None
        try:
            known = self._request("GET", f"/api/packages/{name}")
            if known.status_code == 200:
                self._say(f"Working dir {directory}: the head has it already ({name}).\n")
                return name
            with open(zip_path, "rb") as f:
                offset = 0
                while True:
                    f.seek(offset)
                    chunk = f.read(UPLOAD_CHUNK)
                    response = self._request("PUT", f"/api/packages/{name}", params={"offset": offset, "total": size},
                                             content=chunk, timeout=max(self._timeout, 120))
                    if response.status_code == 409:  # a half-finished upload: go on from where it is
                        resume = re.search(r"resume from (\d+)", response.text)
                        if resume and int(resume.group(1)) != offset:
                            offset = int(resume.group(1))
                            continue
                    self._check(response, response.content)
                    offset = response.json()["received"]
                    self._say(f"\rUploading working dir {directory}: {offset / 2**20:.1f} of "
                              f"{size / 2**20:.1f} MiB ({offset * 100 // max(size, 1)}%)")
                    if response.json()["complete"]:
                        self._say("\n")
                        return name
        finally:
            os.unlink(zip_path)

    def _say(self, text: str) -> None:
        if self.progress:
            sys.stderr.write(text)
            sys.stderr.flush()

    def get_job_info(self, job_id: str) -> JobDetails:
        return JobDetails.from_json(self._call("GET", f"/api/jobs/{job_id}"))

    def get_job_status(self, job_id: str) -> JobStatus:
        return self.get_job_info(job_id).status

    def list_jobs(self) -> list[JobDetails]:
        return [JobDetails.from_json(item) for item in self._call("GET", "/api/jobs/")]

    def stop_job(self, job_id: str) -> bool:
        """Stop a job in any state; False if it had already ended."""
        return self._call("POST", f"/api/jobs/{job_id}/stop")["stopped"]

    def delete_job(self, job_id: str) -> bool:
        """Forget a finished job and its logs (a running job must be stopped first)."""
        return self._call("DELETE", f"/api/jobs/{job_id}")["deleted"]

    def get_job_logs(self, job_id: str) -> str:
        return self._call("GET", f"/api/jobs/{job_id}/logs")["logs"]

    def follow_job_logs(self, job_id: str) -> Iterator[str]:
        """The job's whole log, then what it prints as it prints it, until it ends."""
        with self._errors(), self._http.stream("GET", f"/api/jobs/{job_id}/logs/follow", timeout=None) as response:
            self._check(response, response.read() if response.status_code >= 400 else b"")
            yield from response.iter_text()

    async def tail_job_logs(self, job_id: str) -> AsyncIterator[str]:
        """Async version of ``follow_job_logs`` (works under asyncio and trio)."""
        async with httpx.AsyncClient(base_url=self.address, headers=self._headers, timeout=None) as http:
            with self._errors():
                async with http.stream("GET", f"/api/jobs/{job_id}/logs/follow") as response:
                    self._check(response, await response.aread() if response.status_code >= 400 else b"")
                    async for text in response.aiter_text():
                        yield text

    # -- plumbing --

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        self._check(response, response.content)
        return response.json()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; while the head cannot be connected to (it is being restarted, say),
        wait for it, at most ``$CLUSTER_HEAD_WAIT_S`` seconds (60 by default), saying so once.
        Only a request that never reached the head is sent again."""
        waited_since: float | None = None
        delay = 0.1
        while True:
            try:
                with self._errors(connect_errors=False):
                    return self._http.request(method, path, **kwargs)
            except httpx.ConnectError as exc:
                now = time.monotonic()
                limit = _head_wait_s()
                if waited_since is None:
                    waited_since = now
                    print(f"cluster: the head at {self.address} is unreachable; waiting for it to come back "
                          f"(at most {limit:.0f}s)", file=sys.stderr, flush=True)
                if now - waited_since >= limit:
                    raise JobSubmissionError(
                        f"could not reach the cluster's HTTP API at {self.address} for {limit:.0f}s ({exc}); "
                        "gave up waiting ($CLUSTER_HEAD_WAIT_S). Is the head running (`cluster status`)? Start "
                        "it again with the same --port and --metadata-store, or check the address."
                    ) from None
                time.sleep(min(delay, max(0.0, limit - (now - waited_since))))
                delay = min(delay * 2, 2.0)

    def _check(self, response: httpx.Response, body: bytes) -> None:
        if response.status_code < 400:
            return
        try:
            message = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            message = body.decode(errors="replace")[:500] or response.reason_phrase
        raise JobSubmissionError(f"{message} (HTTP {response.status_code} from {self.address})",
                                 response.status_code)

    def _errors(self, connect_errors: bool = True) -> Any:
        return _TranslateErrors(self.address, connect_errors)


def _head_wait_s() -> float:
    text = os.environ.get("CLUSTER_HEAD_WAIT_S") or "60"  # (as core's cluster.wire.headlink reads it)
    try:
        return max(0.0, float(text))
    except ValueError:
        raise JobSubmissionError(f"CLUSTER_HEAD_WAIT_S must be a number of seconds, got {text!r}") from None


class _TranslateErrors:
    def __init__(self, address: str, connect_errors: bool = True) -> None:
        self.address = address
        self.connect_errors = connect_errors  # False: a ConnectError goes through, for the caller to wait

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, httpx.ConnectError) and not self.connect_errors:
            return False
        if isinstance(exc, httpx.TransportError):
            raise JobSubmissionError(
                f"could not reach the cluster's HTTP API at {self.address}: {exc or type(exc).__name__}. "
                "Is the head running (`cluster status`)? Check the address."
            ) from None
        return False
