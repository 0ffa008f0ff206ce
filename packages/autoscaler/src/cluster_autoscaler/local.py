"""Built-in providers: ``local`` (node daemons as processes on this machine) and ``fake``
(the same, behind a simulated cloud API: launch delays, a listing that lags, quotas and
failures on demand).

Both keep one JSON file per instance in the provider's state dir, so any process (the head's
autoscaler, then ``cluster down`` in a shell) sees the same instances.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import trio

from cluster import session
from cluster.launch import start_daemon
from cluster_autoscaler.config import NodeType
from cluster_autoscaler.provider import Instance, ProviderContext, ProviderError

log = structlog.get_logger("cluster.autoscaler.local")

START_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0


class LocalProvider:
    """Node daemons as processes on this machine, each with its node type's resources and labels.

    ``node_config`` may add ``extra_args`` (more `cluster.daemon` arguments).
    """

    def __init__(self, context: ProviderContext, options: dict[str, Any] | None = None) -> None:
        self.context = context
        self.options = dict(options or {})
        self.dir = Path(context.state_dir) / "instances"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._errors: list[ProviderError] = []

    # -- the contract --

    async def launch(self, node_type: NodeType, count: int, request_id: str) -> None:
        if self._first_time(request_id):
            await self._launch(node_type, count, request_id)

    async def _launch(self, node_type: NodeType, count: int, request_id: str) -> None:
        async with trio.open_nursery() as nursery:  # the daemons start side by side
            for i in range(count):
                instance_id = f"{self.id_prefix}-{node_type.name}-{secrets.token_hex(4)}"
                self._write(instance_id, {"instance_id": instance_id, "node_type": node_type.name, "state": "pending",
                                          "launched_at": time.time(), "request_id": f"{request_id}/{i}"})
                nursery.start_soon(self._start, instance_id, node_type)

    async def terminate(self, instance_ids: Sequence[str], request_id: str) -> None:
        for instance_id in instance_ids:
            record = self._read(instance_id)
            if record is None:
                continue
            record["state"] = "terminating"
            self._write(instance_id, record)
            pid = record.get("pid")
            if pid and self._alive(record):
                _signal_group(pid, signal.SIGTERM)
                await self._reap(record)
            self._forget(record)

    async def non_terminated(self) -> dict[str, Instance]:
        found = {}
        for path in sorted(self.dir.glob("*.json")):
            record = self._read(path.stem)
            if record is None:
                continue
            if record.get("pid") and not self._alive(record):
                if record["state"] != "terminating":  # it died on its own
                    self._errors.append(ProviderError(record["request_id"], record["node_type"],
                                                      f"instance {record['instance_id']} (pid {record['pid']}) exited",
                                                      time.time()))
                self._forget(record)
                continue
            if record["state"] == "terminating":
                continue
            found[record["instance_id"]] = Instance(record["instance_id"], record["node_type"], record["state"],
                                                    record.get("node_id"), record["launched_at"],
                                                    record["request_id"])
        return found

    async def poll_errors(self) -> list[ProviderError]:
        errors, self._errors = self._errors, []
        return errors

    # -- processes --

    id_prefix = "local"

    async def _start(self, instance_id: str, node_type: NodeType) -> None:
        session_dir = session.new_session_dir("node")
        args = ["--address", self.context.head_address, "--session-dir", str(session_dir),
                "--resources", json.dumps(dict(node_type.resources)), "--labels", json.dumps(dict(node_type.labels)),
                "--spill-dir", str(session_dir / "spill"), *map(str, node_type.node_config.get("extra_args", []))]
        record = self._read(instance_id) or {}
        try:
            starting = start_daemon(args, self.context.token, session_dir, keep_stdin=False)
        except OSError as exc:
            self._fail(record, f"could not start a node daemon: {exc}")
            return
        record.update(pid=starting.proc.pid, start_time=session.process_start_time(starting.proc.pid),
                      session_dir=str(session_dir))
        self._write(instance_id, record)
        try:
            _, info = await trio.to_thread.run_sync(starting.wait_ready, START_TIMEOUT_S)
        except Exception as exc:  # it exited, or never became ready: a failure, as data
            self._fail(record, f"the node daemon for {node_type.name} did not start: {exc}")
            return
        record.update(state="running", node_id=info["node_id"], address=info["address"],
                      store_path=info.get("store_path"))
        self._write(instance_id, record)
        info.update(role="node", token_file=None, start_time=record["start_time"])
        session.record_daemon(info)  # `cluster stop` on this machine stops it too
        log.info("instance_running", instance_id=instance_id, node_id=info["node_id"], pid=info["pid"])

    def _fail(self, record: dict, message: str) -> None:
        log.warning("launch_failed", instance_id=record.get("instance_id"), error=message)
        self._errors.append(ProviderError(record.get("request_id", ""), record.get("node_type"), message, time.time()))
        if record.get("pid"):
            _signal_group(record["pid"], signal.SIGKILL)
        self._forget(record)

    async def _reap(self, record: dict) -> None:
        with trio.move_on_after(STOP_GRACE_S):
            while self._alive(record):
                await trio.sleep(0.05)
        if self._alive(record):
            _signal_group(record["pid"], signal.SIGKILL)

    @staticmethod
    def _alive(record: dict) -> bool:
        pid = record["pid"]
        return session.pid_alive(pid) and session.process_start_time(pid) == record.get("start_time")

    # -- state files --

    def _first_time(self, request_id: str) -> bool:
        """Record ``request_id``; False if any provider object on this state dir saw it before."""
        log_path = self.dir.parent / "requests"
        with open(log_path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            if request_id in f.read().split():
                return False
            f.write(request_id + "\n")
        return True

    def _read(self, instance_id: str) -> dict | None:
        try:
            return json.loads((self.dir / f"{instance_id}.json").read_text())
        except (OSError, ValueError):
            return None

    def _write(self, instance_id: str, record: dict) -> None:
        tmp = self.dir / f".{instance_id}.tmp"
        tmp.write_text(json.dumps(record))
        tmp.rename(self.dir / f"{instance_id}.json")

    def _forget(self, record: dict) -> None:
        with contextlib.suppress(OSError):
            (self.dir / f"{record['instance_id']}.json").unlink()
        if record.get("pid"):
            session.remove_daemon_record(record["pid"])
        if record.get("store_path"):  # (a daemon stopped by SIGKILL could not remove it)
            import shutil

            shutil.rmtree(record["store_path"], ignore_errors=True)


class FakeProvider(LocalProvider):
    """``local`` behind a simulated cloud API, for tests and for third parties' examples.

    Options: ``launch_delay_s`` (before the daemon starts), ``list_lag_s`` (an instance shows
    in ``non_terminated`` only this long after its launch), ``quota`` ({node type: most
    instances at once}) and ``fail`` ({node type: message}: every launch of it fails).
    """

    id_prefix = "fake"

    async def launch(self, node_type: NodeType, count: int, request_id: str) -> None:
        if not self._first_time(request_id):
            return
        message = (self.options.get("fail") or {}).get(node_type.name)
        quota = (self.options.get("quota") or {}).get(node_type.name)
        if quota is not None:
            have = sum(1 for i in (await self._listed(lag=False)).values() if i.node_type == node_type.name)
            if have + count > quota:
                message = message or f"quota exceeded for {node_type.name}: {have} of {quota} in use, {count} more asked"
        if message:
            self._errors.append(ProviderError(request_id, node_type.name, message, time.time()))
            return
        delay = float(self.options.get("launch_delay_s", 0))
        if delay:
            await trio.sleep(delay)
        await self._launch(node_type, count, request_id)

    async def non_terminated(self) -> dict[str, Instance]:
        return await self._listed(lag=True)

    async def _listed(self, *, lag: bool) -> dict[str, Instance]:
        found = await super().non_terminated()
        lag_s = float(self.options.get("list_lag_s", 0)) if lag else 0.0
        now = time.time()
        return {k: i for k, i in found.items() if now - i.launched_at >= lag_s}


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
