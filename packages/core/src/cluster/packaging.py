"""Working dirs as packages: a deterministic zip, named by its content's hash.

Shared by jobs (cluster-client uploads a job's working dir to the head) and runtime envs
(a driver uploads a task's working dir and py_modules to the head's KV).

The same files make the same zip (sorted entries, fixed timestamps), so a directory uploaded
once is never uploaded again: the client asks the head whether it has ``pkg_<hash>.zip``
first. Excludes follow .gitignore's syntax, from ``runtime_env["excludes"]`` and from a
``.gitignore`` at the top of the directory.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

DEFAULT_MAX_BYTES = 1 << 30  # what the SDK uploads at most unless told otherwise
_NAME = re.compile(r"^pkg_[0-9a-f]{32}\.zip$")
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)
ALWAYS_EXCLUDED = [".git/", "__pycache__/", "*.pyc"]


def valid_package_name(name: str) -> bool:
    return bool(_NAME.match(name))


class Excludes:
    """A small .gitignore: ``*``, ``?``, ``**``, a leading ``/`` (anchored), a trailing ``/``
    (directories only) and ``!`` (include again; the last matching pattern wins)."""

    def __init__(self, patterns: list[str]) -> None:
        self.rules: list[tuple[bool, bool, bool, re.Pattern]] = []
        for raw in patterns:
            pattern = raw.strip()
            if not pattern or pattern.startswith("#"):
                continue
            negate = pattern.startswith("!")
            pattern = pattern[1:] if negate else pattern
            dir_only = pattern.endswith("/")
            pattern = pattern.rstrip("/")
            anchored = "/" in pattern  # a slash anywhere but the end anchors it at the root
            pattern = pattern.lstrip("/")
            self.rules.append((negate, dir_only, anchored, re.compile(_translate(pattern))))

    def excluded(self, relpath: str, is_dir: bool) -> bool:
        name = relpath.rsplit("/", 1)[-1]
        verdict = False
        for negate, dir_only, anchored, regex in self.rules:
            if dir_only and not is_dir:
                continue
            if regex.fullmatch(relpath if anchored else name):
                verdict = not negate
        return verdict


def _translate(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        else:
            c = pattern[i]
            out.append("[^/]*" if c == "*" else "[^/]" if c == "?" else fnmatch.translate(c)[4:-3])
            i += 1
    return "".join(out)


def build_package(directory: str | os.PathLike, excludes: list[str] | None = None,
                  max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[str, Path, int]:
    """Zip ``directory`` into a temp file; returns (package name, zip path, size in bytes).

    Raises ValueError naming the problem (not a directory, over ``max_bytes``).
    """
    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"working_dir {str(directory)!r} is not a directory")
    patterns = list(ALWAYS_EXCLUDED) + list(excludes or [])
    gitignore = root / ".gitignore"
    if gitignore.is_file():
        patterns += gitignore.read_text(errors="replace").splitlines()
    rules = Excludes(patterns)
    files: list[tuple[str, Path]] = []
    total = 0
    for current, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(current, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = sorted(d for d in dirnames if not rules.excluded(rel_dir + d, True))
        for filename in sorted(filenames):
            rel = rel_dir + filename
            path = Path(current) / filename
            if rules.excluded(rel, False) or not path.is_file():
                continue
            total += path.stat().st_size
            if total > max_bytes:
                raise ValueError(
                    f"working_dir {str(directory)!r} holds more than {_size(max_bytes)} (the limit); leave out "
                    "what the job does not need with excludes (runtime_env={'excludes': [...]}, .gitignore "
                    "syntax; a .gitignore in the dir counts too), or raise the limit "
                    "(JobSubmissionClient(max_working_dir_bytes=...), cluster job submit --max-working-dir-size)"
                )
            files.append((rel, path))
    fd, tmp = tempfile.mkstemp(prefix="cluster-working-dir-", suffix=".zip")
    os.close(fd)
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for rel, path in files:
                info = zipfile.ZipInfo(rel, date_time=_FIXED_TIME)
                info.external_attr = (path.stat().st_mode & 0o777 | 0o100000) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(path, "rb") as src, archive.open(info, "w") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
        with open(tmp, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except BaseException:
        os.unlink(tmp)
        raise
    return f"pkg_{digest.hexdigest()[:32]}.zip", Path(tmp), os.path.getsize(tmp)


def extract_package(zip_path: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Unzip into ``destination`` (made atomically: extracted beside it, then renamed)."""
    destination = Path(destination)
    if destination.is_dir():
        return
    tmp = Path(tempfile.mkdtemp(prefix=destination.name + ".", dir=destination.parent))
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            target = (tmp / info.filename).resolve()
            if not str(target).startswith(str(tmp.resolve()) + os.sep):
                raise ValueError(f"the package holds a path outside itself: {info.filename!r}")
            archive.extract(info, tmp)
            mode = info.external_attr >> 16 & 0o777
            if mode:
                os.chmod(target, mode)
    try:
        tmp.rename(destination)
    except OSError:  # another extraction won the race: same content
        shutil.rmtree(tmp, ignore_errors=True)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
