"""What cluster puts into Kubernetes, rendered from a cluster config.

For a config whose ``provider.type`` is ``kubernetes`` (options: ``Options``), ``render``
returns the head's manifests:
- a Secret holding the cluster token (worker pods read it from there too);
- a ConfigMap holding the cluster config;
- a ServiceAccount, a Role that may only create/get/list/watch/delete pods (and read their
  logs, for launch errors), and a RoleBinding;
- the head Deployment: one pod running ``cluster start --head --block`` with the autoscaler,
  sized by the head node type's resources;
- a Service for the cluster port and the HTTP API.

``worker_pod`` renders the pod of one worker node, which the provider creates.

A node type's ``node_config`` may hold ``pod:``, a partial Pod manifest (labels,
annotations, nodeSelector, tolerations, the container's image or env, volumes...). What
cluster needs is laid over it: the container's command, the token, the resources.

Everything carries the label ``cluster.dev/name: <cluster_name>``, so it can all be found and
removed together. ``validate`` checks an object against the official client's models of the
Kubernetes API: a field those models do not know fails.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
import secrets
from typing import Any

import attrs
import yaml
from cluster_autoscaler.config import ClusterConfig, NodeType
from cluster_autoscaler.errors import ClusterConfigError
from cluster_autoscaler.provider import INSTANCE_LABEL

NAME_LABEL = "cluster.dev/name"
ROLE_LABEL = "cluster.dev/role"  # head | worker
TYPE_LABEL = "cluster.dev/node-type"
REQUEST_ANNOTATION = "cluster.dev/request-id"
CONFIG_DIR = "/etc/cluster"
CONTAINER = "node"
_KINDS = {  # kind -> the official client's model of it
    "Secret": "V1Secret", "ConfigMap": "V1ConfigMap", "ServiceAccount": "V1ServiceAccount",
    "Role": "V1Role", "RoleBinding": "V1RoleBinding", "Deployment": "V1Deployment", "Service": "V1Service",
    "Pod": "V1Pod",
}


@attrs.frozen
class Options:
    """``provider:`` options of the kubernetes provider."""

    image: str  # an image with cluster-core and cluster-k8s installed
    namespace: str = "default"
    image_pull_policy: str | None = None
    listen_host: str = "0.0.0.0"  # inside a pod, its own network; a test may say 127.0.0.1
    port: int = 6380  # the head's cluster port
    dashboard_port: int = 8265  # the head's HTTP API (jobs)
    kubeconfig: str | None = None  # for cluster up/down, and a head outside Kubernetes (in a pod: its account)
    context: str | None = None
    unschedulable_timeout_s: float = 30.0  # a worker pod unschedulable this long is a launch error

    @classmethod
    def of(cls, config: ClusterConfig) -> Options:
        if config.provider.type != "kubernetes":
            raise ClusterConfigError(f"provider.type is {config.provider.type!r}, not 'kubernetes'")
        raw = dict(config.provider.options)
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ClusterConfigError(f"provider.{unknown[0]} is not an option of the kubernetes provider; "
                                     f"its options are: {', '.join(sorted(known))}")
        image = raw.get("image")
        if not isinstance(image, str) or not image:
            raise ClusterConfigError("provider.image is missing: the container image to run, one with cluster "
                                     "installed (e.g. built FROM python:3.11 with `pip install cluster-core "
                                     "cluster-k8s`)")
        for key, kind in (("port", int), ("dashboard_port", int), ("unschedulable_timeout_s", (int, float))):
            if key in raw and (not isinstance(raw[key], kind) or isinstance(raw[key], bool)):
                raise ClusterConfigError(f"provider.{key} must be a number, not {raw[key]!r}")
        for key in ("namespace", "listen_host", "kubeconfig", "context", "image_pull_policy"):
            if key in raw and not isinstance(raw[key], str):
                raise ClusterConfigError(f"provider.{key} must be a string, not {raw[key]!r}")
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", raw.get("namespace", "default")):
            raise ClusterConfigError(f"provider.namespace {raw['namespace']!r} is not a Kubernetes namespace name "
                                     "(lowercase letters, digits and '-')")
        return cls(**raw)


def check_names(config: ClusterConfig) -> None:
    """The cluster's name becomes part of object names, and node type names label values."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", config.cluster_name) or len(config.cluster_name) > 30:
        raise ClusterConfigError(f"cluster_name {config.cluster_name!r} must be a Kubernetes name for the "
                                 "kubernetes provider: at most 30 lowercase letters, digits and '-'")
    for name in config.node_types:
        if not re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", name):
            raise ClusterConfigError(f"node type name {name!r} must be a Kubernetes label value for the kubernetes "
                                     "provider: letters, digits, '-', '_' and '.', at most 63")


