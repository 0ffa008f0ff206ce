"""The ``shell`` provider: node daemons started with the public ``cluster start`` command.

A launch runs, for each node::

    cluster start --address HEAD:PORT --num-cpus N --num-gpus G --resources JSON --labels JSON \\
        [node_config.extra_args ...]          (the token goes in CLUSTER_TOKEN, not argv)

and reads the node id and pid from the line it prints (``Started node <id> at <address> (...),
pid <pid>, ...``). A terminate sends SIGTERM to that pid, SIGKILL after a grace.

Everything the provider knows lives in files under ``context.state_dir``, so every provider
object in every process (the head's autoscaler, ``cluster down`` in a shell) sees the same
instances::

    lock                     flock'ed around every read-modify-write below
    requests                 launch request ids already seen, one a line (idempotency)
    instances/<id>.json      one record per instance (state, pid, node id, ...)

Options (``provider:`` in the cluster config): ``command`` (the ``cluster`` command as a list,
default ``[sys.executable, "-m", "cluster"]``), ``start_timeout_s`` (120), ``stop_grace_s`` (10).
Node types may set ``node_config: {extra_args: [...]}``: more ``cluster start`` arguments.

Linux only: a pid is told from a recycled one by its start time in ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio
from cluster_autoscaler.config import NodeType
from cluster_autoscaler.errors import ClusterConfigError
from cluster_autoscaler.provider import Instance, ProviderContext, ProviderError

OPTIONS = {"command", "start_timeout_s", "stop_grace_s"}
STARTED = re.compile(r"^Started node (?P<node_id>\S+) at (?P<address>\S+) \(.*\), pid (?P<pid>\d+)", re.M)


class ShellProvider:
    """Implements ``cluster_autoscaler.provider.Provider`` by running ``cluster start``."""

    def __init__(self, context: ProviderContext, options: Mapping[str, Any] | None = None) -> None:
        options = dict(options or {})
        unknown = set(options) - OPTIONS
        if unknown:  # bad configuration is the one thing a provider raises for
            raise ClusterConfigError(f"provider type 'shell' has no option(s) {', '.join(sorted(unknown))}; "
                                     f"it knows {', '.join(sorted(OPTIONS))}")
        command = options.get("command", [sys.executable, "-m", "cluster"])
        if isinstance(command, str) or not all(isinstance(part, str) for part in command):
            raise ClusterConfigError("provider option 'command' must be a list of strings, e.g. [cluster]")
        self.context = context
        self.options = options
        self.command = list(command)
        self.start_timeout_s = float(options.get("start_timeout_s", 120))
        self.stop_grace_s = float(options.get("stop_grace_s", 10))
        self.root = Path(context.state_dir)
        self.dir = self.root / "instances"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._errors: list[ProviderError] = []  # failures this object saw, until poll_errors

    # ------------------------------------------------------------------ the contract

    async def launch(self, node_type: NodeType, count: int, request_id: str) -> None:
        if not self._first_time(request_id):
            return  # a retry: that request was (or is being) done
        async with trio.open_nursery() as nursery:  # the nodes start side by side
            for i in range(count):
                record = self._new_record(node_type, f"{request_id}/{i}")
                nursery.start_soon(self._start, record, node_type)

    async def terminate(self, instance_ids: Sequence[str], request_id: str) -> None:
        async with trio.open_nursery() as nursery:
            for instance_id in dict.fromkeys(instance_ids):
                record = self._update(instance_id, state="terminating")
                if record is None:
                    continue  # unknown, or already gone: nothing to do
                if record.get("pid"):
                    nursery.start_soon(self._stop, record)
                # else: still starting; its launcher sees "terminating" and stops it when it is up

    async def non_terminated(self) -> dict[str, Instance]:
        found, dead = {}, []
        with self._locked():
            for path in sorted(self.dir.glob("*.json")):
                record = _read(path)
                if record is None:
                    continue
                if record.get("pid") and not _alive(record["pid"], record.get("start_time")):
                    if record["state"] != "terminating":  # it died on its own
                        self._error(record, f"instance {record['instance_id']} (node {record.get('node_id')}, "
                                            f"pid {record['pid']}) exited")
                    dead.append(record)
                    path.unlink(missing_ok=True)
                    continue
                if not record.get("pid") and not _alive(record["launcher_pid"], record["launcher_start"]):
                    if record["state"] != "terminating":  # whoever ran `cluster start` is gone
                        self._error(record, f"the launch of {record['instance_id']} was interrupted")
                    path.unlink(missing_ok=True)
                    continue
                if record["state"] == "terminating":
                    continue
                found[record["instance_id"]] = Instance(
                    record["instance_id"], record["node_type"], record["state"], record.get("node_id"),
                    record["launched_at"], record["request_id"])
        for record in dead:
            await self._clean_up_after(record)
        return found

    async def poll_errors(self) -> list[ProviderError]:
        errors, self._errors = self._errors, []
        return errors

    # ------------------------------------------------------------------ processes

    async def _start(self, record: dict, node_type: NodeType) -> None:
        resources = dict(node_type.resources)
        args = ["start", "--address", self.context.head_address,
                "--num-cpus", str(resources.pop("CPU", 0)), "--num-gpus", str(resources.pop("GPU", 0)),
                "--resources", json.dumps(resources), "--labels", json.dumps(dict(node_type.labels)),
                *map(str, node_type.node_config.get("extra_args", []))]
        env = {**os.environ, "CLUSTER_TOKEN": self.context.token}
        try:
            with trio.move_on_after(self.start_timeout_s) as timeout:
                done = await trio.run_process([*self.command, *args], env=env, check=False,
                                              capture_stdout=True, capture_stderr=True, stdin=b"")
        except OSError as exc:  # e.g. the command is not there
            self._fail(record, f"could not run {self.command[0]!r}: {exc}")
            return
        except BaseException:  # cancelled: no instance to show for it
            self._forget(record["instance_id"])
            raise
        if timeout.cancelled_caught:
            self._fail(record, f"`cluster start` did not finish within {self.start_timeout_s:.0f}s")
            return
        stdout, stderr = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
        started = STARTED.search(stdout)
        if done.returncode != 0 or started is None:
            last = ([line for line in stderr.splitlines() if line.strip()] or ["(no output)"])[-1]
            self._fail(record, f"`cluster start` for node type {node_type.name} exited with code "
                               f"{done.returncode}: {last.strip()}")
            return
        pid = int(started["pid"])
        # `cluster start` records the daemon where `cluster stop` finds it; we read its store
        # path from there, to clean up after a daemon that had to be killed.
        cluster_root = env.get("CLUSTER_TMPDIR") or os.path.join(tempfile.gettempdir(), "cluster")
        daemon_record = os.path.join(cluster_root, "daemons", f"{pid}.json")
        store_path = (_read(Path(daemon_record)) or {}).get("store_path")
        with self._locked():
            current = _read(self._path(record["instance_id"]))
            record.update(pid=pid, start_time=_start_time(pid), node_id=started["node_id"],
                          address=started["address"], daemon_record=daemon_record, store_path=store_path)
            if current is None or current["state"] == "terminating":  # terminated while it started
                record["state"] = "terminating"
            else:
                record["state"] = "running"
            self._write(record)
        if record["state"] == "terminating":
            await self._stop(record)

    async def _stop(self, record: dict) -> None:
        """SIGTERM, SIGKILL after the grace; then forget the instance."""
        pid, start_time = record["pid"], record.get("start_time")
        for signum, wait_s in ((signal.SIGTERM, self.stop_grace_s), (signal.SIGKILL, 10.0)):
            if not _alive(pid, start_time):
                break
            _signal_group(pid, signum)
            with trio.move_on_after(wait_s):
                while _alive(pid, start_time):
                    await trio.sleep(0.05)
        await self._clean_up_after(record)
        self._forget(record["instance_id"])

    async def _clean_up_after(self, record: dict) -> None:
        """What a daemon that died without shutting down leaves: its store and its record."""
        if _alive(record["pid"], record.get("start_time")):
            return
        theirs = _read(Path(record.get("daemon_record") or "/nonexistent"))
        if theirs is not None and theirs.get("start_time") == record.get("start_time"):
            Path(record["daemon_record"]).unlink(missing_ok=True)  # (not a newer daemon's, same pid)
        if record.get("store_path"):
            await trio.to_thread.run_sync(shutil.rmtree, record["store_path"], True)

    def _fail(self, record: dict, message: str) -> None:
        self._error(record, message)
        self._forget(record["instance_id"])

    def _error(self, record: dict, message: str) -> None:
        self._errors.append(ProviderError(record["request_id"], record["node_type"], message, time.time()))

    # ------------------------------------------------------------------ state files

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Excludes every other provider object on this state dir (never held across an await)."""
        with open(self.root / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def _first_time(self, request_id: str) -> bool:
        """Record ``request_id``; False if any provider object on this state dir saw it before."""
        with self._locked(), open(self.root / "requests", "a+") as f:
            f.seek(0)
            if request_id in f.read().splitlines():
                return False
            f.write(request_id + "\n")
        return True

    def _new_record(self, node_type: NodeType, request_id: str) -> dict:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", node_type.name)
        while True:
            record = {"instance_id": f"shell-{name}-{secrets.token_hex(6)}", "node_type": node_type.name,
                      "state": "pending", "launched_at": time.time(), "request_id": request_id,
                      "launcher_pid": os.getpid(), "launcher_start": _start_time(os.getpid())}
            try:  # O_EXCL: an id is never handed out twice
                fd = os.open(self._path(record["instance_id"]), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            return record

    def _update(self, instance_id: str, **changes: Any) -> dict | None:
        with self._locked():
            record = _read(self._path(instance_id))
            if record is not None:
                record.update(changes)
                self._write(record)
            return record

    def _write(self, record: dict) -> None:
        tmp = self.dir / f".{record['instance_id']}.tmp"
        tmp.write_text(json.dumps(record))
        tmp.replace(self._path(record["instance_id"]))

    def _forget(self, instance_id: str) -> None:
        self._path(instance_id).unlink(missing_ok=True)

    def _path(self, instance_id: str) -> Path:
        return self.dir / f"{instance_id}.json"


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name: [state, ppid, ...]."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _start_time(pid: int) -> str | None:
    stat = _stat(pid)
    return stat[19] if stat else None


def _alive(pid: int, start_time: str | None) -> bool:
    """``pid`` runs, is no zombie, and is the process that started at ``start_time``."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and start_time is not None and stat[19] == start_time


def _signal_group(pid: int, signum: int) -> None:
    """The daemon leads its process group (its workers are in it): signal them all."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
