"""The head's job manager: job records, placement on a node, logs, stop.

A job is a shell command (its *entrypoint*) run as a subprocess on a node with the resources it
asked for. The head keeps the record and the whole log; the node that runs the entrypoint
(cluster_client.runner) streams its output here and says when it exits.

Both outlive the head process, in its metadata store (which a head started again on it takes
back, docs/design/0013): the record in table ``jobs``, the log in a table of its own per job
(``job_logs/<id>``), one row per chunk as it arrived, keyed by its offset. The store is the one
place that lasts whatever its kind (a SQLite file, another engineer's Redis): a directory beside
it would exist for SQLite only, and the session directory is new with each head. A file per
job under ``<session dir>/jobs/`` is the head's working copy, written from the store as the head
starts, and read by the API. A job whose node is still alive when the head starts again goes
on, and its runner reports to the new head (a chunk the old head wrote just before it died may
come twice); one whose node is gone (or does not come back within the grace) has FAILED.

States: PENDING -> RUNNING -> SUCCEEDED | FAILED | STOPPED. A terminal state never changes.
While PENDING, ``message`` says what the job waits for.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from pathlib import Path
from typing import Any

import structlog
import trio

from cluster.errors import ClusterConnectionError, RemoteCallError
from cluster.packaging import valid_package_name
from cluster.resources import fits, format_shape
from cluster.wire import messages as m
from cluster.wire.connection import Dialer
from cluster_client.messages import (
    FetchPackageChunk,
    JobExited,
    JobLog,
    JobRunning,
    PackageChunk,
    PackageMissing,
    StartJob,
    StartJobReply,
    StopJob,
)

log = structlog.get_logger("cluster.jobs")

TABLE = "jobs"
LOG_TABLE = "job_logs/{}"  # a job's log: a row per chunk, keyed by its offset (16 digits)
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})
RUNNER_SERVICE = "job-runner"  # on every node (cluster_client.runner)
MANAGER_SERVICE = "jobs"  # on the head: where runners report
PLACE_EVERY_S = 0.5
LAST_LINES = 20
PACKAGE_CHUNK = 4 << 20
_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


class JobError(Exception):
    """A request the job manager refuses; ``status`` is the HTTP status that fits it."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class JobManager:
    """Runs in the head daemon (a head service, started by the client plugin)."""

    def __init__(self, head: Any) -> None:
        self.head = head
        self.store = head.metadata
        self.log_dir = Path(head.session_dir) / "jobs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.package_dir = Path(head.session_dir) / "packages"  # uploaded working dirs
        self.package_dir.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[str, dict] = {}
        self._changed = trio.Event()  # set (and replaced) whenever a record or a log grows
        self._wake_placer = trio.Event()
        self._dialer = Dialer(head.token, "head", self._on_node_message)
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------------ service

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for key, record in self.store.items(TABLE):
            self._restore_log(key)
            node_id = record["driver_node_id"]
            node = self.head.nodes.get(node_id) if node_id else None
            if record["status"] not in TERMINAL and node_id and (node is None or node.state != "alive"):
                # It ran (or was starting) under a head that is gone, on a node that is gone too.
                record.update(status="FAILED", end_time=_now_ms(),
                              message=f"the head restarted while the job was {record['status']}, and the "
                                      f"node that ran it ({node_id}) is gone; its outcome is unknown")
                self.store.put(TABLE, key, record)
            self.jobs[key] = record  # (PENDING and unplaced: placed by this head; on a live node: goes on)
        self.head.services.add(MANAGER_SERVICE, self._on_report)
        self.head.on_node_dead.append(self._node_died)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._dialer.nursery = nursery
            task_status.started()
            while True:
                await self._place_pending()
                with trio.move_on_after(PLACE_EVERY_S):
                    await self._wake_placer.wait()
                self._wake_placer = trio.Event()

    # ------------------------------------------------------------------ requests (HTTP API)

    def submit(self, spec: dict[str, Any]) -> str:
        job_id = spec.get("submission_id") or f"job_{secrets.token_hex(6)}"
        if not _ID.match(job_id):
            raise JobError(f"submission_id {job_id!r} must be 1-128 letters, digits, '_', '.' or '-'")
        if job_id in self.jobs:
            raise JobError(f"a job with submission_id {job_id!r} already exists; choose another id "
                           "or delete that job first", status=409)
        package = (spec.get("runtime_env") or {}).get("working_dir")
        if package and not self.has_package(package):
            raise JobError(f"working_dir package {package!r} is not on the head; upload it first "
                           "(JobSubmissionClient.submit_job does, given a local directory)")
        shape = dict(spec.get("entrypoint_resources") or {})
        if spec.get("entrypoint_num_cpus"):
            shape["CPU"] = float(spec["entrypoint_num_cpus"])
        if spec.get("entrypoint_num_gpus"):
            shape["GPU"] = float(spec["entrypoint_num_gpus"])
        record = {
            "type": "SUBMISSION",
            "submission_id": job_id,
            "job_id": job_id,
            "entrypoint": spec["entrypoint"],
            "status": "PENDING",
            "message": "waiting to be placed",
            "shape": shape,
            "runtime_env": spec.get("runtime_env") or {},
            "metadata": spec.get("metadata") or {},
            "start_time": _now_ms(),
            "end_time": None,
            "driver_node_id": None,
            "driver_pid": None,
            "driver_exit_code": None,
            "stop_requested": False,
        }
        self._save(record)
        (self.log_dir / f"{job_id}.log").touch()
        log.info("job_submitted", submission_id=job_id, entrypoint=record["entrypoint"], shape=shape)
        self._wake_placer.set()
        return job_id

    def get(self, job_id: str) -> dict:
        record = self.jobs.get(job_id)
        if record is None:
            raise JobError(f"no job with submission_id {job_id!r}", status=404)
        return record

    def list(self) -> list[dict]:
        return list(self.jobs.values())

    def stop(self, job_id: str) -> bool:
        record = self.get(job_id)
        if record["status"] in TERMINAL:
            return False
        if record["driver_node_id"] is None:
            self._finish(record, "STOPPED", "stopped before it started")
            return True
        record["stop_requested"] = True
        self._save(record)
        self._nursery.start_soon(self._ask_runner_to_stop, record)
        return True

    def delete(self, job_id: str) -> bool:
        record = self.get(job_id)
        if record["status"] not in TERMINAL:
            raise JobError(f"job {job_id!r} is {record['status']}; stop it first (only finished jobs "
                           "can be deleted)")
        del self.jobs[job_id]
        self.store.delete(TABLE, job_id)
        table = LOG_TABLE.format(job_id)
        for offset, _ in self.store.items(table):
            self.store.delete(table, offset)
        (self.log_dir / f"{job_id}.log").unlink(missing_ok=True)
        self._notify()
        return True

    # ------------------------------------------------------------------ packages (working dirs)

    def has_package(self, name: str) -> bool:
        return valid_package_name(name) and (self.package_dir / name).is_file()

    def receive_package_chunk(self, name: str, offset: int, total: int, data: bytes) -> int:
        """Write one chunk of an upload; returns how many bytes have arrived. The finished file
        must hash to its name, or it is thrown away."""
        if not valid_package_name(name):
            raise JobError(f"{name!r} is not a package name (pkg_<32 hex digits>.zip)")
        if self.has_package(name):
            return total
        part = self.package_dir / (name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if offset != have:
            raise JobError(f"upload of {name} out of step: the head has {have} bytes, the chunk starts at "
                           f"{offset}; resume from {have}", status=409)
        with open(part, "ab") as f:
            f.write(data)
        have += len(data)
        if have > total:
            part.unlink()
            raise JobError(f"upload of {name} is longer than the {total} bytes announced")
        if have == total:
            digest = hashlib.sha256()
            with open(part, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            if f"pkg_{digest.hexdigest()[:32]}.zip" != name:
                part.unlink()
                raise JobError(f"the uploaded bytes do not hash to {name}; upload it again")
            part.rename(self.package_dir / name)
            log.info("package_uploaded", name=name, size=total)
        return have

    def package_chunk(self, name: str, offset: int) -> PackageChunk | PackageMissing:
        if not self.has_package(name):
            return PackageMissing(f"the head has no package {name}")
        path = self.package_dir / name
        with open(path, "rb") as f:
            f.seek(offset)
            return PackageChunk(f.read(PACKAGE_CHUNK), path.stat().st_size)

    def logs(self, job_id: str, offset: int = 0) -> bytes:
        self.get(job_id)
        try:
            with open(self.log_dir / f"{job_id}.log", "rb") as f:
                f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return b""

    async def follow(self, job_id: str) -> Any:
        """The job's log as it grows (from the start), until the job has ended."""
        offset = 0
        while True:
            changed = self._changed
            chunk = self.logs(job_id, offset)
            if chunk:
                offset += len(chunk)
                yield chunk
                continue
            if self.get(job_id)["status"] in TERMINAL:
                return
            await changed.wait()

    # ------------------------------------------------------------------ placement

    async def _place_pending(self) -> None:
        for record in list(self.jobs.values()):
            if record["status"] == "PENDING" and record["driver_node_id"] is None and not record.get("_placing"):
                record["_placing"] = True
                try:
                    await self._place(record)
                finally:
                    record.pop("_placing", None)

    async def _place(self, record: dict) -> None:
        shape = record["shape"]
        alive = [n for n in self.head.nodes.values() if n.state == "alive"]
        able = [n for n in alive if fits(shape, n.resources)]
        if not able:
            largest = max((n.resources for n in alive), key=lambda r: r.get("CPU", 0.0), default={})
            self._set_message(record, f"waiting for resources: no node of the cluster can fit "
                                      f"{format_shape(shape)} (largest node: {format_shape(largest)}); "
                                      "it starts when a node that fits joins")
            return
        free_now = [n for n in able if fits(shape, n.available)] or able
        for node in free_now:
            # Placed from here on (a stop now goes to that node), unless the node says no.
            record.update(driver_node_id=node.node_id, node_address=node.address)
            try:
                conn = await self._dialer.connect(node.address, "a node daemon")
                reply = await conn.request(m.ServiceRequest(RUNNER_SERVICE, StartJob(
                    record["submission_id"],
                    record["entrypoint"],
                    shape,
                    record["runtime_env"].get("env_vars") or {},
                    record["runtime_env"].get("working_dir"),
                )))
            except (ClusterConnectionError, RemoteCallError) as exc:
                log.warning("job_start_failed", submission_id=record["submission_id"], node=node.node_id,
                            error=str(exc))
                reply = StartJobReply(False, str(exc))
            if reply.started:
                if record["status"] == "PENDING":  # (its runner may have reported already)
                    what = "fetching its working dir" if record["runtime_env"].get("working_dir") else "starting"
                    self._set_message(record, f"{what} on node {node.node_id}")
                log.info("job_placed", submission_id=record["submission_id"], node=node.node_id)
                return
            record.update(driver_node_id=None, node_address=None)
            if record["stop_requested"]:  # stopped while we asked
                self._finish(record, "STOPPED", "stopped before it started")
            if record["status"] != "PENDING":
                return
        self._set_message(record, f"waiting for resources: {format_shape(shape)} is not free on any "
                                  "node yet")

    async def _ask_runner_to_stop(self, record: dict, address: str | None = None) -> None:
        address = address or record.get("node_address")
        if address is None:
            return
        try:
            conn = await self._dialer.connect(address, "a node daemon")
            await conn.request(m.ServiceRequest(RUNNER_SERVICE, StopJob(record["submission_id"])))
        except (ClusterConnectionError, RemoteCallError) as exc:
            log.warning("job_stop_failed", submission_id=record["submission_id"], error=str(exc))

    # ------------------------------------------------------------------ reports from runners

    def _on_report(self, conn: Any, payload: Any, request_id: int) -> None:
        kind = type(payload)
        if kind is FetchPackageChunk:  # a runner fetches a working dir, a chunk at a time
            conn.reply(request_id, self.package_chunk(payload.name, payload.offset))
            return
        if kind not in (JobRunning, JobLog, JobExited):
            conn.reply_error(request_id, "unexpected", f"the job manager does not handle {kind.__name__}")
            return
        record = self.jobs.get(payload.submission_id)
        if record is None:  # deleted meanwhile
            if request_id:
                conn.reply(request_id, False)
            return
        if kind is JobRunning:
            if record["status"] == "PENDING":
                record.update(status="RUNNING", message=f"running on node {record['driver_node_id']}",
                              driver_pid=payload.pid)
                self._save(record)
        elif kind is JobLog:
            self._append_log(record["submission_id"], payload.data)
        else:
            code = payload.code
            record["driver_exit_code"] = code
            if payload.error:  # it never started: its working dir, or the command
                self._finish(record, "FAILED", payload.error)
            elif record["stop_requested"]:
                self._finish(record, "STOPPED", "stopped by request")
            elif code == 0:
                self._finish(record, "SUCCEEDED", "the entrypoint exited with code 0")
            else:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                self._finish(record, "FAILED", f"the entrypoint {how}; the last lines of its log:\n"
                                               + self._last_lines(record["submission_id"]))
        if request_id:
            conn.reply(request_id, True)

    def _on_node_message(self, conn: Any, msg: Any, request_id: int) -> None:
        conn.reply_error(request_id, "unexpected", f"the job manager does not handle {type(msg).__name__}")

    def _node_died(self, node: Any) -> None:
        for record in self.jobs.values():
            if record["status"] not in TERMINAL and record["driver_node_id"] == node.node_id:
                self._finish(record, "FAILED", f"the node that ran it ({node.node_id} at {node.address}) died")

    # ------------------------------------------------------------------ logs

    def _append_log(self, job_id: str, data: bytes) -> None:
        path = self.log_dir / f"{job_id}.log"
        offset = path.stat().st_size if path.exists() else 0
        self.store.put(LOG_TABLE.format(job_id), f"{offset:016d}", base64.b64encode(data).decode("ascii"))
        with open(path, "ab") as f:
            f.write(data)
        self._notify()

    def _restore_log(self, job_id: str) -> None:
        """The head's working copy of a job's log, from the chunks in the store."""
        chunks = sorted(self.store.items(LOG_TABLE.format(job_id)))
        with open(self.log_dir / f"{job_id}.log", "wb") as f:
            for _, chunk in chunks:
                f.write(base64.b64decode(chunk))

    # ------------------------------------------------------------------ records

    def _last_lines(self, job_id: str) -> str:
        tail = self.logs(job_id)[-16384:].decode(errors="replace").splitlines()[-LAST_LINES:]
        return "\n".join(tail) if tail else "(it printed nothing)"

    def _set_message(self, record: dict, message: str) -> None:
        if record["message"] != message:
            record["message"] = message
            self._save(record)

    def _finish(self, record: dict, status: str, message: str) -> None:
        if record["status"] in TERMINAL:
            return
        record.update(status=status, message=message, end_time=_now_ms())
        self._save(record)
        log.info("job_finished", submission_id=record["submission_id"], status=status)

    def _save(self, record: dict) -> None:
        self.jobs[record["submission_id"]] = record
        self.store.put(TABLE, record["submission_id"], {k: v for k, v in record.items() if not k.startswith("_")})
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def public(record: dict) -> dict:
    """A record as the API shows it."""
    return {k: v for k, v in record.items() if not k.startswith("_") and k not in ("stop_requested", "node_address")}


def _now_ms() -> int:
    return int(time.time() * 1000)
