"""The node side of jobs: run an entrypoint with the resources it asked for, stream its output
to the head, stop it on request (SIGTERM to its process group, SIGKILL after a grace period).

A job goes on while the head is away: its reports wait for the head to come back (the output
waits in the pipe meanwhile). A node that rejoins as a new node (the head had declared it dead)
kills its jobs: the head has failed them with the old node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import structlog
import trio

from cluster.errors import ClusterConnectionError
from cluster.packaging import extract_package, valid_package_name
from cluster.session import die_with_parent
from cluster.wire import messages as m
from cluster_client.jobs import MANAGER_SERVICE, RUNNER_SERVICE
from cluster_client.messages import (
    FetchPackageChunk,
    JobExited,
    JobLog,
    JobRunning,
    PackageMissing,
    PrepareWorkingDir,
    StartJob,
    StartJobReply,
    StopJob,
)

log = structlog.get_logger("cluster.jobs")

STOP_GRACE_S = float(os.environ.get("CLUSTER_JOB_STOP_GRACE_S", "5"))
LOG_FLUSH_S = 0.1


class JobRunner:
    def __init__(self, node: Any) -> None:
        self.node = node
        self.running: dict[str, subprocess.Popen | None] = {}  # None: its working dir is being set up
        self._stopping: set[str] = set()
        self._package_locks: dict[str, trio.Lock] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.node.services.add(RUNNER_SERVICE, self._on_request)
        self.node.on_new_identity.append(self._node_replaced)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            for proc in self.running.values():  # the daemon stops: so do its jobs
                if proc is not None:
                    _signal_group(proc, signal.SIGKILL)

    def _node_replaced(self, old: str, new: str) -> None:
        for job_id, proc in self.running.items():
            if proc is not None:
                log.warning("job_killed", submission_id=job_id, reason=f"node {old} was declared dead")
                _signal_group(proc, signal.SIGKILL)

    def _on_request(self, conn: Any, payload: Any, request_id: int) -> None:
        kind = type(payload)
        if kind is StartJob:
            job_id = payload.submission_id
            if not self.node.reserve(payload.shape):
                conn.reply(request_id, StartJobReply(False, "busy"))
                return
            self.running[job_id] = None  # being set up
            self._nursery.start_soon(self._run_job, payload)
            conn.reply(request_id, StartJobReply(True))
        elif kind is StopJob:
            job_id = payload.submission_id
            known = job_id in self.running
            if known:
                self._stopping.add(job_id)
                proc = self.running[job_id]
                if proc is not None:
                    self._nursery.start_soon(self._stop, proc)
            conn.reply(request_id, known)
        elif kind is PrepareWorkingDir:  # a worker runs a task of a job with a working dir
            self._nursery.start_soon(self._answer_working_dir, conn, payload.name, request_id)
        else:
            conn.reply_error(request_id, "unexpected", f"the job runner does not handle {kind.__name__}")

    async def _answer_working_dir(self, conn: Any, name: str, request_id: int) -> None:
        try:
            conn.reply(request_id, await self._working_dir(name))
        except (OSError, ValueError, ClusterConnectionError) as exc:
            conn.reply_error(request_id, "working_dir", f"could not set up the working dir {name} on node "
                                                        f"{self.node.node_id}: {exc}")

    async def _run_job(self, spec: StartJob) -> None:
        """Set up the working dir, start the entrypoint, ship its output; give back resources."""
        job_id = spec.submission_id
        try:
            try:
                cwd = await self._working_dir(spec.working_dir) if spec.working_dir else None
                if job_id in self._stopping:
                    await self._report(JobExited(job_id, None))
                    return
                proc = self._spawn(spec, cwd)
            except (OSError, ValueError, ClusterConnectionError) as exc:
                what = "set up its working dir" if spec.working_dir else "start the entrypoint"
                await self._report(JobExited(job_id, None, f"could not {what} on node {self.node.node_id}: {exc}"))
                return
            self.running[job_id] = proc
            if job_id in self._stopping:
                self._nursery.start_soon(self._stop, proc)
            log.info("job_process_started", submission_id=job_id, pid=proc.pid)
            await self._report(JobRunning(job_id, proc.pid))
            await self._follow(job_id, proc)
        finally:
            self.running.pop(job_id, None)
            self._stopping.discard(job_id)
            self.node.unreserve(spec.shape)

    def _spawn(self, spec: StartJob, cwd: str | None) -> subprocess.Popen:
        env = {**os.environ, **{str(k): str(v) for k, v in spec.env_vars.items()},
               "CLUSTER_ADDRESS": self.node.head_address, "CLUSTER_TOKEN": self.node.token,
               "CLUSTER_JOB_ID": spec.submission_id, "PYTHONUNBUFFERED": "1"}
        env.pop("CLUSTER_NODE_ID", None)
        # `python` in an entrypoint means the Python the cluster runs on (where cluster is installed).
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
        if cwd is not None:
            env["CLUSTER_WORKING_DIR"] = cwd
            env["CLUSTER_JOB_PACKAGE"] = spec.working_dir
            env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, env.get("PYTHONPATH")) if p)
        return subprocess.Popen(
            ["/bin/sh", "-c", spec.entrypoint], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True,
            preexec_fn=die_with_parent,  # a job does not outlive its node daemon, even a killed one
        )

    async def _working_dir(self, name: str) -> str:
        """The package ``name`` unpacked on this node (fetched from the head once per node)."""
        if not valid_package_name(name):
            raise ValueError(f"{name!r} is not a package name")
        root = os.path.join(self.node.session_dir, "working_dirs")  # (the head keeps its uploads in packages/)
        destination = os.path.join(root, name[: -len(".zip")])
        async with self._package_locks.setdefault(name, trio.Lock()):
            if not os.path.isdir(destination):
                os.makedirs(root, exist_ok=True)
                zip_path = os.path.join(root, name)
                with open(zip_path + ".part", "wb") as f:
                    offset, total = 0, None
                    while total is None or offset < total:
                        head = await self.node.head_connection()
                        reply = await head.request(m.ServiceRequest(MANAGER_SERVICE, FetchPackageChunk(name, offset)))
                        if type(reply) is PackageMissing:
                            raise ValueError(reply.error)
                        total = reply.total
                        if not reply.data and offset < total:
                            raise ValueError(f"the head's copy of {name} ended early")
                        f.write(reply.data)
                        offset += len(reply.data)
                os.rename(zip_path + ".part", zip_path)
                await trio.to_thread.run_sync(extract_package, zip_path, destination)
                os.unlink(zip_path)
        return destination

    async def _follow(self, job_id: str, proc: subprocess.Popen) -> None:
        """Ship the output to the head as it comes, then the exit code."""
        stream = trio.lowlevel.FdStream(os.dup(proc.stdout.fileno()))
        proc.stdout.close()
        async with stream:
            while True:
                data = await stream.receive_some(1 << 16)
                if not data:
                    break
                await self._report(JobLog(job_id, bytes(data)))
        code = await trio.to_thread.run_sync(proc.wait)
        await self._report(JobExited(job_id, code))
        log.info("job_process_exited", submission_id=job_id, code=code)

    async def _report(self, payload: JobRunning | JobLog | JobExited) -> None:
        """Tell the head; while it is away, wait for it (however long: what the job printed
        and how it ended are its record), and tell it again if it went before it answered."""
        while True:
            try:
                conn = await self.node.head_connection()
                await conn.request(m.ServiceRequest(MANAGER_SERVICE, payload))
                return
            except ClusterConnectionError:  # gone before it answered, or away for long: wait on
                continue

    async def _stop(self, proc: subprocess.Popen) -> None:
        _signal_group(proc, signal.SIGTERM)
        with trio.move_on_after(STOP_GRACE_S):
            while proc.poll() is None:
                await trio.sleep(0.05)
        if proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass
