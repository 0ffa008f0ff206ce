"""The autoscaler, as a head service: observe, plan (policy.plan), apply through the provider.

Runs in a head started with ``--autoscaling-config PATH`` (``cluster up`` does that). Each
round is a reconciliation, with no event bookkeeping:
- it reads the provider's instances and errors, the head's node table (resources, what is
  free, how long each node has been idle, primary objects) and the cluster's pending demand
  (from node heartbeats, plus ``request_resources``);
- it asks the policy for a plan;
- it starts the launches and terminations in the background, so a slow provider never
  stalls the loop.

Its latest report (an ``AutoscalerStatus``) answers ``ServiceRequest("autoscaler",
GetStatus())``, which `cluster status [--explain]` shows.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import attrs
import structlog
import trio

from cluster import session
from cluster.autoscaler import REQUESTED_KEY
from cluster.resources import total_demand
from cluster.scheduling import AUTOSCALER_NODE_TYPES_KEY, NODE_ID_LABEL, labels_from_wire
from cluster.wire import messages as m
from cluster_autoscaler.config import ClusterConfig, load_config
from cluster_autoscaler.messages import (
    AutoscalerStatus,
    DecisionStatus,
    DemandStatus,
    GetStatus,
    InstanceStatus,
    LaunchFailure,
)
from cluster_autoscaler.policy import (
    Demand,
    GroupDemand,
    LaunchError,
    Memory,
    NodeObservation,
    Observation,
    plan,
)
from cluster_autoscaler.provider import INSTANCE_LABEL, ProviderContext, make_provider

log = structlog.get_logger("cluster.autoscaler")

SERVICE = "autoscaler"
ROUND_S = 1.0


def state_dir(cluster_name: str) -> str:
    """Where the providers of ``cluster_name`` keep their files on this machine."""
    path = session.cluster_root() / "autoscaler" / cluster_name
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


class AutoscalerService:
    def __init__(self, head: Any, config_path: str) -> None:
        self.head = head
        self.config: ClusterConfig = load_config(config_path)
        context = ProviderContext(self.config.cluster_name, head.address, head.token,
                                  state_dir(self.config.cluster_name))
        self.provider = make_provider(self.config, context)
        self.memory = Memory()
        self.idle_since: dict[str, float] = {}
        self.in_flight: dict[str, tuple[str, int]] = {}  # launch request id -> (node type, count)
        self.errors: list[LaunchFailure] = []  # the latest launch failures, for status
        self.report = AutoscalerStatus("starting", self.config.cluster_name, self.config.provider.type)
        self._new_errors: list[LaunchError] = []  # since the last round
        self._rounds = itertools.count(1)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.head.services.add(SERVICE, self._on_request)
        # What it may launch, for owners whose work no node fits yet (they say what they wait for).
        self.head.kv_put(AUTOSCALER_NODE_TYPES_KEY, json.dumps({
            t.name: {"resources": dict(t.resources), "labels": dict(t.labels)} for t in self.config.worker_types
            if t.max_workers > 0}).encode())
        async with trio.open_nursery() as nursery:
            task_status.started()
            log.info("autoscaler_started", cluster=self.config.cluster_name, provider=self.config.provider.type)
            while True:
                try:
                    await self._round(nursery)
                except Exception as exc:  # a round that fails is logged and retried; the head lives on
                    log.exception("autoscaler_round_failed", error=str(exc))
                    self.report = attrs.evolve(self.report, error=f"the last round failed: {exc}")
                await trio.sleep(ROUND_S)

    def _on_request(self, conn: Any, payload: Any, request_id: int) -> None:
        if type(payload) is GetStatus:
            conn.reply(request_id, self.report)
        else:
            conn.reply_error(request_id, "unexpected", f"the autoscaler does not handle {type(payload).__name__}")

    # ------------------------------------------------------------------ a round

    async def _round(self, nursery: trio.Nursery) -> None:
        now = time.monotonic()
        instances = await self.provider.non_terminated()
        for error in await self.provider.poll_errors():
            self.errors = [*self.errors, LaunchFailure(error.node_type, error.message, error.at)][-10:]
            self._new_errors.append(LaunchError(error.node_type or "?", error.message))
        by_node = {i.node_id: i for i in instances.values() if i.node_id}
        nodes = []
        alive = [n for n in self.head.nodes.values() if n.state == "alive"]
        for node in alive:
            instance = by_node.get(node.node_id) or instances.get(node.labels.get(INSTANCE_LABEL, ""))
            resources, available = dict(node.resources), dict(node.available)
            if any(available.get(k, 0.0) < v - 1e-9 for k, v in resources.items()):
                self.idle_since.pop(node.node_id, None)
            else:
                self.idle_since.setdefault(node.node_id, now)
            primaries = max(0, node.store.objects - node.store.copies) if node.store is not None else 0
            nodes.append(NodeObservation(
                instance.instance_id if instance else node.node_id,
                instance.node_type if instance else self.config.head_node_type,
                "running", resources, available, now - self.idle_since.get(node.node_id, now), primaries,
                is_head=instance is None,  # not the provider's: never removed by us
                labels={**node.labels, NODE_ID_LABEL: node.node_id},
            ))
        joined = {n.node_id for n in alive}
        for instance in instances.values():
            if instance.node_id not in joined and instance.instance_id not in {n.instance_id for n in nodes}:
                resources = dict(self.config.node_types[instance.node_type].resources) \
                    if instance.node_type in self.config.node_types else {}
                nodes.append(NodeObservation(instance.instance_id, instance.node_type, "launching", resources,
                                             resources))
        listed_requests = {i.request_id.rsplit("/", 1)[0] for i in instances.values()}
        for request_id, (node_type, count) in self.in_flight.items():  # asked for, not listed yet
            if request_id in listed_requests:
                continue
            resources = dict(self.config.node_types[node_type].resources)
            for i in range(count):
                nodes.append(NodeObservation(f"{request_id}/{i}", node_type, "launching", resources, resources))
        demand = self._demand(alive)
        observation = Observation(now=now, nodes=tuple(nodes), demand=tuple(demand),
                                  requested=tuple(self._requested()), groups=tuple(self._groups()),
                                  launch_errors=tuple(self._new_errors))
        self._new_errors = []
        decision = plan(self.config, observation, self.memory)
        self.memory = decision.memory
        round_ = next(self._rounds)
        for node_type, count in decision.launch.items():
            request_id = f"{self.config.cluster_name}-{int(time.time())}-{round_}-{node_type}"
            self.in_flight[request_id] = (node_type, count)
            nursery.start_soon(self._launch, node_type, count, request_id)
            log.info("autoscaler_launch", node_type=node_type, count=count, request_id=request_id)
        if decision.terminate:
            request_id = f"{self.config.cluster_name}-{int(time.time())}-{round_}-terminate"
            nursery.start_soon(self.provider.terminate, list(decision.terminate), request_id)
            log.info("autoscaler_terminate", instances=list(decision.terminate))
        self.report = AutoscalerStatus(
            "running",
            self.config.cluster_name,
            self.config.provider.type,
            instances={i.instance_id: InstanceStatus(i.node_type, i.state, i.node_id) for i in instances.values()},
            launching={t: c for _, (t, c) in self.in_flight.items()},
            demand=[DemandStatus(dict(d.shape), d.count) for d in demand],
            decisions=[DecisionStatus(d.kind, d.subject, d.reason) for d in decision.decisions],
            errors=self.errors,
            min_workers={t.name: t.min_workers for t in self.config.worker_types},
        )

    async def _launch(self, node_type: str, count: int, request_id: str) -> None:
        try:
            await self.provider.launch(self.config.node_types[node_type], count, request_id)
        finally:
            self.in_flight.pop(request_id, None)

    @staticmethod
    def _demand(alive: list) -> list[Demand]:
        reports = ([attrs.asdict(item) for item in n.demand] for n in alive)
        return [Demand(dict(item["shape"]), int(item["count"]), labels_from_wire(item.get("labels")))
                for item in total_demand(reports)]

    def _groups(self) -> list[GroupDemand]:
        """The placement groups waiting for room (their bundles not placed yet)."""
        pending = getattr(self.head, "pending_placement_groups", None)
        if pending is None:  # (a head of a core without placement groups)
            return []
        return [GroupDemand(tuple(dict(b) for b in group["bundles"]), group["strategy"]) for group in pending()]

    def _requested(self) -> list[Demand]:
        raw = self.head.kv_get(REQUESTED_KEY)
        if not raw:
            return []
        try:
            bundles = json.loads(raw)
        except ValueError:
            return []
        return [Demand({k: float(v) for k, v in bundle.items()}, 1) for bundle in bundles]


async def ask_status(connect: Any) -> AutoscalerStatus:
    """The autoscaler's latest report, asked of the head (for CLIs)."""
    return await (await connect()).request(m.ServiceRequest(SERVICE, GetStatus()))


def status_lines(report: AutoscalerStatus, explain: bool) -> list[str]:
    """`cluster status` lines for an autoscaler report."""
    lines = [f"Autoscaler ({report.provider} provider, cluster {report.cluster_name!r}):"]
    by_state: dict[str, int] = {}
    for instance in report.instances.values():
        key = f"{instance.node_type} {instance.state}"
        by_state[key] = by_state.get(key, 0) + 1
    lines.append("  nodes: " + (", ".join(f"{n} {k}" for k, n in sorted(by_state.items())) or "none launched"))
    if report.launching:
        lines.append("  launching: " + ", ".join(f"{n} {t}" for t, n in sorted(report.launching.items())))
    for error in report.errors:
        lines.append(f"  launch failed ({error.node_type}): {error.message}")
    if report.error:
        lines.append(f"  {report.error}")
    decisions = report.decisions
    shown = decisions if explain else [d for d in decisions if d.kind in ("launch", "terminate")]
    for d in shown:
        lines.append(f"  {d.kind} {d.subject}: {d.reason}")
    if not explain and len(shown) < len(decisions):
        lines.append("  (cluster status --explain says why the rest waits or stays)")
    return lines
