"""The head's Kubernetes manifests, rendered from a cluster config.

For a config whose ``provider.type`` is ``kubernetes`` (options: ``namespace``, default
"default"; ``image``, an image with cluster installed, required), ``render`` returns:
- a Secret holding the cluster token;
- a ConfigMap holding the cluster config;
- a ServiceAccount, a Role that may only create/get/list/watch/delete pods, and a
  RoleBinding;
- the head Deployment: one pod running ``cluster start --head --block`` with the autoscaler,
  sized by the head node type's resources and labelled for the Service;
- a Service for the cluster port and the HTTP API.

Everything carries the label ``cluster.dev/name: <cluster_name>``, so it can all be found and
removed together. ``validate`` checks each object against the official client's models of
the Kubernetes API: a field those models do not know fails.
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

import yaml
from cluster_autoscaler.config import ClusterConfig
from cluster_autoscaler.errors import ClusterConfigError

NAME_LABEL = "cluster.dev/name"
ROLE_LABEL = "cluster.dev/role"
CLUSTER_PORT = 6380
API_PORT = 8265
CONFIG_PATH = "/etc/cluster/cluster.yaml"
_KINDS = {  # kind -> the official client's model of it
    "Secret": "V1Secret", "ConfigMap": "V1ConfigMap", "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role", "RoleBinding": "V1RoleBinding", "Deployment": "V1Deployment", "Service": "V1Service",
}


def _quantity(resource: str, amount: float) -> str:
    if resource == "CPU":
        return f"{int(amount * 1000)}m" if amount != int(amount) else str(int(amount))
    return str(int(amount)) if amount == int(amount) else str(amount)


def render(config: ClusterConfig, config_text: str, *, token: str | None = None) -> list[dict[str, Any]]:
    """The manifests for ``config`` (``config_text``: the YAML it came from, stored as is)."""
    if config.provider.type != "kubernetes":
        raise ClusterConfigError(f"provider.type is {config.provider.type!r}; `cluster k8s` renders manifests "
                                 "for provider type 'kubernetes'")
    options = config.provider.options
    image = options.get("image")
    if not isinstance(image, str) or not image:
        raise ClusterConfigError("provider.image is missing: the container image to run, one with cluster "
                                 "installed (e.g. built FROM python:3.11 with `pip install cluster-core cluster-k8s`)")
    namespace = options.get("namespace", "default")
    name = config.cluster_name
    labels = {NAME_LABEL: name}
    head_labels = {**labels, ROLE_LABEL: "head"}
    token = token or secrets.token_hex(32)

    def meta(suffix: str, extra: dict | None = None) -> dict:
        return {"name": f"{name}-{suffix}", "namespace": namespace, "labels": {**labels, **(extra or {})}}

    head_type = config.node_types[config.head_node_type]
    cpus = head_type.resources.get("CPU", 1.0)
    extra = {k: v for k, v in head_type.resources.items() if k not in ("CPU", "GPU", "memory")}
    requests = {"cpu": _quantity("CPU", cpus)}
    if head_type.resources.get("memory"):
        requests["memory"] = _quantity("memory", head_type.resources["memory"])
    command = ["cluster", "start", "--head", "--block", "--host", "0.0.0.0", "--port", str(CLUSTER_PORT),
               "--dashboard-host", "0.0.0.0", "--dashboard-port", str(API_PORT), "--num-cpus", f"{cpus:g}",
               "--autoscaling-config", CONFIG_PATH]
    if extra:
        import json

        command += ["--resources", json.dumps(extra)]
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta("token"), "type": "Opaque",
         "data": {"token": base64.b64encode(token.encode()).decode()}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("config"), "data": {"cluster.yaml": config_text}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("head")},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta("head"),
         "rules": [{"apiGroups": [""], "resources": ["pods"],
                    "verbs": ["create", "get", "list", "watch", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta("head"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{name}-head"},
         "subjects": [{"kind": "ServiceAccount", "name": f"{name}-head", "namespace": namespace}]},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("head", {ROLE_LABEL: "head"}),
         "spec": {
             "replicas": 1,
             "selector": {"matchLabels": head_labels},
             "template": {
                 "metadata": {"labels": {**head_labels, **dict(head_type.labels)}},
                 "spec": {
                     "serviceAccountName": f"{name}-head",
                     "containers": [{
                         "name": "head",
                         "image": image,
                         "command": command,
                         "env": [{"name": "CLUSTER_TOKEN", "valueFrom": {"secretKeyRef": {
                             "name": f"{name}-token", "key": "token"}}}],
                         "ports": [{"name": "cluster", "containerPort": CLUSTER_PORT},
                                   {"name": "http", "containerPort": API_PORT}],
                         "resources": {"requests": requests, "limits": dict(requests)},
                         "volumeMounts": [{"name": "config", "mountPath": "/etc/cluster", "readOnly": True}],
                     }],
                     "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}}],
                 },
             },
         }},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta("head"),
         "spec": {"selector": head_labels,
                  "ports": [{"name": "cluster", "port": CLUSTER_PORT, "targetPort": "cluster"},
                            {"name": "http", "port": API_PORT, "targetPort": "http"}]}},
    ]


def validate(manifest: dict[str, Any]) -> None:
    """Raise ValueError naming the problem if the official client's model of this kind does not
    read ``manifest`` back field for field (an unknown or misplaced field, a wrong type)."""
    from kubernetes import client

    model = _KINDS.get(manifest.get("kind", ""))
    if model is None:
        raise ValueError(f"unknown kind {manifest.get('kind')!r}")
    api = client.ApiClient()
    try:
        obj = api._ApiClient__deserialize(manifest, model)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{manifest['kind']} {manifest['metadata'].get('name')}: {exc}") from None
    back = api.sanitize_for_serialization(obj)
    if back != manifest:
        raise ValueError(f"{manifest['kind']} {manifest['metadata'].get('name')}: fields the Kubernetes API does "
                         f"not know, or of the wrong shape: {_difference(manifest, back)}")


def _difference(want: Any, got: Any, path: str = "") -> str:
    if isinstance(want, dict) and isinstance(got, dict):
        for key in want:
            if key not in got:
                return f"{path}.{key}".lstrip(".")
            diff = _difference(want[key], got[key], f"{path}.{key}")
            if diff:
                return diff
        return ""
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        for i, (a, b) in enumerate(zip(want, got, strict=True)):
            diff = _difference(a, b, f"{path}[{i}]")
            if diff:
                return diff
        return ""
    return "" if want == got else (path.lstrip(".") or "(the object)")


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(manifests, sort_keys=False)
