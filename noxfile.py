"""Development sessions. Packages are found on disk: packages/**/pyproject.toml.

    nox -s demo       run a demo workload on a local cluster with two node daemons
    nox -s tests      the typecheck, then the whole test suite (what CI runs)
    nox -s typecheck  mypy --strict on the code listed in pyproject.toml's [tool.mypy] files
    nox -s lint       ruff
    nox -s bench      microbenchmarks of cluster, Ray and Dask side by side
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tomllib

import nox
import nox.command

ROOT = pathlib.Path(__file__).parent
nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "uv|venv"


def packages() -> list[pathlib.Path]:
    """Every distribution in the repo, dependencies before dependents."""
    found = {}
    for pyproject in sorted(ROOT.glob("packages/**/pyproject.toml")):
        if ".nox" in pyproject.parts:
            continue
        meta = tomllib.loads(pyproject.read_text())["project"]
        found[meta["name"]] = (pyproject.parent, [d.split("=")[0].split(">")[0].split("<")[0].strip() for d in meta.get("dependencies", [])])
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered or name not in found:
            return
        for dep in found[name][1]:
            visit(dep)
        ordered.append(name)

    for name in found:
        visit(name)
    return [found[name][0] for name in ordered]


def install_packages(session: nox.Session, *extra: str) -> None:
    editable = []
    for path in packages():
        editable += ["-e", f"{path}[test]" if "test" in _extras(path) else str(path)]
    session.install(*editable, *extra)


def _extras(path: pathlib.Path) -> set[str]:
    meta = tomllib.loads((path / "pyproject.toml").read_text())["project"]
    return set(meta.get("optional-dependencies", {}))


# mypy, and the stubs of what the checked code imports that ships no types of its own.
TYPECHECK_DEPS = ("mypy==2.4.1", "msgpack-types==0.8.0")


def run_typecheck(session: nox.Session, *paths: str) -> None:
    """mypy with the root pyproject.toml's [tool.mypy]: strict, on ``paths`` or those listed there."""
    session.run("mypy", *paths)


def ensure_redis_server(session: nox.Session) -> None:
    """cluster-redis's tests start throwaway redis-servers: as root, install Debian's if missing."""
    if shutil.which("redis-server"):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        session.warn("redis-server is not installed, and installing it needs root and apt-get: the "
                     "Redis metadata store's tests will be skipped (apt-get install -y redis-server)")
        return
    session.log("redis-server is not installed; installing Debian's for the Redis metadata store's tests")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        session.run("apt-get", "update", "-qq", external=True, silent=True, env=env)
        session.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server",
                    external=True, silent=True, env=env)
    except nox.command.CommandFailed:
        session.warn("installing redis-server with apt-get failed (its output is above): the Redis metadata "
                     "store's tests will be skipped")


# What the tests on separate hosts (tests/hosts.py: network namespaces) run, by Debian package.
HOST_TOOLS = {"ip": "iproute2", "unshare": "util-linux", "nsenter": "util-linux", "mount": "mount"}


def ensure_host_tools(session: nox.Session) -> None:
    """The tests on separate hosts run HOST_TOOLS: as root, install the missing ones."""
    missing = sorted({package for tool, package in HOST_TOOLS.items() if not shutil.which(tool)})
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        session.warn(f"{', '.join(missing)} not installed, and installing needs root and apt-get: the tests "
                     f"on separate hosts will be skipped (apt-get install -y {' '.join(missing)})")
        return
    session.log(f"installing Debian's {', '.join(missing)} for the tests on separate hosts")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        session.run("apt-get", "update", "-qq", external=True, silent=True, env=env)
        session.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing,
                    external=True, silent=True, env=env)
    except nox.command.CommandFailed:
        session.warn(f"installing {', '.join(missing)} with apt-get failed (its output is above): the tests "
                     "on separate hosts will be skipped")


@nox.session
def tests(session: nox.Session) -> None:
    """Typecheck, then run every package's tests and the cross-package end-to-end tests."""
    ensure_redis_server(session)
    ensure_host_tools(session)
    install_packages(session, "pytest>=8", "pytest-timeout", "numpy", "psutil", "hatchling",
                     *TYPECHECK_DEPS)
    run_typecheck(session)
    test_dirs = [str(p / "tests") for p in packages() if (p / "tests").is_dir()] + ["tests"]
    session.run("pytest", *(session.posargs or test_dirs))


@nox.session
def demo(session: nox.Session) -> None:
    """Start a head and a second node daemon, run a workload across them, stop them."""
    install_packages(session, "numpy")
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict (see [tool.mypy] in pyproject.toml); nox -s typecheck [-- PATH ...]."""
    install_packages(session, *TYPECHECK_DEPS)
    run_typecheck(session, *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """cluster vs Ray vs Dask: nox -s bench [-- --quick --repeat 3 --write-results bench/RESULTS.md]."""
    install_packages(
        session, "numpy", "psutil", "ray[default]==2.60.0", "dask[distributed]==2026.8.0"
    )
    session.run("python", "bench/run.py", *session.posargs)
