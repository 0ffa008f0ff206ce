"""cluster-autoscaler's wire types travel through core's codec, and its head service answers a
payload it does not handle with a clear error."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from cluster_autoscaler.messages import (
    AutoscalerStatus,
    DecisionStatus,
    DemandStatus,
    GetStatus,
    InstanceStatus,
    LaunchFailure,
)
from cluster_autoscaler.service import SERVICE, AutoscalerService, status_lines

from cluster.wire import codec
from cluster.wire import messages as m

STATUS = AutoscalerStatus(
    "running", "demo", "fake",
    instances={"fake-1": InstanceStatus("cpu_worker", "running", "node-1"),
               "fake-2": InstanceStatus("cpu_worker", "pending")},
    launching={"cpu_worker": 2},
    demand=[DemandStatus({"CPU": 2.0}, 3)],
    decisions=[DecisionStatus("launch", "cpu_worker", "3 tasks of {CPU: 2} wait"),
               DecisionStatus("keep", "fake-1", "busy")],
    errors=[LaunchFailure("gpu_worker", "no capacity", 1700000000.5), LaunchFailure(None, "lost", 1.0)],
    min_workers={"cpu_worker": 1},
    error="the last round failed: boom",
)

EVERY_TYPE = [GetStatus(), STATUS, *STATUS.instances.values(), *STATUS.demand, *STATUS.decisions, *STATUS.errors]


def _round_trip(msg: Any) -> Any:
    decoded, request_id = codec.decode(codec.encode(msg, 7)[4:])
    assert request_id == 7
    return decoded


@pytest.mark.parametrize("msg", EVERY_TYPE, ids=lambda msg: type(msg).__name__)
def test_each_type_round_trips_alone_as_a_payload_and_as_a_reply(msg: Any) -> None:
    assert _round_trip(msg) == msg
    assert _round_trip(m.ServiceRequest(SERVICE, msg)) == m.ServiceRequest(SERVICE, msg)
    assert _round_trip(m.Ok(msg)) == m.Ok(msg)


def test_tags_are_in_the_autoscaler_s_range() -> None:
    assert all(300 <= type(msg).TAG < 400 for msg in EVERY_TYPE)


def test_an_invalid_value_cannot_be_built() -> None:
    with pytest.raises(TypeError):
        InstanceStatus("cpu_worker", 3)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        AutoscalerStatus("running", "demo", "fake", instances={"fake-1": {"node_type": "x"}})


class _Conn:
    def __init__(self) -> None:
        self.replies: list[tuple[int, Any]] = []
        self.errors: list[tuple[int, str, str]] = []

    def reply(self, request_id: int, value: Any = None) -> None:
        self.replies.append((request_id, value))

    def reply_error(self, request_id: int, kind: str, message: str) -> None:
        self.errors.append((request_id, kind, message))


class _Head:
    """What the autoscaler service reads of the head: a cluster with no nodes yet."""

    address = "127.0.0.1:1"
    token = "t"
    nodes: dict = {}

    def __init__(self) -> None:
        self.handlers: dict = {}
        self.services = self

    def add(self, name: str, handler: Any) -> None:
        self.handlers[name] = handler

    def kv_get(self, key: str) -> None:
        return None


CONFIG = """\
cluster_name: msgs
provider: {type: fake, fail: {keeper: no capacity in this zone}}
head_node_type: head
node_types:
  head: {resources: {CPU: 1}}
  keeper: {resources: {CPU: 1}, min_workers: 1, max_workers: 1}
"""


@pytest.fixture
def service(tmp_path, monkeypatch) -> AutoscalerService:
    monkeypatch.setenv("CLUSTER_TMPDIR", str(tmp_path / "root"))
    (tmp_path / "cluster.yaml").write_text(CONFIG)
    return AutoscalerService(_Head(), str(tmp_path / "cluster.yaml"))


def _ask(service: AutoscalerService, payload: Any) -> _Conn:
    """``payload`` as the service's handler receives it: encoded, decoded, then handled."""
    conn = _Conn()
    request, request_id = codec.decode(codec.encode(m.ServiceRequest(SERVICE, payload), 5)[4:])
    service._on_request(conn, request.payload, request_id)
    return conn


def test_the_service_answers_get_status_with_its_report(service: AutoscalerService) -> None:
    conn = _ask(service, GetStatus())
    assert conn.errors == []
    [(request_id, report)] = conn.replies
    assert request_id == 5 and report.state == "starting" and report.cluster_name == "msgs"
    assert _round_trip(m.Ok(report)) == m.Ok(report)

    async def two_rounds() -> None:  # the first launches the keeper (and fails), the second sees it
        async with trio.open_nursery() as nursery:
            await service._round(nursery)
            await trio.testing.wait_all_tasks_blocked()
            await service._round(nursery)
            nursery.cancel_scope.cancel()

    trio.run(two_rounds)
    [(_, report)] = _ask(service, GetStatus()).replies
    assert report.state == "running" and report.provider == "fake" and report.min_workers == {"keeper": 1}
    assert [(e.node_type, e.message) for e in report.errors] == [("keeper", "no capacity in this zone")]
    assert _round_trip(m.Ok(report)) == m.Ok(report)
    lines = status_lines(_round_trip(m.Ok(report)).value, explain=True)
    assert lines[0] == "Autoscaler (fake provider, cluster 'msgs'):"
    assert "  launch failed (keeper): no capacity in this zone" in lines


@pytest.mark.parametrize("payload", [{"op": "status"}, "status", InstanceStatus("x", "running")],
                         ids=["a dict", "a str", "another message"])
def test_a_payload_of_another_type_gets_a_clear_error(service: AutoscalerService, payload: Any) -> None:
    conn = _ask(service, payload)
    assert conn.replies == []
    assert conn.errors == [(5, "unexpected", f"the autoscaler does not handle {type(payload).__name__}")]


def test_status_lines_read_the_typed_report() -> None:
    assert status_lines(STATUS, explain=False) == [
        "Autoscaler (fake provider, cluster 'demo'):",
        "  nodes: 1 cpu_worker pending, 1 cpu_worker running",
        "  launching: 2 cpu_worker",
        "  launch failed (gpu_worker): no capacity",
        "  launch failed (None): lost",
        "  the last round failed: boom",
        "  launch cpu_worker: 3 tasks of {CPU: 2} wait",
        "  (cluster status --explain says why the rest waits or stays)",
    ]
