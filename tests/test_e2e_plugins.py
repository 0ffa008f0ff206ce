"""A third-party plugin, installed from tests/fixtures/cluster-plugin-hello, extends the CLI and the daemons."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import cluster

FIXTURE = Path(__file__).parent / "fixtures" / "cluster-plugin-hello"
GREETING = "cluster-plugin-hello says: hello"


@pytest.fixture(scope="module")
def plugin_path(plugin_installer) -> Iterator[str]:
    """The plugin, built with hatchling and installed into a fresh directory (for PYTHONPATH)."""
    with plugin_installer(FIXTURE, "cluster_plugin_hello") as path:
        yield path


def plugin_env(plugin_path: str, **extra: str) -> dict[str, str]:
    """The environment variables that install the plugin (and ``extra`` ones)."""
    pythonpath = os.pathsep.join(p for p in (plugin_path, os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": pythonpath, **extra}


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster", *args], env=env, capture_output=True, text=True, timeout=120)


def markers_of(lc) -> dict[str, Path]:
    """Where each daemon's hello service writes its marker: {node id: path}."""
    return {
        r["node_id"]: Path(r["session_dir"]) / f"hello-plugin-{r['node_id']}.marker" for r in lc.daemon_records()
    }


@cluster.remote
def plus(x: int, y: int) -> int:
    return x + y


def test_the_plugin_adds_a_command_to_the_cli(plugin_path, tmp_path):
    env = {**os.environ, "CLUSTER_TMPDIR": str(tmp_path), **plugin_env(plugin_path)}

    proc = run_cli(env, "hello", "--name", "e2e")
    assert proc.returncode == 0, proc.stderr
    assert f"{GREETING}, e2e!" in proc.stdout

    listing = run_cli(env, "--help")
    assert "hello" in listing.stdout
    assert "Print a greeting" in listing.stdout


def test_without_the_plugin_there_is_no_such_command(tmp_path):
    proc = run_cli({**os.environ, "CLUSTER_TMPDIR": str(tmp_path)}, "hello")
    assert proc.returncode != 0
    assert "No such command 'hello'" in proc.stderr


def test_a_disabled_plugin_s_command_disappears(plugin_path, tmp_path):
    env = {**os.environ, "CLUSTER_TMPDIR": str(tmp_path), **plugin_env(plugin_path, CLUSTER_DISABLE_PLUGINS="hello")}

    proc = run_cli(env, "hello")
    assert proc.returncode != 0
    assert "No such command 'hello'" in proc.stderr
    assert GREETING not in proc.stdout
    listing = run_cli(env, "--help")
    assert listing.returncode == 0
    assert "hello" not in listing.stdout
    assert "status" in listing.stdout  # the built-in commands are still there


def test_the_plugin_s_node_service_runs_in_every_daemon(make_cluster, plugin_path, e2e):
    lc = make_cluster(num_cpus=1, env=plugin_env(plugin_path))
    node = lc.add_node(num_cpus=1)

    markers = markers_of(lc)
    assert len(markers) == 2 and node["node_id"] in markers
    for node_id, marker in markers.items():
        e2e.wait_until(marker.exists, what=f"the hello service's marker {marker}")
        written = json.loads(marker.read_text())
        assert written["node_id"] == node_id
    pids = {json.loads(m.read_text())["pid"] for m in markers.values()}
    assert pids == set(lc.pids)  # written by the daemons themselves
    assert {json.loads(m.read_text())["is_head"] for m in markers.values()} == {True, False}

    # The plugin's command runs in the cluster's environment, and the cluster works.
    assert f"{GREETING}, world!" in lc.cli("hello").stdout
    lc.connect()
    assert cluster.get(plus.options(num_cpus=1).remote(2, 3), timeout=60) == 5
    assert len(e2e.status_json(lc)) == 2


def test_a_disabled_plugin_s_service_does_not_run(make_cluster, plugin_path):
    lc = make_cluster(num_cpus=1, env=plugin_env(plugin_path, CLUSTER_DISABLE_PLUGINS="hello"))

    (marker,) = markers_of(lc).values()
    assert marker.parent.is_dir()
    assert not marker.exists()
    assert lc.cli("hello", check=False).returncode != 0
