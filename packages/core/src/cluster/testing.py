"""Real multi-node clusters for tests: a head and nodes started through the CLI, on 127.0.0.1.

    with LocalCluster(tmp_path) as lc:          # head with 1 CPU
        lc.add_node(num_cpus=1)                 # a second node daemon
        lc.connect()                            # cluster.init(lc.address, token=lc.token)
        ...

Everything runs in its own ``CLUSTER_TMPDIR``, so tests never see each other's clusters or the
user's. On exit, ``cluster stop`` stops the daemons by their recorded pids, and any process
still alive that the cluster started (found by walking the daemons' children) is killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import cluster


class LocalCluster:
    """A head (and optionally more node daemons) started with ``cluster start``."""

    def __init__(self, root: str | os.PathLike, *, num_cpus: float = 1, resources: dict | None = None,
                 heartbeat_timeout: float = 10.0, object_store_memory: int | None = None,
                 object_spilling: bool = True, object_store: str = "shared",
                 head_args: list[str] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "CLUSTER_TMPDIR": str(self.root)}
        self.env.pop("CLUSTER_ADDRESS", None)
        self.env.pop("CLUSTER_TOKEN", None)
        self._head_args = ["--num-cpus", str(num_cpus), "--resources", json.dumps(resources or {}),
                           "--heartbeat-timeout", str(heartbeat_timeout)]
        if object_store_memory is not None:
            self._head_args += ["--object-store-memory", str(object_store_memory)]
        if not object_spilling:
            self._head_args += ["--no-object-spilling"]
        self._store_args = ["--object-store", object_store]
        self._head_args += self._store_args
        self._head_args += ["--dashboard-port", "0", *(head_args or [])]  # any free port: tests run side by side
        self.dashboard_url = ""
        self.address = ""
        self.token = ""
        self.pids: list[int] = []
        self._saved_env: dict[str, str | None] = {}

    def cli(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run ``cluster ARGS`` in this cluster's environment; returns the finished process."""
        proc = subprocess.run([sys.executable, "-m", "cluster", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"cluster {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def start(self) -> LocalCluster:
        self.cli("start", "--head", "--port", "0", *self._head_args)
        current = json.loads((self.root / "current.json").read_text())
        self.address = current["address"]
        self.token = Path(current["token_file"]).read_text().strip()
        self.dashboard_url = current.get("dashboard_url") or ""
        self.pids.append(current["pid"])
        return self

    def add_node(self, *, num_cpus: float = 1, resources: dict | None = None,
                 object_store_memory: int | None = None) -> dict[str, Any]:
        before = {r["pid"] for r in self.daemon_records()}
        extra = ["--object-store-memory", str(object_store_memory)] if object_store_memory else []
        self.cli("start", "--address", self.address, "--num-cpus", str(num_cpus),
                 "--resources", json.dumps(resources or {}), *extra, *self._store_args)
        record = next(r for r in self.daemon_records() if r["pid"] not in before)
        self.pids.append(record["pid"])
        return record

    def daemon_records(self) -> list[dict[str, Any]]:
        folder = self.root / "daemons"
        return [json.loads(p.read_text()) for p in folder.glob("*.json")] if folder.exists() else []

    def connect(self) -> Any:
        """``cluster.init`` this process to the cluster."""
        return cluster.init(self.address, token=self.token)

    def process_tree(self) -> list[int]:
        """Pids of the daemons and every process below them that is still alive."""
        import psutil

        found = []
        for pid in self.pids:
            try:
                proc = psutil.Process(pid)
                found.append(pid)
                found += [child.pid for child in proc.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return found

    def stop(self) -> None:
        if cluster.is_initialized():
            cluster.shutdown()
        leftovers = self.process_tree()
        self.cli("stop", check=False)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
