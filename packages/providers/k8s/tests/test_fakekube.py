"""The fake cluster itself, through the official client only: what tests of the provider rely on."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest
from fakekube import FakeKube
from kubernetes.client import ApiException, AppsV1Api, CoreV1Api, RbacAuthorizationV1Api
from kubetarget import wait_until

T = TypeVar("T")
NS = "default"
SLEEP = ["python", "-c", "import time; print('up', flush=True); time.sleep(120)"]


def wait_for(what: str, check: Callable[[], T], timeout: float = 15.0) -> T:
    return wait_until(check, f"waiting for {what}", timeout)


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (an orphan's zombie is init's to reap)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, FileNotFoundError):
        return False


def pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "example.org/img:1", "command": command, **spec.pop("container", {})}
    return {"metadata": {"name": name, **spec.pop("metadata", {})}, "spec": {"containers": [container], **spec}}


def log_of(core: CoreV1Api, name: str, **kwargs: Any) -> str:
    # kubernetes 36 returns str(bytes) for logs (kubernetes-client/python#2596), against a real server too.
    return core.read_namespaced_pod_log(name, NS, _preload_content=False, **kwargs).data.decode()


def phase(core: CoreV1Api, name: str) -> str:
    return core.read_namespaced_pod(name, NS).status.phase


@pytest.fixture  # (named "fake", not "kube": conftest.py's "kube" is a KubeTarget)
def fake(tmp_path: Path) -> Iterator[FakeKube]:
    with FakeKube(tmp_path, cpu="2", memory="1Gi", env={"FAKE_ENV": "from-fakekube"}) as fake:
        yield fake


@pytest.fixture
def api(fake: FakeKube) -> Iterator[kubernetes.client.ApiClient]:
    with kubernetes.config.new_client_from_config(str(fake.kubeconfig)) as api:
        yield api


@pytest.fixture
def core(api: kubernetes.client.ApiClient) -> CoreV1Api:
    return CoreV1Api(api)


def test_create_fills_in_metadata_generate_name_and_409_on_duplicates(core: CoreV1Api) -> None:
    first = core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}, "data": {"k": "v"}})
    uuid.UUID(first.metadata.uid)
    assert first.metadata.namespace == NS and first.metadata.creation_timestamp is not None
    second = core.create_namespaced_config_map(NS, {"metadata": {"generateName": "gen-"}})
    assert re.fullmatch(r"gen-[a-z0-9]{5}", second.metadata.name)
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    patched = core.patch_namespaced_config_map("a", NS, {"data": {"k": "w"}})
    assert patched.data == {"k": "w"} and int(patched.metadata.resource_version) > int(second.metadata.resource_version)
    assert patched.metadata.uid == first.metadata.uid
    assert core.read_namespaced_config_map("a", NS).metadata.resource_version == patched.metadata.resource_version
    replaced = core.replace_namespaced_config_map("a", NS, {"metadata": {"name": "a"}, "data": {"x": "1"}})
    assert replaced.data == {"x": "1"} and replaced.metadata.uid == first.metadata.uid
    assert int(replaced.metadata.resource_version) > int(patched.metadata.resource_version)
    with pytest.raises(ApiException) as json_patch:
        core.patch_namespaced_config_map("a", NS, [{"op": "add", "path": "/data/y", "value": "2"}])
    assert json_patch.value.status == 415
    with pytest.raises(ApiException) as conflict:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "a"}})
    assert conflict.value.status == 409 and json.loads(conflict.value.body).items() >= {
        "kind": "Status", "reason": "AlreadyExists", "message": 'configmaps "a" already exists'}.items()
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_config_map("nope", NS)
    assert missing.value.status == 404 and json.loads(missing.value.body)["reason"] == "NotFound"
    with pytest.raises(ApiException) as invalid:
        core.create_namespaced_config_map(NS, {"metadata": {"name": "Not_A_Name"}})
    assert invalid.value.status == 422 and json.loads(invalid.value.body)["reason"] == "Invalid"
    created = core.create_namespaced_pod(NS, pod("p", ["true"], nodeSelector={"no": "such-node"}))
    assert created.status.phase == "Pending" and created.metadata.uid


def test_label_and_field_selectors_on_list_and_watch(core: CoreV1Api) -> None:
    labels = {"a": {"env": "prod", "tier": "web"}, "b": {"env": "dev", "tier": "db"}, "c": {"env": "prod"}, "d": {}}
    for name, these in labels.items():
        core.create_namespaced_config_map(NS, {"metadata": {"name": name, "labels": these}})
    core.create_namespaced_config_map("other", {"metadata": {"name": "e", "labels": {"env": "prod"}}})

    def names(**kwargs: Any) -> set[str]:
        return {cm.metadata.name for cm in core.list_namespaced_config_map(NS, **kwargs).items}

    assert names(label_selector="env=prod") == names(label_selector="env==prod") == {"a", "c"}
    assert names(label_selector="env!=prod") == {"b", "d"}
    assert names(label_selector="tier") == {"a", "b"}
    assert names(label_selector="!tier") == {"c", "d"}
    assert names(label_selector="env in (dev, qa)") == {"b"}
    assert names(label_selector="env notin (prod)") == {"b", "d"}
    assert names(label_selector="env=prod,tier") == {"a"}
    assert names(label_selector="env in (prod,dev),!tier") == {"c"}
    assert names(field_selector="metadata.name=b") == {"b"}
    assert names(field_selector="metadata.name!=b,metadata.name!=d") == {"a", "c"}
    everywhere = core.list_config_map_for_all_namespaces(field_selector="metadata.namespace=other")
    assert [cm.metadata.name for cm in everywhere.items] == ["e"]
    with pytest.raises(ApiException) as bad:
        core.list_namespaced_config_map(NS, field_selector="spec.nope=1")
    assert bad.value.status == 400 and "field label not supported" in bad.value.body

    # A watch sends what exists now, then every change that concerns its selection, as it happens.
    events: list[Any] = []

    def follow() -> None:
        for event in kubernetes.watch.Watch().stream(core.list_namespaced_config_map, NS, label_selector="env=prod",
                                                     timeout_seconds=10):
            events.append(event)
            if len(events) == 6:
                return

    follower = threading.Thread(target=follow)
    follower.start()
    wait_for("what exists now", lambda: len(events) == 2)
    assert sorted((e["type"], e["object"].metadata.name) for e in events) == [("ADDED", "a"), ("ADDED", "c")]
    core.create_namespaced_config_map(NS, {"metadata": {"name": "f", "labels": {"env": "prod"}}})
    core.patch_namespaced_config_map("d", NS, {"metadata": {"labels": {"env": "prod"}}})  # enters the selection
    core.patch_namespaced_config_map("a", NS, {"metadata": {"labels": {"env": "dev"}}})  # leaves it
    core.patch_namespaced_config_map("b", NS, {"data": {"x": "y"}})  # never in it
    core.delete_namespaced_config_map("c", NS)
    follower.join(10)
    assert [(e["type"], e["object"].metadata.name) for e in events[2:]] == [
        ("ADDED", "f"), ("ADDED", "d"), ("DELETED", "a"), ("DELETED", "c")]
    versions = [int(e["object"].metadata.resource_version) for e in events[2:]]
    assert versions == sorted(versions)


def test_a_pod_runs_with_env_from_a_secret_the_downward_api_and_a_configmap_volume(
        fake: FakeKube, core: CoreV1Api) -> None:
    core.create_namespaced_secret(NS, {"metadata": {"name": "tok"}, "stringData": {"token": "s3cret"}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "cfg"}, "data": {"app.yaml": "greeting: hi\n"}})
    script = ("import os, sys; print(os.environ['TOKEN'], os.environ['POD_IP'], os.environ['FAKE_ENV'], sys.argv[1:]);"
              "print(open(sys.argv[1]).read(), end='', flush=True); import time; time.sleep(120)")
    core.create_namespaced_pod(NS, pod(
        "app", ["python", "-c", script], container={
            "args": ["/etc/app/app.yaml", "$(POD_NAME)", "$$(POD_NAME)"],
            "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}},
                    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "volumeMounts": [{"name": "config", "mountPath": "/etc/app", "readOnly": True}]},
        volumes=[{"name": "config", "configMap": {"name": "cfg"}}]))
    wait_for("the log", lambda: "greeting" in fake.pod_log(NS, "app"))
    running = core.read_namespaced_pod("app", NS)
    assert running.status.phase == "Running" and running.status.pod_ip == "127.0.0.1"
    assert running.spec.node_name == "fake-node"
    (status,) = running.status.container_statuses
    assert status.ready and status.state.running and status.restart_count == 0
    assert {c.type: c.status for c in running.status.conditions} == {
        "PodScheduled": "True", "Initialized": "True", "ContainersReady": "True", "Ready": "True"}
    assert status.container_id == f"fake://{fake.pids()[f'{NS}/app']}"
    text = log_of(core, "app")
    first = text.splitlines()[0]
    assert first.startswith("s3cret 127.0.0.1 from-fakekube [") and first.endswith("'app', '$(POD_NAME)']")
    assert "/root/etc/app/app.yaml" in first  # the mount, rewritten to the pod's own directory
    assert text.endswith("greeting: hi\n") and text == fake.pod_log(NS, "app")
    assert log_of(core, "app", tail_lines=1) == "greeting: hi\n"
    replaced = core.replace_namespaced_pod("app", NS, core.read_namespaced_pod("app", NS))  # the status stays
    assert replaced.status.phase == "Running" and replaced.status.container_statuses[0].ready
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_pod_log("nope", NS)
    assert missing.value.status == 404


def test_a_missing_secret_or_command_keeps_the_container_waiting(core: CoreV1Api) -> None:
    env = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}]
    core.create_namespaced_pod(NS, pod("needs-secret", SLEEP, container={"env": env}))
    core.create_namespaced_pod(NS, pod("no-command", []))

    def waiting(name: str) -> Any:
        statuses = core.read_namespaced_pod(name, NS).status.container_statuses
        return statuses and statuses[0].state.waiting

    assert wait_for("config error", lambda: waiting("needs-secret")).reason == "CreateContainerConfigError"
    assert waiting("needs-secret").message == 'secret "later" not found'
    assert wait_for("create error", lambda: waiting("no-command")).reason == "CreateContainerError"
    assert phase(core, "needs-secret") == "Pending"
    core.create_namespaced_secret(NS, {"metadata": {"name": "later"}, "data": {}})
    wait_for("missing key", lambda: "couldn't find key token in Secret default/later" in waiting("needs-secret").message)
    core.patch_namespaced_secret("later", NS, {"stringData": {"token": "t"}})
    wait_for("running", lambda: phase(core, "needs-secret") == "Running")


def test_pods_that_do_not_fit_stay_unschedulable_until_capacity_frees_up(fake: FakeKube, core: CoreV1Api) -> None:
    core.create_namespaced_pod(NS, pod("greedy", SLEEP, container={"resources": {"requests": {"cpu": "3"}}}))
    core.create_namespaced_pod(NS, pod("big", SLEEP, container={"resources": {"limits": {"cpu": "1500m"}}}))
    wait_for("big running", lambda: phase(core, "big") == "Running")
    core.create_namespaced_pod(NS, pod("second", SLEEP, container={"resources": {"requests": {"cpu": "1"}}}))
    core.create_namespaced_pod(NS, pod("huge", SLEEP, container={"resources": {"requests": {"memory": "2Gi"}}}))
    core.create_namespaced_pod(NS, pod("gpu", SLEEP, container={"resources": {"limits": {"nvidia.com/gpu": "1"}}}))
    core.create_namespaced_pod(NS, pod("picky", SLEEP, nodeSelector={"disk": "ssd"}))

    def unschedulable(name: str) -> str | None:
        found = core.read_namespaced_pod(name, NS)
        for cond in found.status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False" and cond.reason == "Unschedulable":
                assert found.spec.node_name is None and found.status.phase == "Pending"
                return cond.message
        return None

    assert wait_for("cpu", lambda: unschedulable("greedy")) == "0/1 nodes are available: 1 Insufficient cpu."
    assert wait_for("cpu left", lambda: unschedulable("second")) == "0/1 nodes are available: 1 Insufficient cpu."
    assert wait_for("memory", lambda: unschedulable("huge")) == "0/1 nodes are available: 1 Insufficient memory."
    assert wait_for("gpu", lambda: unschedulable("gpu")) == "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    assert wait_for("selector", lambda: unschedulable("picky")) == (
        "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.")
    assert set(fake.pids()) == {f"{NS}/big"}
    core.delete_namespaced_pod("big", NS)
    wait_for("second running once big is gone", lambda: phase(core, "second") == "Running")
    assert unschedulable("greedy") and unschedulable("huge") and unschedulable("gpu")  # still, after many rounds
    assert set(fake.pids()) == {f"{NS}/second"}


def test_a_crashing_container_is_restarted_with_back_off(fake: FakeKube, core: CoreV1Api) -> None:
    core.create_namespaced_pod(NS, pod("crash", ["python", "-c", "print('boom', flush=True); raise SystemExit(3)"]))

    def backing_off() -> Any:
        status = core.read_namespaced_pod("crash", NS).status
        state = status.container_statuses and status.container_statuses[0]
        return state if state and state.state.waiting and state.state.waiting.reason == "CrashLoopBackOff" else None

    state = wait_for("CrashLoopBackOff", backing_off)
    assert state.restart_count >= 1 and not state.ready
    assert state.last_state.terminated.exit_code == 3 and state.last_state.terminated.reason == "Error"
    assert re.fullmatch(r"back-off \d+s restarting failed container=main pod=crash_default\(.+\)",
                        state.state.waiting.message)
    found = core.read_namespaced_pod("crash", NS)
    assert found.status.phase == "Running"
    assert {c.type: c.status for c in found.status.conditions}["Ready"] == "False"
    assert log_of(core, "crash", previous=True) == "boom\n"  # one run (the API has no "all runs")
    assert fake.pod_log(NS, "crash").startswith("boom\nboom\n")  # every run


def test_restart_policy_never_ends_in_failed_or_succeeded(core: CoreV1Api) -> None:
    core.create_namespaced_pod(NS, pod("fails", ["python", "-c", "raise SystemExit(3)"], restartPolicy="Never"))
    core.create_namespaced_pod(NS, pod("works", ["python", "-c", "pass"], restartPolicy="OnFailure"))
    wait_for("Failed", lambda: phase(core, "fails") == "Failed")
    wait_for("Succeeded", lambda: phase(core, "works") == "Succeeded")
    (failed,) = core.read_namespaced_pod("fails", NS).status.container_statuses
    assert failed.state.terminated.exit_code == 3 and failed.restart_count == 0 and not failed.ready
    (done,) = core.read_namespaced_pod("works", NS).status.container_statuses
    assert done.state.terminated.exit_code == 0 and done.state.terminated.reason == "Completed"


def test_deleting_a_pod_kills_its_process_group(fake: FakeKube, core: CoreV1Api) -> None:
    core.create_namespaced_pod(NS, pod("group", ["sh", "-c", "sleep 120 & echo child $!; wait"]))
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ok', flush=True); time.sleep(120)"
    core.create_namespaced_pod(NS, pod("stubborn", ["python", "-c", stubborn]))
    child = int(wait_for("child pid", lambda: re.search(r"child (\d+)", fake.pod_log(NS, "group")))[1])
    wait_for("handler installed", lambda: "ok" in fake.pod_log(NS, "stubborn"))
    pids = fake.pids()
    core.delete_namespaced_pod("group", NS)
    core.delete_namespaced_pod("stubborn", NS, grace_period_seconds=1)  # SIGTERM is ignored: SIGKILL after 1 s
    for pid in (pids[f"{NS}/group"], pids[f"{NS}/stubborn"]):  # killed and reaped: not even a zombie
        wait_for(f"pid {pid} gone", lambda pid=pid: not Path(f"/proc/{pid}").exists())
    wait_for("the grandchild gone", lambda: not alive(child))
    assert fake.pids() == {}
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_pod("group", NS)
    assert gone.value.status == 404


def test_a_deployment_keeps_its_pod_and_takes_it_along_when_deleted(
        fake: FakeKube, api: kubernetes.client.ApiClient, core: CoreV1Api) -> None:
    apps = AppsV1Api(api)
    labels = {"app": "web"}
    deployment = apps.create_namespaced_deployment(NS, {
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {"containers": [pod("x", SLEEP)["spec"]["containers"][0]]}}}})

    def pods() -> list[Any]:
        return core.list_namespaced_pod(NS, label_selector="app=web").items

    (first,) = wait_for("a pod", pods)
    assert re.fullmatch(r"web-[0-9a-f]{10}-[a-z0-9]{5}", first.metadata.name)
    (owner,) = first.metadata.owner_references
    assert (owner.api_version, owner.kind, owner.name, owner.uid, owner.controller) == (
        "apps/v1", "Deployment", "web", deployment.metadata.uid, True)
    wait_for("ready", lambda: apps.read_namespaced_deployment("web", NS).status.ready_replicas == 1)
    status = apps.read_namespaced_deployment("web", NS).status
    assert (status.replicas, status.available_replicas, status.updated_replicas) == (1, 1, 1)
    core.delete_namespaced_pod(first.metadata.name, NS)
    (second,) = wait_for("a replacement", lambda: [p for p in pods() if p.metadata.name != first.metadata.name])
    wait_for("replacement running", lambda: f"{NS}/{second.metadata.name}" in fake.pids())
    assert len(pods()) == 1
    apps.delete_namespaced_deployment("web", NS)
    wait_for("pods gone", lambda: not pods() and not fake.pids())


def test_garbage_collection_follows_owner_references(fake: FakeKube, core: CoreV1Api) -> None:
    def ref(obj: Any, kind: str) -> dict[str, str]:
        return {"apiVersion": "v1", "kind": kind, "name": obj.metadata.name, "uid": obj.metadata.uid}

    owner = core.create_namespaced_pod(NS, pod("owner", SLEEP))
    dependent = core.create_namespaced_pod(NS, pod("dependent", SLEEP, metadata={"ownerReferences": [ref(owner, "Pod")]}))
    core.create_namespaced_config_map(NS, {"metadata": {"name": "grandchild", "ownerReferences": [ref(dependent, "Pod")]}})
    pid = wait_for("both running", lambda: len(fake.pids()) == 2 and fake.pids())[f"{NS}/dependent"]
    core.delete_namespaced_pod("owner", NS)  # background propagation, the default
    wait_for("dependents gone", lambda: not core.list_namespaced_pod(NS).items and not core.list_namespaced_config_map(NS).items)
    wait_for("the dependent's process gone", lambda: not Path(f"/proc/{pid}").exists())

    keeper = core.create_namespaced_config_map(NS, {"metadata": {"name": "keeper"}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "kept", "ownerReferences": [ref(keeper, "ConfigMap")]}})
    core.delete_namespaced_config_map("keeper", NS, propagation_policy="Orphan")
    assert core.read_namespaced_config_map("kept", NS).metadata.owner_references is None

    parent = core.create_namespaced_config_map(NS, {"metadata": {"name": "parent"}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "child", "ownerReferences": [ref(parent, "ConfigMap")]}})
    core.delete_namespaced_config_map("parent", NS, propagation_policy="Foreground")
    ghost = {"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": str(uuid.uuid4())}
    core.create_namespaced_config_map(NS, {"metadata": {"name": "haunted", "ownerReferences": [ghost]}})
    wait_for("the dangling dependent collected", lambda: [c.metadata.name for c in
                                                          core.list_namespaced_config_map(NS).items] == ["kept"])


def test_rbac_and_plain_objects_are_stored_listed_and_deleted(api: kubernetes.client.ApiClient) -> None:
    rbac, core = RbacAuthorizationV1Api(api), CoreV1Api(api)
    rule = {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "watch", "delete"]}
    rbac.create_namespaced_role(NS, {"metadata": {"name": "r", "labels": {"x": "1"}}, "rules": [rule]})
    rbac.create_namespaced_role_binding(NS, {
        "metadata": {"name": "rb"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "sa", "namespace": NS}]})
    core.create_namespaced_service_account(NS, {"metadata": {"name": "sa"}})
    core.create_namespaced_service(NS, {"metadata": {"name": "svc"}, "spec": {"selector": {"x": "1"},
                                                                              "ports": [{"port": 80}]}})
    assert rbac.read_namespaced_role("r", NS).rules[0].verbs == rule["verbs"]
    assert [r.metadata.name for r in rbac.list_namespaced_role(NS, label_selector="x=1").items] == ["r"]
    assert rbac.read_namespaced_role_binding("rb", NS).role_ref.name == "r"
    assert core.read_namespaced_service_account("sa", NS).metadata.uid
    assert core.read_namespaced_service("svc", NS).spec.ports[0].port == 80
    rbac.delete_namespaced_role("r", NS)
    rbac.delete_namespaced_role_binding("rb", NS)
    core.delete_namespaced_service_account("sa", NS)
    core.delete_namespaced_service("svc", NS)
    for read in (lambda: rbac.read_namespaced_role("r", NS), lambda: core.read_namespaced_service("svc", NS)):
        with pytest.raises(ApiException) as gone:
            read()
        assert gone.value.status == 404


def test_close_kills_everything_it_started(tmp_path: Path) -> None:
    fake = FakeKube(tmp_path, cpu="1", memory="512Mi")
    with fake, fake.api_client() as api:
        core = CoreV1Api(api)
        core.create_namespaced_pod(NS, pod("a", SLEEP))
        core.create_namespaced_pod(NS, pod("b", ["sh", "-c", "sleep 120 & echo child $!; wait"]))
        child = int(wait_for("child pid", lambda: re.search(r"child (\d+)", fake.pod_log(NS, "b")))[1])
        pids = list(wait_for("both running", lambda: len(fake.pids()) == 2 and fake.pids()).values())
    for pid in pids:  # the container processes are reaped by close() itself
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    wait_for("the orphaned grandchild gone", lambda: not alive(child), timeout=2)
    fake.close()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(fake.url.rsplit(":", 1)[1])), timeout=2)
