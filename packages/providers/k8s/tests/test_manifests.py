"""The head's manifests: complete, minimal in their rights, and valid for the Kubernetes API."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest
import yaml
from cluster_autoscaler.config import parse_config
from cluster_autoscaler.errors import ClusterConfigError
from cluster_k8s.manifests import render, validate

CONFIG = """\
cluster_name: demo
provider: {type: kubernetes, namespace: jobs, image: example.org/cluster:0.1.0}
head_node_type: head
node_types:
  head: {resources: {CPU: 2, memory: 4000000000}, labels: {tier: control}}
  worker: {resources: {CPU: 4}, max_workers: 3}
"""


def test_every_manifest_is_rendered_labelled_and_valid_for_the_api() -> None:
    docs = render(parse_config(CONFIG), CONFIG, token="secret-token")
    kinds = [d["kind"] for d in docs]
    assert kinds == ["Secret", "ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service"]
    for doc in docs:
        validate(doc)  # the official client's models read each one back field for field
        assert doc["metadata"]["namespace"] == "jobs"
        assert doc["metadata"]["labels"]["cluster.dev/name"] == "demo"
    by_kind = {d["kind"]: d for d in docs}
    assert base64.b64decode(by_kind["Secret"]["data"]["token"]) == b"secret-token"
    assert by_kind["ConfigMap"]["data"]["cluster.yaml"] == CONFIG
    (rule,) = by_kind["Role"]["rules"]
    assert rule == {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]}
    pod = by_kind["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "example.org/cluster:0.1.0"
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4000000000"}
    assert "--autoscaling-config" in container["command"] and "--block" in container["command"]
    assert container["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "demo-token", "key": "token"}
    assert pod["metadata"]["labels"]["tier"] == "control"
    assert pod["spec"]["serviceAccountName"] == by_kind["RoleBinding"]["subjects"][0]["name"] == "demo-head"
    assert by_kind["Service"]["spec"]["selector"] == by_kind["Deployment"]["spec"]["selector"]["matchLabels"]
    assert {p["port"] for p in by_kind["Service"]["spec"]["ports"]} == {6380, 8265}


def test_validation_catches_a_field_the_api_does_not_know() -> None:
    docs = render(parse_config(CONFIG), CONFIG)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(ValueError, match=r"spec\.template\.spec\.containers\[0\]\.imagePullPolicyy"):
        validate(deployment)


def test_a_config_for_another_provider_or_without_an_image_is_refused_with_the_fix() -> None:
    with pytest.raises(ClusterConfigError, match="provider type 'kubernetes'"):
        render(parse_config(CONFIG.replace("type: kubernetes", "type: local")), CONFIG)
    with pytest.raises(ClusterConfigError, match=r"provider\.image is missing"):
        render(parse_config(CONFIG.replace(", image: example.org/cluster:0.1.0", "")), CONFIG)


def test_cluster_k8s_manifests_prints_yaml_for_kubectl(tmp_path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text(CONFIG)
    out = subprocess.run([sys.executable, "-m", "cluster", "k8s", "manifests", str(config)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert [d["kind"] for d in docs][-2:] == ["Deployment", "Service"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("type: kubernetes", "type: local"))
    refused = subprocess.run([sys.executable, "-m", "cluster", "k8s", "manifests", str(bad)], capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode != 0 and "provider type 'kubernetes'" in refused.stderr
    assert "Traceback" not in refused.stderr
