"""Start daemon processes and wait until they accept connections."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cluster.errors import ClusterError

START_TIMEOUT_S = 60.0


def spawn_daemon(
    args: list[str], token: str, session_dir: Path, *, keep_stdin: bool, timeout: float = START_TIMEOUT_S
) -> tuple[subprocess.Popen, dict[str, Any]]:
    """Start ``python -m cluster.daemon ARGS`` and return it with its ready info.

    With ``keep_stdin`` the caller holds the daemon's stdin; the daemon stops when it closes.
    """
    return start_daemon(args, token, session_dir, keep_stdin=keep_stdin).wait_ready(timeout)


class StartingDaemon:
    """A daemon process that was started and may not accept connections yet."""

    def __init__(self, proc: subprocess.Popen, err_path: Path) -> None:
        self.proc = proc
        self.err_path = err_path

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> tuple[subprocess.Popen, dict[str, Any]]:
        return _wait_ready(self.proc, self.err_path, timeout)


def start_daemon(args: list[str], token: str, session_dir: Path, *, keep_stdin: bool) -> StartingDaemon:
    """Start ``python -m cluster.daemon ARGS`` without waiting for it."""
    err_path = session_dir / "logs" / f"daemon-start-{os.getpid()}-{time.monotonic_ns()}.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cluster.daemon", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
            close_fds=True,
        )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write((token + "\n").encode())
    proc.stdin.flush()
    if not keep_stdin:
        proc.stdin.close()
    return StartingDaemon(proc, err_path)


def _wait_ready(proc: subprocess.Popen, err_path: Path, timeout: float) -> tuple[subprocess.Popen, dict[str, Any]]:
    assert proc.stdout is not None
    line = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                proc.kill()
                proc.wait()
                raise ClusterError(f"the daemon did not start within {timeout:.0f}s; see {err_path}")
            if sel.select(remaining):
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                line += chunk
    proc.stdout.close()
    if not line.endswith(b"\n"):
        proc.wait()
        detail = err_path.read_text(errors="replace").strip().splitlines()
        message = next((ln.removeprefix("error: ") for ln in reversed(detail) if ln.startswith("error: ")), None)
        raise ClusterError(
            message or f"the daemon exited (code {proc.returncode}) before it was ready; see {err_path}"
            + ("\n" + "\n".join(detail[-5:]) if detail else "")
        )
    return proc, json.loads(line)
