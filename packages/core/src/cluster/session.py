"""Where a cluster keeps its files on a machine: session dirs, the token, daemon records.

Layout under the root (``$CLUSTER_TMPDIR``, or ``<system temp>/cluster``)::

    current.json                 the cluster started here last (address, session dir)
    daemons/<pid>.json           one record per daemon `cluster start` left running
    session_<time>_<pid>/
        token                    the cluster token, mode 0600 (head sessions only)
        logs/<role>-<pid>.jsonl  structured logs, one file per process
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.errors import ConfigError


def cluster_root() -> Path:
    root = os.environ.get("CLUSTER_TMPDIR")
    path = Path(root) if root else Path(tempfile.gettempdir()) / "cluster"
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def new_session_dir(kind: str = "session") -> Path:
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    path = cluster_root() / f"{kind}_{stamp}_{os.getpid()}_{secrets.token_hex(2)}"
    (path / "logs").mkdir(parents=True, mode=0o700)
    return path


def new_token() -> str:
    return secrets.token_hex(32)


def write_token(session_dir: Path, token: str) -> Path:
    path = session_dir / "token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return path


def read_token(path: str | Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"could not read the cluster token from {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"the token file {path} is empty")
    return token


# --- the cluster started on this machine -------------------------------------------------


def write_current(info: dict[str, Any]) -> None:
    path = cluster_root() / "current.json"
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, path)


def read_current() -> dict[str, Any] | None:
    """The cluster last started on this machine, if its head is still alive."""
    try:
        info = json.loads((cluster_root() / "current.json").read_text())
    except (OSError, ValueError):
        return None
    if not pid_alive(info.get("pid", -1)):
        return None
    return info


def clear_current(pid: int) -> None:
    path = cluster_root() / "current.json"
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()


# --- daemon records, for `cluster stop` --------------------------------------------------


def record_daemon(info: dict[str, Any]) -> None:
    folder = cluster_root() / "daemons"
    folder.mkdir(exist_ok=True)
    (folder / f"{info['pid']}.json").write_text(json.dumps(info))


def remove_daemon_record(pid: int) -> None:
    with contextlib.suppress(OSError):
        (cluster_root() / "daemons" / f"{pid}.json").unlink()


def list_daemons() -> list[dict[str, Any]]:
    folder = cluster_root() / "daemons"
    records = []
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return records


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # it exited between the two checks
        return False
    except OSError:
        return True


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid``: tells a recycled pid from the process we started."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
