"""The kubernetes provider against an API server over HTTP (the fake, or a real cluster).

On the fake, pods are real processes: a worker pod's node daemon joins a real head here.
"""

from __future__ import annotations

import json

import pytest
import trio
import yaml
from cluster_autoscaler.config import ClusterConfig, parse_config
from cluster_autoscaler.errors import ClusterConfigError
from cluster_autoscaler.provider import ProviderContext, make_provider
from cluster_autoscaler.testing import KitTarget, ProviderConformance
from cluster_k8s.kube import KubernetesUnavailable
from cluster_k8s.provider import KubernetesProvider
from kubernetes import client
from kubetarget import KubeTarget, kubeconfig_of_nowhere, wait_until

from cluster.testing import LocalCluster

NODE_TYPES = {
    "head": {"resources": {"CPU": 1}},
    "small": {"resources": {"CPU": 1}, "max_workers": 4},
    "gpu": {"resources": {"CPU": 1, "memory": 500_000_000, "accel": 2}, "labels": {"kind": "gpu"},
            "node_config": {"pod": {"metadata": {"labels": {"team": "ml"}},
                                    "spec": {"containers": [{"name": "node", "env": [{"name": "X", "value": "1"}]}]}}}},
    "huge": {"resources": {"CPU": 64}},  # more than any node has: the scheduler refuses it
    # A node waits for a head it cannot reach ($CLUSTER_HEAD_WAIT_S, 60 s by default): this one, 1 s.
    "impatient": {"resources": {"CPU": 1},
                  "node_config": {"pod": {"spec": {"containers": [
                      {"name": "node", "env": [{"name": "CLUSTER_HEAD_WAIT_S", "value": "1"}]}]}}}},
}


def make_config(kube: KubeTarget, name: str = "kit", **options: object) -> ClusterConfig:
    text = yaml.safe_dump({"cluster_name": name, "head_node_type": "head", "node_types": NODE_TYPES,
                           "provider": kube.provider_options(unschedulable_timeout_s=0, **options)})
    return parse_config(text)


