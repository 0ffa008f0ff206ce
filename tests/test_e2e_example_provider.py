"""The example provider plugin (examples/provider-plugin) passes its own tests, the provider
conformance kit among them, when installed as a third party would install it.

The plugin is built with hatchling and installed into a fresh directory (CI installs only
packages/**), and its tests run in a pytest of their own with that directory on PYTHONPATH:
cluster finds the plugin through its ``cluster.plugins`` entry point, as it would after
``pip install cluster-provider-shell``. This process's plugins were loaded before the install.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "provider-plugin"
RUN_TIMEOUT_S = 540


@pytest.fixture(scope="module")
def installed_example(plugin_installer) -> Iterator[str]:
    with plugin_installer(EXAMPLE, "cluster_provider_shell") as path:
        yield path


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_the_example_provider_plugin_passes_its_tests_and_the_conformance_kit(installed_example, tmp_path):
    basetemp = tmp_path / "pytest"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",  # nothing written into the example's tree
           "PYTHONPATH": os.pathsep.join(p for p in (installed_example, os.environ.get("PYTHONPATH")) if p),
           # kmock (cluster-k8s's tests) registers a pytest plugin that needs pytest-asyncio; the
           # example's run has neither the need nor our root config that turns it off
           "PYTEST_ADDOPTS": "-p no:kmock"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}", "tests"],
            cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        )
    finally:
        leftovers = _stop_leftover_daemons(basetemp)  # only if the run failed or timed out
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    passed = re.search(r"(\d+) passed", output)
    assert passed and int(passed[1]) >= 5, output  # the kit's checks ran, not skipped
    assert "skipped" not in output, output
    assert _plugin_file(env).startswith(installed_example), "the tests did not use the installed copy"
    assert not leftovers, f"the example's tests left daemons running: {leftovers}"


def _plugin_file(env: dict[str, str]) -> str:
    """The file of the plugin module ``shell`` that cluster's plugin manager loads in ``env``."""
    code = ("from cluster.plugins import get_plugin_manager; "
            "print(get_plugin_manager().get_plugin('shell').__file__)")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _stop_leftover_daemons(root: Path) -> list[int]:
    """Kill every daemon `cluster start` recorded under ``root`` that still runs; their pids."""
    killed = []
    for path in root.rglob("daemons/*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            record = json.loads(path.read_text())
            if _start_time(record["pid"]) == record.get("start_time"):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(record["pid"], signal.SIGKILL)
                killed.append(record["pid"])
            if record.get("store_path"):
                shutil.rmtree(record["store_path"], ignore_errors=True)
    return killed


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
