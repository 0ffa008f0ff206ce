"""Where the tests find a Kubernetes API.

``kube`` is parametrized: "fake" is ``fakekube.FakeKube`` (kmock's API server over real HTTP
on 127.0.0.1, with our scheduler, kubelet and controllers behind it; pods are processes on
this machine), always run. "real" is the cluster ``KUBECONFIG`` points at, marked
``real_kubernetes`` and skipped without ``KUBECONFIG``; each test gets a namespace of its own,
deleted afterwards. Pods there need an image with cluster installed:
``CLUSTER_K8S_TEST_IMAGE``. Run only those with
``KUBECONFIG=... CLUSTER_K8S_TEST_IMAGE=... pytest -m real_kubernetes packages/providers/k8s``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubetarget import KubeTarget


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "real_kubernetes: runs against the cluster KUBECONFIG points at")


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.real_kubernetes)])
def kube(request: Any, tmp_path: Path) -> Iterator[KubeTarget]:
    if request.param == "fake":
        from fakekube import FakeKube

        root = tmp_path / "kube"
        with FakeKube(root, cpu="4", memory="8Gi") as fake:
            yield KubeTarget(str(fake.kubeconfig), "default", "cluster:test", "127.0.0.1", fake)
        assert not fake.pids(), f"pods' processes left running: {fake.pids()}"
        _no_process_left_under(root)
        return
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        pytest.skip("real_kubernetes: set KUBECONFIG (and CLUSTER_K8S_TEST_IMAGE) to run this against a cluster")
    image = os.environ.get("CLUSTER_K8S_TEST_IMAGE")
    if not image:
        pytest.skip("real_kubernetes: set CLUSTER_K8S_TEST_IMAGE to an image with cluster-core and cluster-k8s")
    from kubernetes import client, config

    core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig, persist_config=False))
    namespace = f"cluster-test-{secrets.token_hex(4)}"
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        yield KubeTarget(kubeconfig, namespace, image, "0.0.0.0")
    finally:
        core.delete_namespace(namespace)


def _no_process_left_under(root: Path) -> None:
    """A pod's daemon that outlives its pod would live on after a real container's end too
    (in the fake, nothing else would stop it): fail, after stopping them."""
    import signal

    import psutil
    from kubetarget import wait_until

    def left() -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if any(str(root) in part for part in proc.info["cmdline"] or []):
                found.append(proc)
        return found

    try:
        wait_until(lambda: not left(), "every process of the fake's pods gone", timeout=15)
    except AssertionError:
        stray = left()
        for proc in stray:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        raise AssertionError(f"processes outlived their pods: {[p.pid for p in stray]}") from None
