"""Fixtures for the end-to-end tests: real clusters of real processes on 127.0.0.1.

- Every test runs with ``CLUSTER_TMPDIR`` in a private temporary directory (never the user's
  clusters), with ``CLUSTER_ADDRESS``, ``CLUSTER_TOKEN`` and ``CLUSTER_DISABLE_PLUGINS`` unset.
- ``tmp_path`` is overridden: a fresh directory that is removed after the test, pass or fail
  (pytest's own keeps the last runs around).
- ``shared_cluster`` (module scope): a head (1 CPU, resource ``a``) and a node (1 CPU, resource
  ``b``), with this process connected as the driver. For tests that leave it as they found it.
- ``make_cluster``: dedicated clusters for tests that break things. On teardown every process
  they started must be gone (checked, then killed if not), and so must their object stores.
- ``make_hosts``: separate machines on this one, ``make_hosts(3)`` or ``make_hosts(["head",
  "node"])``: a network namespace each on a private bridge, with its own hostname, /dev/shm
  and CLUSTER_TMPDIR (tests/hosts.py). Skipped, with the reason, where that needs what the
  machine does not allow (root, iproute2). On teardown every process, namespace and file goes.

Functions shipped to workers must be self-contained (imports inside, no module-level helpers):
cloudpickle ships a decorated function by value, but a plain module-level function or class of
a test module by reference, and workers cannot import test modules (see test_e2e_errors.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import hosts
import psutil
import pytest

import cluster
from cluster.testing import LocalCluster

GONE_TIMEOUT_S = 30.0  # a bound, not an expectation: only reached when something is left running
_shared: dict[str, Any] = {"cluster": None}  # a cluster tests share (shared_cluster, make_module_cluster), while it is up


# ------------------------------------------------------------------------------- helpers


def wait_until(predicate: Callable[[], Any], *, timeout: float = 60.0, what: str = "the condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (and return that); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what}")
        time.sleep(0.02)


def is_running(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie is dead: it only waits to be reaped)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def still_running(pids: Iterable[int], *, timeout: float = GONE_TIMEOUT_S) -> list[int]:
    """Wait (bounded) for every pid to exit; return those still running after ``timeout``."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if is_running(pid)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def process_descriptions(pids: Iterable[int]) -> list[str]:
    out = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            out.append(f"{pid} {proc.status()} {' '.join(proc.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            out.append(f"{pid} (gone)")
    return out


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def store_paths(lc: LocalCluster) -> list[str]:
    """The object store directories of the cluster's daemons (they live in /dev/shm)."""
    return [r["store_path"] for r in lc.daemon_records() if r.get("store_path")]


def logs_tail(root: Path, lines: int = 15) -> str:
    """The end of every daemon/worker log under ``root``: printed when a cluster misbehaves."""
    out = []
    for path in sorted(root.rglob("logs/*")):
        if path.is_file() and path.suffix in (".out", ".err") and path.stat().st_size:
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.relative_to(root)}\n" + "\n".join(text))
    return "\n".join(out)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session", autouse=True)
def _isolated_cluster_environment() -> Iterator[Path]:
    """No test sees the user's clusters or settings, and nothing is left in their temp dir."""
    root = Path(tempfile.mkdtemp(prefix="cluster-e2e-session-"))
    saved = {k: os.environ.get(k) for k in ("CLUSTER_TMPDIR", "CLUSTER_ADDRESS", "CLUSTER_TOKEN",
                                             "CLUSTER_DISABLE_PLUGINS", "CLUSTER_NODE_ID")}
    os.environ["CLUSTER_TMPDIR"] = str(root)
    for key in saved:
        if key != "CLUSTER_TMPDIR":
            os.environ.pop(key, None)
    try:
        yield root
    finally:
        if cluster.is_initialized():
            cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _driver_state_reset() -> Iterator[None]:
    """After each test (except while a shared cluster is up), leave this process disconnected.

    shutdown() is a no-op when not connected, but it also forgets a local session that a
    failed init() left behind, so the next test's init() does not write into it.
    """
    yield
    if _shared["cluster"] is None:
        cluster.shutdown()


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A fresh directory for one test, removed afterwards whether the test passed or not."""
    path = Path(tempfile.mkdtemp(prefix="cluster-e2e-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class ClusterFactory:
    """Starts LocalClusters; ``close()`` stops them all and checks that nothing survived."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clusters: list[LocalCluster] = []

    def __call__(self, *, num_cpus: float = 1, resources: dict | None = None,
                 env: dict[str, str] | None = None, start: bool = True,
                 object_store_memory: int | None = None, object_spilling: bool = True,
                 object_store: str = "shared", head_args: list[str] | None = None,
                 heartbeat_timeout: float = 10.0, labels: dict | None = None,
                 num_gpus: float | None = None) -> LocalCluster:
        lc = LocalCluster(self.root / f"cluster{len(self.clusters)}", num_cpus=num_cpus, resources=resources,
                          object_store_memory=object_store_memory, object_spilling=object_spilling,
                          object_store=object_store, head_args=head_args, heartbeat_timeout=heartbeat_timeout,
                          labels=labels, num_gpus=num_gpus)
        lc.env.update(env or {})
        self.clusters.append(lc)
        if start:
            lc.start()
        return lc

    def close(self) -> None:
        problems = []
        for lc in self.clusters:
            try:
                problems += stop_and_check(lc)
            except Exception as exc:  # still stop the other clusters
                problems.append(f"stopping the cluster in {lc.root} failed: {exc!r}")
        self.clusters.clear()
        if problems:
            raise AssertionError("the cluster did not clean up after itself:\n" + "\n".join(problems))


