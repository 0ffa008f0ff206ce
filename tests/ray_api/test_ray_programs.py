"""Ray programs ported by changing one import: each file in ``programs/`` is written the way
Ray's documentation writes programs (``import cluster as ray``, then only ``ray.`` names), runs
as its own driver process against a cluster the test started, checks its own results with
asserts and ends by printing OK."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAMS = sorted((Path(__file__).parent / "programs").glob("*.py"))


@pytest.fixture(scope="module")
def two_node_cluster(module_clusters):
    lc = module_clusters(num_cpus=2)
    lc.add_node(num_cpus=2)
    return lc


@pytest.mark.parametrize("program", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_a_ray_program_runs_with_import_cluster_as_ray(program, two_node_cluster):
    env = {**os.environ, "CLUSTER_ADDRESS": two_node_cluster.address, "CLUSTER_TOKEN": two_node_cluster.token}
    proc = subprocess.run([sys.executable, str(program)], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0 and proc.stdout.rstrip().endswith("OK"), (
        f"{program.name} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr[-4000:]}"
    )
