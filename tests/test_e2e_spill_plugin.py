"""A third-party spill target, installed from tests/fixtures/cluster-plugin-spillbox, takes
the objects a full store spills, and every process of the node reads them back from it.

The plugin is on in every process of the cluster, the driver included, so the driver runs as
a script of its own: this test process's plugins were loaded before the plugin was installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import cluster

FIXTURE = Path(__file__).parent / "fixtures" / "cluster-plugin-spillbox"
MB = 1_000_000
ARRAYS = 20
ARRAY_BYTES = 20 * MB  # 400 MB in all, through a 200 MB store

# Puts the arrays and holds their refs; says "stored", waits for a line on stdin; reads every
# array back (and has a worker read the first), says the result; frees them; says "freed".
DRIVER = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import cluster

    N = int(sys.argv[3]) // 8

    @cluster.remote
    def intact_in_worker(array, i):
        import os
        import numpy as np
        return os.getpid(), bool(np.array_equal(array, np.arange(i, i + len(array), dtype=np.int64)))

    def say(**fields):
        print(json.dumps(fields), flush=True)

    cluster.init(sys.argv[1], token=sys.argv[2])
    refs = [cluster.put(np.arange(i, i + N, dtype=np.int64)) for i in range(int(sys.argv[4]))]
    say(stored=[ref.hex() for ref in refs], pid=os.getpid())
    sys.stdin.readline()

    intact = []
    for i, ref in enumerate(refs):
        array = cluster.get(ref, timeout=120)
        intact.append(bool(np.array_equal(array, np.arange(i, i + N, dtype=np.int64))))
        del array
    worker_pid, worker_intact = cluster.get(intact_in_worker.remote(refs[0], 0), timeout=120)
    say(intact=intact, worker_pid=worker_pid, worker_intact=worker_intact)

    del refs
    cluster.shutdown()
    say(freed=True)
    """
)


@pytest.fixture(scope="module")
def spillbox_path(plugin_installer) -> Iterator[str]:
    """The plugin, built with hatchling and installed into a fresh directory (for PYTHONPATH)."""
    with plugin_installer(FIXTURE, "cluster_plugin_spillbox") as path:
        yield path


def ledger(box: Path, node_id: str) -> list[list[str]]:
    """The spillbox target's calls on a node: [[call, object name, (size,) pid], ...]."""
    log = box / f"{node_id}.log"
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def test_a_plugin_s_spill_target_takes_spilled_objects_and_gives_them_back(make_cluster, spillbox_path,
                                                                          tmp_path, e2e):
    box = tmp_path / "spillbox"
    env = {"PYTHONPATH": spillbox_path, "CLUSTER_SPILLBOX_DIR": str(box)}
    lc = make_cluster(num_cpus=1, object_store_memory=200 * MB, env=env)
    (record,) = lc.daemon_records()
    node_id, default_spill_dir = record["node_id"], Path(record["session_dir"]) / "spill"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    stderr = tmp_path / "driver.err"

    with stderr.open("w") as err:
        driver = subprocess.Popen(
            [sys.executable, str(script), lc.address, lc.token, str(ARRAY_BYTES), str(ARRAYS)],
            env=lc.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
        )
    try:
        def said() -> dict:
            line = driver.stdout.readline()
            assert line, f"the driver exited ({driver.wait(timeout=60)}):\n{stderr.read_text()[-3000:]}"
            return json.loads(line)

        stored = said()["stored"]
        # While the driver holds 400 MB, at least half of it is in the plugin's target, as
        # <object id hex>.spilled files, and none in the node's own spill directory.
        spilled = {path.name.removesuffix(".spilled"): path.stat().st_size for path in (box / node_id).glob("*.spilled")}
        assert len(spilled) >= ARRAYS // 2, spilled
        assert set(spilled) <= set(stored)
        assert all(size > ARRAY_BYTES for size in spilled.values())
        assert not default_spill_dir.exists() or not any(default_spill_dir.iterdir())
        status = e2e.wait_until(lambda: [n for n in e2e.status_json(lc) if n["store"].get("spilled_objects")],
                                what="the heartbeat to report the spilled objects")
        assert status[0]["store"]["spilled"] >= ARRAYS // 2 * ARRAY_BYTES  # the node asks the target

        driver.stdin.write("go\n")
        driver.stdin.flush()
        result = said()
        assert result["intact"] == [True] * ARRAYS  # every array came back whole
        assert result["worker_intact"] is True

        # The driver spilled and restored; the worker restored the first array (spilled again
        # by then) from the same target, in its own process.
        calls = ledger(box, node_id)
        driver_pid = str(driver.pid)
        assert {c[1] for c in calls if c[0] == "write" and c[-1] == driver_pid} >= set(spilled)
        assert [c for c in calls if c[0] == "read" and c[-1] == driver_pid]
        assert ["read", stored[0], str(result["worker_pid"])] in calls

        assert said() == {"freed": True}
        assert driver.wait(timeout=60) == 0
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        driver.stdout.close()
        driver.stdin.close()
    # Freed objects leave the target too (deleted by their owner, the driver, or its node).
    e2e.wait_until(lambda: not any((box / node_id).glob("*.spilled")), what="the spilled copies to be deleted")


@cluster.remote
def put_past_the_store_in_worker(count: int, size: int, spill_dir: str) -> tuple[list[int], int]:
    """Put ``count`` arrays of ``size`` bytes from a worker and read them back, holding them all;
    returns their first values and how many files the spill directory had meanwhile."""
    import os

    import numpy as np

    import cluster

    refs = [cluster.put(np.full(size // 8, i, dtype=np.int64)) for i in range(count)]
    spilled = len(os.listdir(spill_dir))
    return [int(cluster.get(ref)[0]) for ref in refs], spilled


def test_without_its_variable_the_plugin_leaves_spilling_to_the_spill_dir(make_cluster, spillbox_path):
    lc = make_cluster(num_cpus=1, object_store_memory=200 * MB, env={"PYTHONPATH": spillbox_path})
    (record,) = lc.daemon_records()
    spill_dir = Path(record["session_dir"]) / "spill"
    lc.connect()

    # The worker has the plugin installed, but off: its store spills to the node's directory.
    firsts, spilled = cluster.get(put_past_the_store_in_worker.remote(10, 2 * ARRAY_BYTES, str(spill_dir)),
                                  timeout=120)
    assert firsts == list(range(10))
    assert spilled >= 5