def stop_and_check(lc: LocalCluster) -> list[str]:
    """Stop ``lc`` like LocalCluster.stop(); return what it left behind (then cleaned up here)."""
    problems: list[str] = []
    stores = store_paths(lc)
    tree = lc.process_tree()
    try:
        lc.stop()
    finally:
        survivors = still_running(tree)
        if survivors:
            problems.append("processes still running after stop: " + "; ".join(process_descriptions(survivors)))
            kill_all(survivors)
        for store in stores:
            if os.path.exists(store):
                problems.append(f"object store left behind: {store}")
                shutil.rmtree(store, ignore_errors=True)
    if problems:
        problems.append(logs_tail(lc.root))
    return problems


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    """``make_cluster(num_cpus=1, resources={...}, env={...})`` -> a started LocalCluster (head only).

    Add nodes with ``lc.add_node(...)``; connect this process with ``lc.connect()``.
    """
    factory = ClusterFactory(tmp_path / "clusters")
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def make_hosts() -> Iterator[Callable[..., hosts.Network]]:
    """``make_hosts(n)`` or ``make_hosts(names)`` -> a hosts.Network (hosts h1..hn by default).

    ``shm_size="2G"`` bounds each host's /dev/shm. Tests talk to the hosts only by running
    commands on them (``host.run``, ``host.spawn``, ``host.start_head``, ...), never by
    connecting to their addresses from this process.
    """
    reason = hosts.unavailable()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="cluster-e2e-hosts-"))
    networks: list[hosts.Network] = []

    def make(names: int | list[str] = 2, *, shm_size: str | None = None) -> hosts.Network:
        wanted = [f"h{i}" for i in range(1, names + 1)] if isinstance(names, int) else list(names)
        net = hosts.Network.create(wanted, root=root / f"net{len(networks)}", shm_size=shm_size)
        networks.append(net)
        return net

    try:
        yield make
    finally:
        problems = []
        for net in networks:
            print(net.logs())  # captured: pytest shows it when the test failed
            problems += net.close()
        shutil.rmtree(root, ignore_errors=True)
        if problems:
            raise AssertionError("the hosts did not clean up:\n" + "\n".join(problems))


@pytest.fixture(scope="module")
def module_clusters() -> Iterator[ClusterFactory]:
    """A ClusterFactory whose clusters live for the whole test module (stopped and checked at its end)."""
    root = Path(tempfile.mkdtemp(prefix="cluster-e2e-module-"))
    factory = ClusterFactory(root)
    try:
        yield factory
    finally:
        try:
            factory.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def shared_cluster() -> Iterator[LocalCluster]:
    """Head (1 CPU, {"a": 1}) + node (1 CPU, {"b": 1}); this process is connected to it."""
    root = Path(tempfile.mkdtemp(prefix="cluster-e2e-shared-"))
    factory = ClusterFactory(root)
    try:
        lc = factory(num_cpus=1, resources={"a": 1})
        lc.node = lc.add_node(num_cpus=1, resources={"b": 1})
        lc.connect()
        _shared["cluster"] = lc
        yield lc
    finally:
        _shared["cluster"] = None
        try:
            factory.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def make_module_cluster() -> Iterator[ClusterFactory]:
    """``make_cluster`` for a cluster all tests of a module share: the driver stays connected
    between them, and the clusters stop (and are checked) after the module's last test."""
    root = Path(tempfile.mkdtemp(prefix="cluster-e2e-module-"))
    factory = ClusterFactory(root)
    _shared["cluster"] = factory
    try:
        yield factory
    finally:
        _shared["cluster"] = None
        cluster.shutdown()
        try:
            factory.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def node_ids(shared_cluster: LocalCluster) -> dict[str, str]:
    """{"head": node id, "node": node id} of the shared cluster."""
    nodes = cluster.nodes()
    return {
        "head": next(n["node_id"] for n in nodes if n["is_head"]),
        "node": next(n["node_id"] for n in nodes if n["pid"] == shared_cluster.node["pid"]),
    }


@contextlib.contextmanager
def installed_fixture(fixture: Path, package: str) -> Iterator[str]:
    """A test plugin distribution, built with hatchling and installed into a fresh directory;
    yields the directory (put it on PYTHONPATH to enable the plugin)."""
    target = Path(tempfile.mkdtemp(prefix=f"cluster-e2e-{package}-"))
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
             "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(target), str(fixture)],
            capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
        assert (target / package / "plugin.py").exists()
        yield str(target)
    finally:
        shutil.rmtree(target, ignore_errors=True)


@pytest.fixture(scope="session")
def plugin_installer() -> Callable[[Path, str], Any]:
    """``with plugin_installer(fixture_dir, package) as path:`` installs a test plugin."""
    return installed_fixture


def status_json(lc: LocalCluster) -> list[dict[str, Any]]:
    """``cluster status --json`` of ``lc``, parsed."""
    return json.loads(lc.cli("status", "--json").stdout)


def run_driver(lc: LocalCluster, source: str, folder: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``source`` as a driver script of its own against ``lc`` (with extra ``env``); it must exit 0."""
    script = folder / "driver.py"
    script.write_text(source)
    environ = {**lc.env, "CLUSTER_ADDRESS": lc.address, "CLUSTER_TOKEN": lc.token, **env}
    proc = subprocess.run([sys.executable, str(script)], env=environ, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def e2e() -> types.SimpleNamespace:
    """The helpers above, for test modules (conftest.py is not meant to be imported)."""
    return types.SimpleNamespace(
        wait_until=wait_until,
        is_running=is_running,
        still_running=still_running,
        kill_all=kill_all,
        status_json=status_json,
        store_paths=store_paths,
        run_driver=run_driver,
    )
