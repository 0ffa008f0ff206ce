"""``cluster up CONFIG`` and ``cluster down CONFIG`` for provider type ``kubernetes``.

Up creates the head's manifests (``manifests.render``) through the API, then waits, saying
what it waits for, until the head pod is Running and Ready and each node type's
``min_workers`` pods are, which the autoscaler in the head creates. Down removes the head
Deployment first (so nothing starts again), then every pod of the cluster, then the rest,
and waits until the pods are gone. Both find the cluster's objects by name and by the label
``cluster.dev/name``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import trio
from cluster_autoscaler.config import ClusterConfig
from cluster_autoscaler.errors import ClusterConfigError

from cluster_k8s.kube import api_client, describe, status_of
from cluster_k8s.manifests import NAME_LABEL, ROLE_LABEL, TYPE_LABEL, Options, render, validate
from cluster_k8s.provider import log_tail, pod_problem, pod_ready

_APIS = {  # kind -> (the client's API class, its method suffix)
    "Secret": ("CoreV1Api", "secret"), "ConfigMap": ("CoreV1Api", "config_map"),
    "ServiceAccount": ("CoreV1Api", "service_account"), "Service": ("CoreV1Api", "service"),
    "Role": ("RbacAuthorizationV1Api", "role"), "RoleBinding": ("RbacAuthorizationV1Api", "role_binding"),
    "Deployment": ("AppsV1Api", "deployment"),
}
POLL_S = 0.5


def _say(text: str) -> None:
    click.echo(text, err=True)


class _Kube:
    """The few calls up and down make, each turning API errors into ClickExceptions."""

    def __init__(self, options: Options) -> None:
        from kubernetes import client

        try:
            self.api = api_client(options)
        except ClusterConfigError as exc:
            raise click.ClickException(str(exc)) from None
        self.namespace = options.namespace
        self.client = client
        self.core = client.CoreV1Api(self.api)

    def call(self, kind: str, verb: str, *args: Any, **kwargs: Any) -> Any:
        api_class, suffix = _APIS[kind]
        return getattr(getattr(self.client, api_class)(self.api), f"{verb}_namespaced_{suffix}")(*args, **kwargs)

    def pods(self, selector: str) -> list[Any]:
        try:
            return self.core.list_namespaced_pod(self.namespace, label_selector=selector).items
        except Exception as exc:
            raise click.ClickException(f"listing pods in namespace {self.namespace} failed: "
                                       f"{describe(exc, self.api)}") from None


def _options(config: ClusterConfig) -> Options:
    try:
        return Options.of(config)
    except ClusterConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _manifests(config: ClusterConfig, config_path: str) -> list[dict]:
    """What up creates (and so what down removes), checked against the API's models."""
    try:
        docs = render(config, Path(config_path).read_text())
        for doc in docs:
            validate(doc)
    except (ClusterConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    return docs


def up(config: ClusterConfig, config_path: str, timeout: float) -> None:
    options = _options(config)
    docs = _manifests(config, config_path)
    kube = _Kube(options)
    name = config.cluster_name
    _say(f"Creating cluster {name!r} in namespace {options.namespace} (Kubernetes API {kube.api.configuration.host})...")
    try:
        kube.call("Deployment", "read", f"{name}-head", options.namespace)
    except Exception as exc:
        if status_of(exc) != 404:
            raise click.ClickException(f"asking for the head Deployment {name}-head failed: "
                                       f"{describe(exc, kube.api)}") from None
    else:
        raise click.ClickException(f"cluster {name!r} is already up in namespace {options.namespace} (Deployment "
                                   f"{name}-head); `cluster down {config_path}` removes it")
    for doc in docs:
        kind, obj = doc["kind"], doc["metadata"]["name"]
        try:
            try:
                kube.call(kind, "create", options.namespace, doc)
                _say(f"  created {kind} {obj}")
            except Exception as exc:
                if status_of(exc) != 409:
                    raise
                kube.call(kind, "replace", obj, options.namespace, doc)  # a leftover of an earlier try
                _say(f"  replaced {kind} {obj} (left from before)")
        except Exception as exc:
            raise click.ClickException(f"creating {kind} {obj} failed: {describe(exc, kube.api)}. What was "
                                       f"created stays; `cluster down {config_path}` removes it") from None
    deadline = time.monotonic() + timeout
    _wait_for_head(kube, config, options, deadline, config_path)
    _wait_for_min_workers(kube, config, deadline, config_path)
    ns = options.namespace
    _say(f"Cluster {name!r} is up.")
    click.echo(
        f"Reach it from this machine:\n"
        f"  kubectl -n {ns} port-forward svc/{name}-head {options.port} {options.dashboard_port} &\n"
        f"  export CLUSTER_TOKEN=$(kubectl -n {ns} get secret {name}-token -o jsonpath='{{.data.token}}' "
        f"| base64 -d)\n"
        f"  cluster job submit --address http://127.0.0.1:{options.dashboard_port} -- python my_script.py\n"
        f"See it: kubectl -n {ns} get pods -l {NAME_LABEL}={name}; stop it: cluster down {config_path}")


def _wait_for_head(kube: _Kube, config: ClusterConfig, options: Options, deadline: float, config_path: str) -> Any:
    selector = f"{NAME_LABEL}={config.cluster_name},{ROLE_LABEL}=head"
    said = None
    while True:
        pods = [p for p in kube.pods(selector) if not p.metadata.deletion_timestamp]
        for pod in pods:
            if pod_ready(pod):
                _say(f"Head pod {pod.metadata.name} is ready (at {pod.status.pod_ip}).")
                return pod
            problem = pod_problem(pod, options.unschedulable_timeout_s)
            if problem:
                tail = trio.run(log_tail, kube.core, pod.metadata.name, options.namespace, 20)
                raise click.ClickException(
                    f"the head pod {pod.metadata.name} cannot start: {problem[1]}"
                    + (f"\nIts log ends:\n{tail}" if tail else "")
                    + f"\nWhat was created stays, for a look (kubectl -n {options.namespace} describe pod "
                    f"{pod.metadata.name}); `cluster down {config_path}` removes it")
        state = "; ".join(f"{p.metadata.name} {_phase(p)}" for p in pods) or "no pod yet"
        if state != said:
            _say(f"Waiting for the head pod: {state}")
            said = state
        if time.monotonic() > deadline:
            raise click.ClickException(f"the head pod was not ready in time ({state}); `cluster down "
                                       f"{config_path}` removes what was created")
        time.sleep(POLL_S)


def _phase(pod: Any) -> str:
    """Pending (Unschedulable: ...), Pending (ContainerCreating), Running (not ready)..."""
    status = pod.status
    if status is None:
        return "Pending"
    for container in status.container_statuses or []:
        if container.state and container.state.waiting:
            return f"{status.phase} ({container.state.waiting.reason})"
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            return f"{status.phase} ({condition.reason}: {condition.message})"
    return status.phase + ("" if pod_ready(pod) or status.phase != "Running" else " (not ready)")


def _wait_for_min_workers(kube: _Kube, config: ClusterConfig, deadline: float, config_path: str) -> None:
    wanted = {t.name: t.min_workers for t in config.worker_types if t.min_workers}
    if not wanted:
        return
    selector = f"{NAME_LABEL}={config.cluster_name},{ROLE_LABEL}=worker"
    said = None
    while True:
        running: dict[str, int] = {}
        for pod in kube.pods(selector):
            if pod_ready(pod):
                kind = (pod.metadata.labels or {}).get(TYPE_LABEL, "?")
                running[kind] = running.get(kind, 0) + 1
        progress = ", ".join(f"{n} {min(running.get(n, 0), k)}/{k}" for n, k in sorted(wanted.items()))
        if progress != said:
            _say(f"Waiting for min_workers: {progress}")
            said = progress
        if all(running.get(n, 0) >= k for n, k in wanted.items()):
            return
        if time.monotonic() > deadline:
            raise click.ClickException(f"min_workers were not up in time ({progress}). The head is up; see why "
                                       f"with kubectl get pods -l {NAME_LABEL}={config.cluster_name} or cluster "
                                       f"status --explain through the head; `cluster down {config_path}` removes "
                                       "it all")
        time.sleep(POLL_S)


def down(config: ClusterConfig, config_path: str, timeout: float = 120.0) -> None:
    options = _options(config)
    kube = _Kube(options)
    name, ns = config.cluster_name, options.namespace
    _say(f"Removing cluster {name!r} from namespace {ns} (Kubernetes API {kube.api.configuration.host})...")
    docs = _manifests(config, config_path)
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    removed = _delete(kube, "Deployment", deployment["metadata"]["name"])  # first: nothing starts the head again
    pods = kube.pods(f"{NAME_LABEL}={name}")
    for pod in pods:
        try:
            kube.core.delete_namespaced_pod(pod.metadata.name, ns)
        except Exception as exc:
            if status_of(exc) != 404:
                raise click.ClickException(f"deleting pod {pod.metadata.name} failed: {describe(exc, kube.api)}") \
                    from None
    if pods:
        _say(f"  deleting {len(pods)} pod(s): {', '.join(sorted(p.metadata.name for p in pods))}")
    for doc in reversed(docs):  # then the rest, in the reverse of the order up made them
        if doc is not deployment:
            removed += _delete(kube, doc["kind"], doc["metadata"]["name"])
    deadline = time.monotonic() + timeout
    said = None
    while left := kube.pods(f"{NAME_LABEL}={name}"):
        if len(left) != said:
            _say(f"Waiting for {len(left)} pod(s) to stop...")
            said = len(left)
        if time.monotonic() > deadline:
            raise click.ClickException(f"{len(left)} pod(s) still there after {timeout:.0f}s; run cluster down "
                                       "again, or kubectl delete pods -l " f"{NAME_LABEL}={name}")
        time.sleep(POLL_S)
    if not removed and not pods:
        click.echo(f"Nothing of cluster {name!r} was found in namespace {ns}; nothing to do.")
    else:
        click.echo(f"Cluster {name!r} is down: {len(pods)} pod(s) and {removed} other object(s) removed.")


def _delete(kube: _Kube, kind: str, name: str) -> int:
    try:
        kube.call(kind, "delete", name, kube.namespace)
    except Exception as exc:
        if status_of(exc) == 404:
            return 0
        raise click.ClickException(f"deleting {kind} {name} failed: {describe(exc, kube.api)}") from None
    _say(f"  deleted {kind} {name}")
    return 1