@pytest.fixture
def head(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTER_TMPDIR", str(tmp_path / "root"))
    with LocalCluster(tmp_path / "root", num_cpus=1) as lc:
        yield lc


@pytest.fixture
def token_secret(kube: KubeTarget, head: LocalCluster) -> None:
    """The Secret `cluster up` would have made: worker pods read the token from it."""
    client.CoreV1Api(kube.api_client()).create_namespaced_secret(kube.namespace, {
        "metadata": {"name": "kit-token"}, "stringData": {"token": head.token}})


def provider_for(kube: KubeTarget, head: LocalCluster, tmp_path, address: str | None = None,
                 **options: object) -> KubernetesProvider:
    context = ProviderContext("kit", address or head.address, head.token, str(tmp_path / "state"))
    return make_provider(make_config(kube, **options), context)


class TestKubernetesProvider(ProviderConformance):
    @pytest.fixture
    def provider_kit(self, kube, head, token_secret, tmp_path):
        config = make_config(kube)
        yield KitTarget(make=lambda: provider_for(kube, head, tmp_path), node_type=config.node_types["small"],
                        failing_node_type=config.node_types["huge"], settle_s=60)


def test_a_worker_pod_has_the_node_type_s_spec_and_its_node_joins_the_head(kube, head, token_secret, tmp_path):
    provider = provider_for(kube, head, tmp_path)
    core = client.CoreV1Api(kube.api_client())
    config = make_config(kube)

    async def launch() -> dict:
        await provider.launch(config.node_types["gpu"], 1, "req-spec")
        return await provider.non_terminated()

    (name,) = trio.run(launch)
    pod = core.read_namespaced_pod(name, kube.namespace)
    assert pod.metadata.labels == {"team": "ml", "cluster.dev/name": "kit", "cluster.dev/role": "worker",
                                   "cluster.dev/node-type": "gpu"}
    assert pod.metadata.annotations["cluster.dev/request-id"] == "req-spec/0"
    (container,) = pod.spec.containers
    assert container.image == kube.image
    assert container.resources.requests == container.resources.limits == {"cpu": "1", "memory": "500000000"}
    assert container.command[:4] == ["cluster", "start", "--address", head.address]
    env = {e.name: e for e in container.env}
    assert env["X"].value == "1" and env["CLUSTER_TOKEN"].value_from.secret_key_ref.name == "kit-token"
    if kube.fake is None:
        return  # a real cluster's pods cannot reach a head on this machine

    def joined() -> dict | None:
        nodes = json.loads(head.cli("status", "--json").stdout)
        return next((n for n in nodes if n["labels"].get("cluster.dev/instance") == name), None)

    node = wait_until(joined, "the pod's node daemon joined the head")
    assert {k: v for k, v in node["resources"].items() if v} == {"CPU": 1.0, "memory": 500_000_000.0, "accel": 2.0}
    assert node["labels"] == {"kind": "gpu", "cluster.dev/instance": name}
    wait_until(lambda: trio.run(provider.non_terminated)[name].state == "running", "the pod listed as running")
    trio.run(provider.terminate, [name], "req-end")
    wait_until(lambda: not trio.run(provider.non_terminated), "the pod gone")
    wait_until(lambda: not kube.fake.pids(), "its process stopped")


def test_worker_pods_belong_to_the_head_s_pod_and_go_with_it(kube, head, token_secret, tmp_path, monkeypatch):
    core = client.CoreV1Api(kube.api_client())
    stand_in = core.create_namespaced_pod(kube.namespace, {  # plays the head's pod
        "metadata": {"name": "kit-head-pod"},
        "spec": {"containers": [{"name": "node", "image": kube.image,
                                 "command": ["python", "-c", "import time; time.sleep(600)"]}]}})
    monkeypatch.setenv("CLUSTER_K8S_POD_NAME", stand_in.metadata.name)
    monkeypatch.setenv("CLUSTER_K8S_POD_UID", stand_in.metadata.uid)
    provider = provider_for(kube, head, tmp_path)
    trio.run(provider.launch, make_config(kube).node_types["small"], 2, "req-owned")
    pods = trio.run(provider.non_terminated)
    assert len(pods) == 2
    for name in pods:
        (owner,) = core.read_namespaced_pod(name, kube.namespace).metadata.owner_references
        assert (owner.kind, owner.name, owner.uid) == ("Pod", "kit-head-pod", stand_in.metadata.uid)
    core.delete_namespaced_pod("kit-head-pod", kube.namespace)
    wait_until(lambda: not trio.run(provider.non_terminated), "the workers removed with their head", timeout=120)


def test_a_pod_that_cannot_be_scheduled_is_a_launch_error_with_the_scheduler_s_reason(kube, head, token_secret,
                                                                                       tmp_path):
    provider = provider_for(kube, head, tmp_path)
    trio.run(provider.launch, make_config(kube).node_types["huge"], 1, "req-huge")

    errors = wait_until(lambda: trio.run(provider.poll_errors), "the unschedulable pod reported")
    (error,) = errors
    assert error.node_type == "huge" and error.request_id == "req-huge"
    assert "cannot schedule it" in error.message and "Insufficient cpu" in error.message
    wait_until(lambda: not trio.run(provider.non_terminated), "the failed pod deleted")
    assert trio.run(provider.poll_errors) == []  # once


def test_a_crash_looping_pod_is_a_launch_error_with_its_exit_code_and_last_log_lines(kube, head, token_secret,
                                                                                     tmp_path):
    provider = provider_for(kube, head, tmp_path, address="127.0.0.1:1")  # its node cannot reach a head
    trio.run(provider.launch, make_config(kube).node_types["impatient"], 1, "req-crash")

    (error,) = wait_until(lambda: trio.run(provider.poll_errors), "the crash loop reported", timeout=120)
    assert error.node_type == "impatient"
    assert "CrashLoopBackOff: exit code 1" in error.message
    assert "the head at 127.0.0.1:1 has been unreachable" in error.message  # from the pod's log
    assert "could not reach the head at 127.0.0.1:1" in error.message
    wait_until(lambda: not trio.run(provider.non_terminated), "the crashing pod deleted")


def test_the_same_request_id_names_the_same_pods(kube, head, token_secret, tmp_path):
    provider = provider_for(kube, head, tmp_path)
    small = make_config(kube).node_types["small"]
    trio.run(provider.launch, small, 2, "req-twice")
    first = set(trio.run(provider.non_terminated))
    trio.run(provider_for(kube, head, tmp_path).launch, small, 2, "req-twice")  # another process retries
    assert set(trio.run(provider.non_terminated)) == first and len(first) == 2
    assert trio.run(provider.poll_errors) == []  # a 409 is the answer to a retry, not an error


def test_the_plugin_makes_the_provider_and_refuses_bad_options(kube, head, tmp_path):
    assert type(provider_for(kube, head, tmp_path)) is KubernetesProvider
    context = ProviderContext("kit", head.address, head.token, str(tmp_path / "state"))
    with pytest.raises(ClusterConfigError, match=r"provider\.zone is not an option"):
        make_provider(make_config(kube, zone="a"), context)
    with pytest.raises(ClusterConfigError, match="cannot load the Kubernetes config /no/such/kubeconfig"):
        make_provider(make_config(kube, kubeconfig="/no/such/kubeconfig"), context)


def test_an_api_server_that_is_not_there_gets_a_clear_error(head, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    port = kubeconfig_of_nowhere(kubeconfig)
    target = KubeTarget(str(kubeconfig), "default", "cluster:test", "127.0.0.1")
    provider = provider_for(target, head, tmp_path, kubeconfig=str(kubeconfig))
    with pytest.raises(KubernetesUnavailable, match=f"cannot reach the Kubernetes API at http://127.0.0.1:{port}"):
        trio.run(provider.non_terminated)
    trio.run(provider.launch, make_config(target).node_types["small"], 1, "req-gone")  # failures are data
    (error,) = trio.run(provider.poll_errors)  # the launch's error, though listing fails too
    assert "creating pod" in error.message and "cannot reach the Kubernetes API" in error.message


def test_in_a_pod_the_service_account_is_used_whatever_kubeconfig_the_config_names(tmp_path, monkeypatch):
    from cluster_k8s.kube import api_client
    from cluster_k8s.manifests import Options

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig_of_nowhere(kubeconfig)  # valid, on the machine that ran `cluster up`
    options = Options(image="x", kubeconfig=str(kubeconfig))
    assert api_client(options).configuration.host.startswith("http://127.0.0.1:")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")  # what a pod has; here no token file
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(ClusterConfigError, match="cannot use this pod's service account"):
        api_client(options)
