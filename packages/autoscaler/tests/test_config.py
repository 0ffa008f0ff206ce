"""Cluster configs: a good one loads into frozen types; a bad one names the key and the line."""

from __future__ import annotations

import attrs
import pytest
from cluster_autoscaler.config import parse_config
from cluster_autoscaler.errors import ClusterConfigError

GOOD = """\
cluster_name: demo
provider:
  type: local
  spawn_timeout_s: 30
head_node_type: head
max_workers: 6
idle_timeout_s: 5
upscaling_speed: 2
node_types:
  head:
    resources: {CPU: 1}
  cpu_worker:
    resources: {CPU: 2}
    min_workers: 1
    max_workers: 3
  gpu_worker:
    resources: {CPU: 2, accel: 1}
    labels: {kind: gpu}
    max_workers: 1
    node_config: {image: gpu-box}
"""


def test_a_good_config_loads_into_frozen_types() -> None:
    config = parse_config(GOOD, "cluster.yaml")
    assert config.cluster_name == "demo"
    assert config.provider.type == "local" and config.provider.options["spawn_timeout_s"] == 30
    assert config.max_workers == 6 and config.idle_timeout_s == 5.0 and config.upscaling_speed == 2.0
    gpu = config.node_types["gpu_worker"]
    assert dict(gpu.resources) == {"CPU": 2.0, "accel": 1.0}
    assert dict(gpu.labels) == {"kind": "gpu"} and gpu.min_workers == 0 and gpu.max_workers == 1
    assert [t.name for t in config.worker_types] == ["cpu_worker", "gpu_worker"]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.max_workers = 100
    with pytest.raises(TypeError):
        gpu.resources["CPU"] = 8  # the mappings are read-only too


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("max_workers: 6", "max_workers: many"), "cluster.yaml, line 6: max_workers must be an integer >= 0, got 'many'"),
        (("    max_workers: 3", "    max_workers: 0"), "line 15: node_types.cpu_worker.max_workers (0) is below min_workers (1)"),
        (("head_node_type: head", "head_node_type: boss"), "line 5: head_node_type 'boss' is not one of node_types"),
        (("    resources: {CPU: 2}", "    resources: {CPU: -2}"), "line 13: node_types.cpu_worker.resources.CPU must be a non-negative number"),
        (("  type: local", "  kind: local"), "line 3: provider.type is missing"),
        (("idle_timeout_s: 5", "idle_timeout: 5"), "line 7: idle_timeout is not a known key"),
        (("    labels: {kind: gpu}", "    labels: {kind: 3}"), "line 18: node_types.gpu_worker.labels.kind must be a string"),
        (("cluster_name: demo", "cluster_name: [demo"), "cluster.yaml, line 2: not valid YAML"),
    ],
)
def test_a_bad_config_names_the_key_and_its_line(change: tuple[str, str], message: str) -> None:
    text = GOOD.replace(*change, 1)
    assert text != GOOD
    with pytest.raises(ClusterConfigError) as excinfo:
        parse_config(text, "cluster.yaml")
    assert message in str(excinfo.value)


def test_a_config_that_is_not_a_mapping_says_what_it_should_be() -> None:
    with pytest.raises(ClusterConfigError, match="must be a mapping of keys"):
        parse_config("- just\n- a list\n", "c.yaml")
