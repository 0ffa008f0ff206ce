"""The node side of jobs: run an entrypoint with the resources it asked for, stream its output
to the head, stop it on request (SIGTERM to its process group, SIGKILL after a grace period)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Any

import structlog
import trio
from cluster import messages as m
from cluster.errors import ClusterConnectionError
from cluster.session import die_with_parent

from cluster_client.jobs import MANAGER_SERVICE, RUNNER_SERVICE

log = structlog.get_logger("cluster.jobs")

STOP_GRACE_S = float(os.environ.get("CLUSTER_JOB_STOP_GRACE_S", "5"))
LOG_FLUSH_S = 0.1


class JobRunner:
    def __init__(self, node: Any) -> None:
        self.node = node
        self.running: dict[str, trio.Process] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.node.services.add(RUNNER_SERVICE, self._on_request)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            for proc in self.running.values():  # the daemon stops: so do its jobs
                _signal_group(proc, signal.SIGKILL)

    def _on_request(self, conn: Any, payload: dict, request_id: int) -> None:
        op = payload.get("op")
        if op == "start":
            conn.reply(request_id, self._start(payload))
        elif op == "stop":
            proc = self.running.get(payload.get("submission_id", ""))
            if proc is not None:
                self._nursery.start_soon(self._stop, proc)
            conn.reply(request_id, proc is not None)
        else:
            conn.reply_error(request_id, "unexpected", f"the job runner does not know op {op!r}")

    def _start(self, spec: dict) -> dict:
        job_id = spec["submission_id"]
        shape = spec["shape"]
        if not self.node.reserve(shape):
            return {"started": False, "reason": "busy"}
        env = {**os.environ, **{str(k): str(v) for k, v in spec["env_vars"].items()},
               "CLUSTER_ADDRESS": self.node.head_address, "CLUSTER_TOKEN": self.node.token,
               "CLUSTER_JOB_ID": job_id, "PYTHONUNBUFFERED": "1"}
        env.pop("CLUSTER_NODE_ID", None)
        # `python` in an entrypoint means the Python the cluster runs on (where cluster is installed).
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", spec["entrypoint"]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env=env, start_new_session=True,
                preexec_fn=die_with_parent,  # a job does not outlive its node daemon, even a killed one
            )
        except OSError as exc:
            self.node.unreserve(shape)
            return {"started": False, "reason": f"could not start the entrypoint: {exc}"}
        self.running[job_id] = proc
        self._nursery.start_soon(self._follow, job_id, proc, shape)
        log.info("job_process_started", submission_id=job_id, pid=proc.pid)
        return {"started": True, "pid": proc.pid}

    async def _follow(self, job_id: str, proc: subprocess.Popen, shape: dict) -> None:
        """Ship the output to the head as it comes; report the exit code; give back resources."""
        stream = trio.lowlevel.FdStream(os.dup(proc.stdout.fileno()))
        proc.stdout.close()
        try:
            async with stream:
                while True:
                    data = await stream.receive_some(1 << 16)
                    if not data:
                        break
                    await self._report({"op": "log", "submission_id": job_id, "data": data})
            code = await trio.to_thread.run_sync(proc.wait)
            await self._report({"op": "exited", "submission_id": job_id, "code": code})
            log.info("job_process_exited", submission_id=job_id, code=code)
        finally:
            self.running.pop(job_id, None)
            self.node.unreserve(shape)

    async def _report(self, payload: dict) -> None:
        conn = self.node.head_conn
        if conn is None or conn.closed:
            return
        try:
            await conn.request(m.ServiceRequest(MANAGER_SERVICE, payload))
        except ClusterConnectionError:
            pass

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
