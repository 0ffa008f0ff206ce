"""The built-in providers (local, fake) pass the conformance kit against a real head."""

from __future__ import annotations

import pytest
from cluster_autoscaler.config import NodeType, ProviderConfig
from cluster_autoscaler.local import FakeProvider, LocalProvider
from cluster_autoscaler.provider import ProviderContext
from cluster_autoscaler.testing import KitTarget, ProviderConformance

from cluster.testing import LocalCluster


@pytest.fixture
def head(tmp_path, monkeypatch):
    monkeypatch.setenv("CLUSTER_TMPDIR", str(tmp_path / "root"))  # node daemons' records stay in here
    with LocalCluster(tmp_path / "root", num_cpus=1) as lc:
        yield lc


def _context(head: LocalCluster, tmp_path) -> ProviderContext:
    return ProviderContext("kit", head.address, head.token, str(tmp_path / "provider-state"))


class TestLocalProvider(ProviderConformance):
    @pytest.fixture
    def provider_kit(self, head, tmp_path):
        context = _context(head, tmp_path)
        yield KitTarget(
            make=lambda: LocalProvider(context),
            node_type=NodeType("small", {"CPU": 1}, {"kind": "cpu"}),
            failing_node_type=NodeType("broken", {"CPU": 1}, node_config={"extra_args": ["--no-such-option"]}),
            settle_s=30,
        )


class TestFakeProvider(ProviderConformance):
    @pytest.fixture
    def provider_kit(self, head, tmp_path):
        context = _context(head, tmp_path)
        options = {"launch_delay_s": 0.2, "list_lag_s": 0.5, "fail": {"broken": "no capacity in this zone"}}
        yield KitTarget(
            make=lambda: FakeProvider(context, options),
            node_type=NodeType("small", {"CPU": 1}),
            failing_node_type=NodeType("broken", {"CPU": 1}),
            settle_s=30,
        )


def test_the_plugin_hook_makes_providers_by_type(head, tmp_path) -> None:
    from cluster_autoscaler.config import ClusterConfig
    from cluster_autoscaler.errors import ClusterConfigError
    from cluster_autoscaler.provider import make_provider

    def config(kind: str) -> ClusterConfig:
        return ClusterConfig("kit", ProviderConfig(kind, {"quota": {"small": 1}}),
                             {"head": NodeType("head", {"CPU": 1})}, "head")

    assert type(make_provider(config("local"), _context(head, tmp_path))) is LocalProvider
    fake = make_provider(config("fake"), _context(head, tmp_path))
    assert type(fake) is FakeProvider and fake.options["quota"] == {"small": 1}
    with pytest.raises(ClusterConfigError, match="no installed plugin provides provider type 'cloud9'"):
        make_provider(config("cloud9"), _context(head, tmp_path))


def test_a_launched_local_node_joins_with_its_type_s_resources_and_labels(head, tmp_path) -> None:
    import json

    import trio

    provider = LocalProvider(_context(head, tmp_path))

    async def scenario() -> tuple:
        await provider.launch(NodeType("gpu", {"CPU": 1, "accel": 2}, {"kind": "gpu"}), 1, "r1")
        (instance,) = (await provider.non_terminated()).values()
        try:
            status = await trio.to_thread.run_sync(head.cli, "status", "--json")
            return instance, json.loads(status.stdout)
        finally:
            await provider.terminate([instance.instance_id], "r2")

    instance, nodes = trio.run(scenario)
    assert instance.state == "running"
    (joined,) = [n for n in nodes if n["node_id"] == instance.node_id]
    assert joined["resources"] == {"CPU": 1.0, "accel": 2.0} and joined["labels"] == {"kind": "gpu"}
    assert trio.run(provider.non_terminated) == {}
