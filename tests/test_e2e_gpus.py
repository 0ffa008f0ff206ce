"""GPUs as Ray gives them out: each task or actor sees only the devices it was given, in
CUDA_VISIBLE_DEVICES and ``cluster.get_gpu_ids()``; fractions of one device pack together.

No GPU is needed: a node started with ``--num-gpus 2`` (or with CUDA_VISIBLE_DEVICES set)
hands out device ids as a real one would; the tasks only read what they were given. Tasks
that must hold their GPUs at the same time meet first (each waits until all have arrived).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest

import cluster
from cluster.errors import ConfigError


@cluster.remote(num_gpus=1)
def meet(folder: str, me: str, everyone: int) -> tuple[str, list]:
    """Arrive, wait for ``everyone`` to have arrived (so all hold their GPUs at once), report."""
    Path(folder, me).touch()
    deadline = time.monotonic() + 60
    while len(os.listdir(folder)) < everyone and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), cluster.get_gpu_ids()


@cluster.remote(num_gpus=1)
class Trainer:
    def devices(self) -> tuple[str, list, dict]:
        context = cluster.get_runtime_context()
        return os.environ["CUDA_VISIBLE_DEVICES"], cluster.get_gpu_ids(), context.get_accelerator_ids()


def meeting_place(tmp_path: Path) -> str:
    folder = tmp_path / "meeting"
    folder.mkdir()
    return str(folder)


@cluster.remote(num_gpus=0)
def cpu_only() -> tuple[str, list]:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"), cluster.get_gpu_ids()


def test_two_one_gpu_tasks_see_different_devices(make_cluster, tmp_path):
    make_cluster(num_cpus=4, num_gpus=2).connect()
    folder = meeting_place(tmp_path)
    assert cluster.cluster_resources()["GPU"] == 2
    results = cluster.get([meet.remote(folder, f"t{i}", 2) for i in range(2)], timeout=120)
    assert sorted(results) == [("0", [0]), ("1", [1])]
    assert cluster.get(cpu_only.remote(), timeout=60) == ("<unset>", [])  # none given: none shown


def test_four_half_gpu_tasks_share_two_devices_two_by_two(make_cluster, tmp_path):
    make_cluster(num_cpus=4, num_gpus=2).connect()
    folder = meeting_place(tmp_path)
    half = meet.options(num_gpus=0.5)
    results = cluster.get([half.remote(folder, f"t{i}", 4) for i in range(4)], timeout=120)
    assert Counter(visible for visible, _ in results) == {"0": 2, "1": 2}


def test_an_actor_keeps_its_gpu_for_life(make_cluster, tmp_path):
    make_cluster(num_cpus=2, num_gpus=2).connect()
    first, second = Trainer.remote(), Trainer.remote()
    (a, a_ids, a_acc), (b, b_ids, b_acc) = cluster.get([first.devices.remote(), second.devices.remote()], timeout=120)
    assert {a, b} == {"0", "1"} and a_ids == [int(a)] and a_acc == {"GPU": [a]}
    assert b_ids == [int(b)] and b_acc == {"GPU": [b]}
    assert cluster.get(first.devices.remote(), timeout=60)[0] == a  # the same device on every call
    third = meet.options(num_gpus=1).remote(meeting_place(tmp_path), "x", 0)  # both GPUs are held: it waits
    ready, _ = cluster.wait([third], timeout=1)
    assert not ready
    cluster.kill(first)
    assert cluster.get(third, timeout=60)[0] == a  # the killed actor's device went back


def test_a_node_started_with_cuda_visible_devices_hands_out_those_names(make_cluster, tmp_path):
    make_cluster(num_cpus=2, env={"CUDA_VISIBLE_DEVICES": "3,5"}).connect()
    folder = meeting_place(tmp_path)
    assert cluster.cluster_resources()["GPU"] == 2  # counted from the variable, as Ray
    results = cluster.get([meet.remote(folder, f"t{i}", 2) for i in range(2)], timeout=120)
    assert sorted(results) == [("3", ["3"]), ("5", ["5"])]  # names, not ints, as Ray's get_gpu_ids


def test_more_than_one_gpu_must_be_a_whole_number():
    with pytest.raises(ConfigError, match="whole number"):
        meet.options(num_gpus=1.5)
