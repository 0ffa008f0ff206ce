"""The head's manifests: complete, minimal in their rights, and valid for the Kubernetes API."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import pytest
import yaml
from cluster_autoscaler.config import parse_config
from cluster_autoscaler.errors import ClusterConfigError
from cluster_k8s.manifests import Options, pod_name, render, validate, worker_pod

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
    assert by_kind["Role"]["rules"] == [  # pods only, nothing else in the namespace
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]
    pod = by_kind["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "example.org/cluster:0.1.0"
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4000000000"}
    assert "--autoscaling-config" in container["command"] and "--block" in container["command"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "demo-token", "key": "token"}
    assert env["CLUSTER_K8S_POD_UID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.uid"  # owner of workers
    assert container["command"][container["command"].index("--object-store-memory") + 1] == "1200000000"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert json.loads(container["command"][container["command"].index("--labels") + 1]) == {"tier": "control"}
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


def test_a_worker_pod_has_its_node_type_s_template_resources_and_the_token_from_the_secret() -> None:
    config = parse_config(CONFIG.replace("  worker: {resources: {CPU: 4}, max_workers: 3}", """\
  worker:
    resources: {CPU: 1.5, GPU: 1, memory: 2000000000, accel: 2}
    labels: {kind: gpu}
    node_config:
      pod:
        metadata: {labels: {team: ml}}
        spec:
          tolerations: [{key: gpu, operator: Exists}]
          containers: [{name: node, env: [{name: MY_VAR, value: x}]}]
"""))
    worker = config.node_types["worker"]
    name = pod_name(config, worker, "req-1", 0)
    assert name == pod_name(config, worker, "req-1", 0) != pod_name(config, worker, "req-2", 0)
    pod = worker_pod(config, worker, name, "req-1/0", "10.0.0.5:6380", owner={"name": "demo-head-x", "uid": "u1"})
    validate(pod)
    assert pod["metadata"]["labels"] == {"team": "ml", "cluster.dev/name": "demo", "cluster.dev/role": "worker",
                                         "cluster.dev/node-type": "worker"}
    assert pod["metadata"]["annotations"]["cluster.dev/request-id"] == "req-1/0"
    assert pod["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "name": "demo-head-x",
                                                   "uid": "u1"}]
    assert pod["spec"]["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"] == {"cpu": "1500m", "memory": "2000000000", "nvidia.com/gpu": "1"}
    command = container["command"]
    assert command[:4] == ["cluster", "start", "--address", "10.0.0.5:6380"]
    assert json.loads(command[command.index("--resources") + 1]) == {"memory": 2000000000, "accel": 2}
    assert json.loads(command[command.index("--labels") + 1]) == {"kind": "gpu", "cluster.dev/instance": name}
    assert [e["name"] for e in container["env"]] == ["MY_VAR", "CLUSTER_POD_IP", "CLUSTER_TOKEN"]


def test_bad_options_and_templates_are_refused_naming_the_key() -> None:
    def refused(old: str, new: str, match: str) -> None:
        with pytest.raises(ClusterConfigError, match=match):
            render(parse_config(CONFIG.replace(old, new)), CONFIG)

    refused("namespace: jobs", "namespaces: jobs", r"provider\.namespaces is not an option.*namespace")
    refused("namespace: jobs", "namespace: Jobs_1", "not a Kubernetes namespace name")
    refused("namespace: jobs", "port: '6380'", r"provider\.port must be a number")
    refused("cluster_name: demo", "cluster_name: My_Cluster", "must be a Kubernetes name")
    refused("max_workers: 3}", "max_workers: 3, node_config: {instance_type: m5}}",
            r"node_config\.instance_type is not known to the kubernetes provider")
    refused("max_workers: 3}", "max_workers: 3, node_config: {pod: {spec: {containers: [{imagee: x}]}}}}",
            r"imagee")
    assert Options.of(parse_config(CONFIG)).listen_host == "0.0.0.0"


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
