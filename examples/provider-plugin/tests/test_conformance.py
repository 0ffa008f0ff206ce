"""The shell provider passes cluster's provider conformance kit against a real head.

Run with the package installed (``pip install -e .[test]``): the hook test finds the plugin
through its entry point, as cluster does.
"""

from __future__ import annotations

import json

import pytest
import trio
from cluster_autoscaler.config import ClusterConfig, NodeType, ProviderConfig
from cluster_autoscaler.errors import ClusterConfigError
from cluster_autoscaler.provider import ProviderContext, make_provider
from cluster_autoscaler.testing import KitTarget, ProviderConformance
from cluster_provider_shell.provider import ShellProvider

from cluster.testing import LocalCluster

# Small object stores: the checks start a few nodes side by side.
SMALL = NodeType("small", {"CPU": 1}, {"kind": "cpu"}, node_config={"extra_args": ["--object-store-memory", "64MB"]})
# `cluster start` rejects an unknown option: every launch of this type fails.
BROKEN = NodeType("broken", {"CPU": 1}, node_config={"extra_args": ["--no-such-option"]})


@pytest.fixture
def head(tmp_path, monkeypatch):
    """A real head on 127.0.0.1, in a private CLUSTER_TMPDIR (the nodes' records stay in there)."""
    monkeypatch.setenv("CLUSTER_TMPDIR", str(tmp_path / "root"))
    lc = LocalCluster(tmp_path / "root", num_cpus=1)
    lc.start()
    try:
        yield lc
    finally:
        lc.stop()


def _context(address: str, token: str, tmp_path) -> ProviderContext:
    return ProviderContext("kit", address, token, str(tmp_path / "provider-state"))


class TestShellProvider(ProviderConformance):
    @pytest.fixture
    def provider_kit(self, head, tmp_path):
        context = _context(head.address, head.token, tmp_path)
        yield KitTarget(
            make=lambda: ShellProvider(context, {"stop_grace_s": 10}),  # a new object, the same state dir
            node_type=SMALL,
            failing_node_type=BROKEN,
            settle_s=60,
        )


def test_the_hook_makes_a_shell_provider_for_provider_type_shell(tmp_path) -> None:
    from cluster_provider_shell import plugin

    def config(kind: str, **options) -> ClusterConfig:
        return ClusterConfig("kit", ProviderConfig(kind, options), {"head": NodeType("head", {"CPU": 1})}, "head")

    context = _context("127.0.0.1:1", "token", tmp_path)  # no head needed: nothing is launched
    provider = make_provider(config("shell", stop_grace_s=3), context)  # through the entry point
    assert type(provider) is ShellProvider and provider.stop_grace_s == 3
    assert plugin.cluster_make_provider(config("local"), context) is None  # other types: not ours
    with pytest.raises(ClusterConfigError, match="no option"):
        make_provider(config("shell", no_such_option=1), context)


def test_a_launched_node_joins_the_head_with_its_resources_and_labels(head, tmp_path) -> None:
    provider = ShellProvider(_context(head.address, head.token, tmp_path))
    gpu = NodeType("gpu", {"CPU": 1, "accel": 2}, {"kind": "gpu"},
                   node_config={"extra_args": ["--object-store-memory", "64MB"]})

    async def scenario() -> tuple:
        await provider.launch(gpu, 1, "r1")
        (instance,) = (await provider.non_terminated()).values()
        try:
            status = await trio.to_thread.run_sync(head.cli, "status", "--json")
            return instance, json.loads(status.stdout)
        finally:
            await provider.terminate([instance.instance_id], "r2")

    instance, nodes = trio.run(scenario)
    assert instance.state == "running" and instance.request_id == "r1/0"
    (joined,) = [n for n in nodes if n["node_id"] == instance.node_id]
    assert joined["resources"] == {"CPU": 1.0, "GPU": 0.0, "accel": 2.0}  # (`cluster start` adds GPU)
    assert joined["labels"] == {"kind": "gpu"}
    assert trio.run(provider.non_terminated) == {}
    assert trio.run(provider.poll_errors) == []


def test_a_failing_cluster_start_is_reported_with_its_last_stderr_line(tmp_path) -> None:
    provider = ShellProvider(_context("127.0.0.1:1", "token", tmp_path))  # fails before it dials the head

    async def scenario() -> list:
        await provider.launch(BROKEN, 2, "r1")  # does not raise
        return await provider.poll_errors()

    errors = trio.run(scenario)
    assert sorted(e.request_id for e in errors) == ["r1/0", "r1/1"]
    for error in errors:  # e.g. "`cluster start` for node type broken exited with code 2: Error: No such option ..."
        assert error.node_type == "broken" and "exited with code 2" in error.message, error
        assert "No such option" in error.message and "--no-such-option" in error.message, error
    assert trio.run(provider.non_terminated) == {}
    assert trio.run(provider.poll_errors) == []  # each reported once


def test_an_instance_terminated_while_it_starts_is_stopped_once_it_is_up(head, tmp_path) -> None:
    provider = ShellProvider(_context(head.address, head.token, tmp_path))

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(provider.launch, SMALL, 1, "r1")
            while not (listed := await ShellProvider(provider.context).non_terminated()):
                await trio.sleep(0.01)
            (instance,) = listed.values()
            assert instance.state == "pending"
            await provider.terminate([instance.instance_id], "r2")  # before `cluster start` is done
            assert await provider.non_terminated() == {}
        # launch returned: the daemon it started was stopped again
        assert await provider.non_terminated() == {}

    trio.run(scenario)
    assert [r for r in head.daemon_records() if r.get("role") != "head"] == []
    assert trio.run(provider.poll_errors) == []
