"""The kubernetes provider: each worker node is a pod.

- ``launch`` creates pods named after the request id (``manifests.pod_name``): creating one
  that exists answers 409, so a request sent twice launches once, from any process.
- ``non_terminated`` lists the cluster's worker pods by label selector. A pod is "running"
  once it is Running and Ready; its node joins the head with the label
  ``cluster.dev/instance: <pod name>``, which is how the autoscaler matches node and pod.
- ``poll_errors`` reads the pods' status: one that cannot be scheduled for
  ``unschedulable_timeout_s``, whose image cannot be pulled, whose container cannot be made
  or keeps crashing, or that failed, is a launch error with Kubernetes' reason (and, for a
  crash, the last lines of its log). The pod is then deleted, so it is reported once.
- ``terminate`` deletes pods, only those it lists as its own.

Run in the head's pod, worker pods carry an ownerReference to that pod, so Kubernetes removes
them when the head goes. The API is reached as ``kube.api_client`` says; its calls are
blocking, so they run in worker threads.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import structlog
import trio
from cluster_autoscaler.config import ClusterConfig, NodeType
from cluster_autoscaler.provider import Instance, ProviderContext, ProviderError

from cluster_k8s.kube import KubernetesUnavailable, api_client, describe, status_of
from cluster_k8s.manifests import (
    NAME_LABEL,
    REQUEST_ANNOTATION,
    ROLE_LABEL,
    TYPE_LABEL,
    Options,
    check_templates,
    pod_name,
    worker_pod,
)

log = structlog.get_logger("cluster.k8s")

# Waiting reasons that mean the container will not run without someone changing something.
_STUCK = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError",
          "CreateContainerError", "RunContainerError"}


class KubernetesProvider:
    def __init__(self, config: ClusterConfig, context: ProviderContext) -> None:
        self.config = config
        self.context = context
        self.options = Options.of(config)
        check_templates(config)
        self.namespace = self.options.namespace
        self.api = api_client(self.options)
        from kubernetes import client

        self.core = client.CoreV1Api(self.api)
        self.selector = f"{NAME_LABEL}={config.cluster_name},{ROLE_LABEL}=worker"
        pod, uid = os.environ.get("CLUSTER_K8S_POD_NAME"), os.environ.get("CLUSTER_K8S_POD_UID")
        self.owner = {"name": pod, "uid": uid} if pod and uid else None  # set in the head's pod
        self._errors: list[ProviderError] = []  # launches that failed to create their pods
        self._reported: set[str] = set()  # uids of failed pods already reported

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    # -- the contract --

    async def launch(self, node_type: NodeType, count: int, request_id: str) -> None:
        for i in range(count):
            name = pod_name(self.config, node_type, request_id, i)
            try:
                pod = worker_pod(self.config, node_type, name, f"{request_id}/{i}", self.context.head_address,
                                 self.owner)
                await self._call(self.core.create_namespaced_pod, self.namespace, pod)
                log.info("pod_created", pod=name, node_type=node_type.name, request_id=request_id)
            except Exception as exc:
                if status_of(exc) == 409:  # this request made it before: it launches once
                    continue
                message = f"creating pod {name} in namespace {self.namespace} failed: {describe(exc, self.api)}"
                log.warning("pod_create_failed", pod=name, error=message)
                self._errors.append(ProviderError(request_id, node_type.name, message, time.time()))
                return  # the rest of the request would fail the same way

    async def terminate(self, instance_ids: Sequence[str], request_id: str) -> None:
        ours = {pod.metadata.name for pod in await self._pods()}
        for name in instance_ids:
            if name not in ours:
                continue  # not ours (or gone already): never delete a stranger's pod
            try:
                await self._call(self.core.delete_namespaced_pod, name, self.namespace)
                log.info("pod_deleted", pod=name, request_id=request_id)
            except Exception as exc:
                if status_of(exc) != 404:
                    log.warning("pod_delete_failed", pod=name, error=describe(exc, self.api))

    async def non_terminated(self) -> dict[str, Instance]:
        instances = {}
        for pod in await self._pods():
            if pod.metadata.deletion_timestamp or pod.status is None or pod.status.phase in ("Succeeded", "Failed"):
                continue
            created = pod.metadata.creation_timestamp
            instances[pod.metadata.name] = Instance(
                pod.metadata.name, (pod.metadata.labels or {}).get(TYPE_LABEL, "?"),
                "running" if pod_ready(pod) else "pending", None,
                created.timestamp() if created else 0.0, (pod.metadata.annotations or {}).get(REQUEST_ANNOTATION, ""))
        return instances

    async def poll_errors(self) -> list[ProviderError]:
        errors, self._errors = self._errors, []
        try:
            pods = await self._pods()
        except KubernetesUnavailable:
            return errors  # non_terminated says so; the launch errors still count
        for pod in pods:
            if pod.metadata.uid in self._reported or pod.metadata.deletion_timestamp:
                continue
            problem = pod_problem(pod, self.options.unschedulable_timeout_s)
            if problem is None:
                continue
            name = pod.metadata.name
            crashed, problem = problem
            tail = await log_tail(self.core, name, self.namespace) if crashed else ""
            if tail:
                problem += f"; its last log lines:\n{tail}"
            self._reported.add(pod.metadata.uid)
            request = (pod.metadata.annotations or {}).get(REQUEST_ANNOTATION, "").rsplit("/", 1)[0]
            errors.append(ProviderError(request, (pod.metadata.labels or {}).get(TYPE_LABEL),
                                        f"pod {name}: {problem}", time.time()))
            log.warning("pod_failed", pod=name, problem=problem)
            await self.terminate([name], f"failed-{name}")  # so it neither lingers nor is reported again
        return errors

    # -- reading pods --

    async def _pods(self) -> list[Any]:
        try:
            listing = await self._call(self.core.list_namespaced_pod, self.namespace, label_selector=self.selector)
        except Exception as exc:
            raise KubernetesUnavailable(f"listing the worker pods of {self.config.cluster_name!r} in namespace "
                                        f"{self.namespace} failed: {describe(exc, self.api)}") from None
        return listing.items


def pod_problem(pod: Any, unschedulable_timeout_s: float) -> tuple[bool, str] | None:
    """(crashed, what is wrong) for a pod that will not run without someone changing something,
    or None."""
    status = pod.status
    if status is None:
        return None
    for container in status.container_statuses or []:
        waiting = container.state.waiting if container.state else None
        if waiting and waiting.reason in _STUCK:
            if waiting.reason == "CrashLoopBackOff":
                last = container.last_state.terminated if container.last_state else None
                code = f"exit code {last.exit_code}" if last else "it exits"
                return True, (f"its node daemon keeps exiting (CrashLoopBackOff: {code}, "
                              f"restarted {container.restart_count} times)")
            return False, f"{waiting.reason}: {waiting.message or 'no message'} (image {container.image})"
    if status.phase == "Failed":
        return True, f"the pod failed: {status.reason or ''} {status.message or ''}".rstrip()
    for condition in status.conditions or []:
        if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
            created = pod.metadata.creation_timestamp
            age = time.time() - created.timestamp() if created else 0.0
            if age >= unschedulable_timeout_s:
                return False, (f"Kubernetes cannot schedule it ({condition.message}); after {age:.0f}s this "
                               "counts as a failed launch")
    return None


def pod_ready(pod: Any) -> bool:
    status = pod.status
    return bool(status and status.phase == "Running" and
                any(c.type == "Ready" and c.status == "True" for c in status.conditions or []))


async def log_tail(core: Any, name: str, namespace: str, lines: int = 5, *, previous: bool = True) -> str:
    """The last lines a pod's container wrote ('' when they cannot be read)."""
    try:  # the raw body: kubernetes 36 renders a preloaded log as "b'...'" (kubernetes-client/python#2596)
        response = await trio.to_thread.run_sync(lambda: core.read_namespaced_pod_log(
            name, namespace, tail_lines=lines, previous=previous, _preload_content=False))
        return response.data.decode(errors="replace").strip()
    except Exception:
        return ""  # logs are a courtesy: no rights to read them, or none kept