def check_templates(config: ClusterConfig) -> None:
    """Names and every worker type's pod, checked now rather than at its first launch."""
    check_names(config)
    for node_type in config.worker_types:
        try:
            validate(worker_pod(config, node_type, "check", "check", "head:0"))
        except ValueError as exc:
            raise ClusterConfigError(f"node_types.{node_type.name}.node_config.pod makes an invalid pod: "
                                     f"{exc}") from None


def _quantity(resource: str, amount: float) -> str:
    if resource == "CPU":
        return f"{int(amount * 1000)}m" if amount != int(amount) else str(int(amount))
    return str(int(amount)) if amount == int(amount) else str(amount)


def resources_of(node_type: NodeType) -> dict[str, dict[str, str]]:
    """Requests and limits (equal: the node gets what it says it has) for a node type."""
    wanted: dict[str, str] = {}
    for ours, theirs in (("CPU", "cpu"), ("memory", "memory"), ("GPU", "nvidia.com/gpu")):
        if node_type.resources.get(ours):
            wanted[theirs] = _quantity(ours, node_type.resources[ours])
    return {"requests": dict(wanted), "limits": dict(wanted)} if wanted else {}


def _pod_template(node_type: NodeType) -> dict[str, Any]:
    extra = sorted(set(node_type.node_config) - {"pod"})
    if extra:
        raise ClusterConfigError(f"node_types.{node_type.name}.node_config.{extra[0]} is not known to the kubernetes "
                                 "provider; it reads node_config.pod, a partial Pod manifest")
    pod = copy.deepcopy(dict(node_type.node_config.get("pod") or {}))
    if not isinstance(pod, dict) or not isinstance(pod.get("metadata", {}), dict) or \
            not isinstance(pod.get("spec", {}), dict):
        raise ClusterConfigError(f"node_types.{node_type.name}.node_config.pod must be a Pod manifest: a mapping "
                                 "with metadata and spec")
    return pod


def _node_args(node_type: NodeType, options: Options) -> list[str]:
    """`cluster start` arguments for a node of this type, inside its pod."""
    resources = dict(node_type.resources)
    args = ["--host", options.listen_host, "--node-ip", "$(CLUSTER_POD_IP)",
            "--num-cpus", f"{resources.pop('CPU', 1.0):g}"]
    gpus = resources.pop("GPU", 0.0)
    if gpus:
        args += ["--num-gpus", f"{gpus:g}"]
    memory = resources.get("memory")  # also stays a resource tasks can ask for
    if memory:  # the pod's memory, not the machine's: the store takes 30% of it, as on a host
        args += ["--object-store-memory", str(int(memory * 0.3))]
    if resources:
        args += ["--resources", json.dumps(resources)]
    return args


def _pod(node_type: NodeType, options: Options, labels: dict[str, str], command: list[str],
         env: list[dict], *, ports: list[dict] | None = None, service_account: str | None = None,
         volumes: list[tuple[dict, dict]] = ()) -> dict[str, Any]:
    """A pod (metadata and spec) for a node of ``node_type``: its template with ours laid over."""
    pod = _pod_template(node_type)
    metadata = pod.setdefault("metadata", {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
    spec = pod.setdefault("spec", {})
    containers = spec.setdefault("containers", [{}])
    container = next((c for c in containers if c.get("name") == CONTAINER), containers[0])
    container["name"] = CONTAINER
    container.setdefault("image", options.image)
    if options.image_pull_policy:
        container.setdefault("imagePullPolicy", options.image_pull_policy)
    container["command"] = command
    container.pop("args", None)
    container["env"] = [*(container.get("env") or []), *env]
    if not container.get("resources"):
        container["resources"] = resources_of(node_type)
    if ports:
        container["ports"] = ports
    # /dev/shm of a container is 64 MB; the object store lives there.
    mounts = [({"name": "dshm", "mountPath": "/dev/shm"}, {"name": "dshm", "emptyDir": {"medium": "Memory"}}),
              *volumes]
    container["volumeMounts"] = [*(container.get("volumeMounts") or []), *(m for m, _ in mounts)]
    spec["volumes"] = [*(spec.get("volumes") or []), *(v for _, v in mounts)]
    if service_account:
        spec["serviceAccountName"] = service_account
    return pod


def _downward(name: str, field: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field}}}


def _token_env(cluster_name: str) -> dict:
    return {"name": "CLUSTER_TOKEN", "valueFrom": {"secretKeyRef": {"name": f"{cluster_name}-token", "key": "token"}}}


def render(config: ClusterConfig, config_text: str, *, token: str | None = None) -> list[dict[str, Any]]:
    """The head's manifests for ``config`` (``config_text``: the YAML it came from, stored as is)."""
    if config.provider.type != "kubernetes":
        raise ClusterConfigError(f"provider.type is {config.provider.type!r}; `cluster k8s` renders manifests "
                                 "for provider type 'kubernetes'")
    options = Options.of(config)
    check_templates(config)
    namespace = options.namespace
    name = config.cluster_name
    labels = {NAME_LABEL: name}
    head_labels = {**labels, ROLE_LABEL: "head"}
    token = token or secrets.token_hex(32)

    def meta(suffix: str, extra: dict | None = None) -> dict:
        return {"name": f"{name}-{suffix}", "namespace": namespace, "labels": {**labels, **(extra or {})}}

    head_type = config.node_types[config.head_node_type]
    command = ["cluster", "start", "--head", "--block", "--port", str(options.port),
               "--dashboard-host", options.listen_host, "--dashboard-port", str(options.dashboard_port),
               "--autoscaling-config", f"{CONFIG_DIR}/cluster.yaml", *_node_args(head_type, options)]
    if head_type.labels:
        command += ["--labels", json.dumps(dict(head_type.labels))]
    env = [_downward("CLUSTER_POD_IP", "status.podIP"), _downward("CLUSTER_K8S_POD_NAME", "metadata.name"),
           _downward("CLUSTER_K8S_POD_UID", "metadata.uid"), _token_env(name)]
    config_volume = ({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                     {"name": "config", "configMap": {"name": f"{name}-config"}})
    head_pod = _pod(head_type, options, head_labels, command, env,
                    ports=[{"name": "cluster", "containerPort": options.port},
                           {"name": "http", "containerPort": options.dashboard_port}],
                    service_account=f"{name}-head", volumes=[config_volume])
    head_pod["spec"]["containers"][0]["readinessProbe"] = {"tcpSocket": {"port": "cluster"}, "periodSeconds": 5}
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": meta("token"), "type": "Opaque",
         "data": {"token": base64.b64encode(token.encode()).decode()}},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("config"), "data": {"cluster.yaml": config_text}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("head")},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta("head"),
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]},
                   {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta("head"),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{name}-head"},
         "subjects": [{"kind": "ServiceAccount", "name": f"{name}-head", "namespace": namespace}]},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("head", {ROLE_LABEL: "head"}),
         "spec": {"replicas": 1, "selector": {"matchLabels": head_labels}, "template": head_pod}},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta("head"),
         "spec": {"selector": head_labels,
                  "ports": [{"name": "cluster", "port": options.port, "targetPort": "cluster"},
                            {"name": "http", "port": options.dashboard_port, "targetPort": "http"}]}},
    ]


def pod_name(config: ClusterConfig, node_type: NodeType, request_id: str, index: int) -> str:
    """The name of the ``index``-th pod of a launch request: the same request, the same names."""
    digest = hashlib.sha256(request_id.encode()).hexdigest()[:8]
    kind = re.sub(r"[^a-z0-9-]+", "-", node_type.name.lower()).strip("-")[:20] or "node"
    return f"{config.cluster_name}-{kind}-{digest}-{index}"


def worker_pod(config: ClusterConfig, node_type: NodeType, name: str, request_id: str, head_address: str,
               owner: dict | None = None) -> dict[str, Any]:
    """The pod of one worker node: it joins ``head_address`` with the token from the Secret."""
    options = Options.of(config)
    labels = {NAME_LABEL: config.cluster_name, ROLE_LABEL: "worker", TYPE_LABEL: node_type.name}
    node_labels = {**node_type.labels, INSTANCE_LABEL: name}
    command = ["cluster", "start", "--address", head_address, "--port", "0", "--block",
               *_node_args(node_type, options), "--labels", json.dumps(node_labels)]
    pod = _pod(node_type, options, labels, command, [_downward("CLUSTER_POD_IP", "status.podIP"),
                                                     _token_env(config.cluster_name)])
    pod["apiVersion"], pod["kind"] = "v1", "Pod"
    pod["metadata"].update(name=name, namespace=options.namespace)
    pod["metadata"]["annotations"] = {**(pod["metadata"].get("annotations") or {}), REQUEST_ANNOTATION: request_id}
    if owner:  # the head's pod: when it goes, Kubernetes removes its workers
        pod["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", **owner}]
    return {"apiVersion": pod.pop("apiVersion"), "kind": pod.pop("kind"), **pod}


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
