"""The provider conformance kit: the contract of ``cluster_autoscaler.provider``, as tests.

A provider package subclasses ``ProviderConformance`` in its own tests and gives it a
``provider_kit`` fixture; pytest then runs every check against that provider::

    from cluster_autoscaler.testing import KitTarget, ProviderConformance

    class TestMyProvider(ProviderConformance):
        @pytest.fixture
        def provider_kit(self, tmp_path):
            yield KitTarget(make=lambda: MyProvider(...), node_type=NodeType("small", {"CPU": 1}),
                            failing_node_type=NodeType("broken", {"CPU": 1}))

The checks:
- a launch shows up in ``non_terminated`` with its node type;
- the same request id launches once;
- terminate makes an instance go, and ids it does not know are ignored;
- instance ids are unique;
- a failing launch is reported by ``poll_errors`` once, with its node type and a message;
- a second provider object sees the same instances (state is not private to one object).

"Eventually" means within ``KitTarget.settle_s``: the contract lets a provider lag.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio

from cluster_autoscaler.config import NodeType


@attrs.frozen
class KitTarget:
    make: Callable[[], Any]  # a new provider object (the same backing state each time)
    node_type: NodeType  # one the provider can launch
    failing_node_type: NodeType | None = None  # one whose launches fail (None: skip that check)
    settle_s: float = 60.0  # how long "eventually" may take


def _request() -> str:
    return f"kit-{uuid.uuid4().hex[:12]}"


async def _until(check: Callable[[], Awaitable[Any]], settle_s: float, what: str) -> Any:
    deadline = time.monotonic() + settle_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"the provider did not get there within {settle_s:.0f}s: {what}")
        await trio.sleep(0.2)


class ProviderConformance:
    """Subclass me with a ``provider_kit`` fixture yielding a ``KitTarget``."""

    @pytest.fixture
    def kit(self, provider_kit: KitTarget) -> Any:
        """The target, and afterwards: terminate whatever the checks left running."""
        yield provider_kit

        async def cleanup() -> None:
            provider = provider_kit.make()
            left = await provider.non_terminated()
            if left:
                await provider.terminate(list(left), _request())
            await _until(lambda: _none_left(provider), provider_kit.settle_s, "every instance terminated")

        trio.run(cleanup)

    def test_a_launch_shows_up_with_its_node_type_and_terminate_makes_it_go(self, kit: KitTarget) -> None:
        async def check() -> None:
            provider = kit.make()
            before = set(await provider.non_terminated())
            await provider.launch(kit.node_type, 1, _request())
            new = await _until(lambda: _new_instances(provider, before), kit.settle_s, "the launched instance listed")
            assert len(new) == 1, new
            (instance,) = new.values()
            assert instance.node_type == kit.node_type.name
            assert instance.state in ("pending", "running")
            await provider.terminate([instance.instance_id], _request())
            await _until(lambda: _gone(provider, instance.instance_id), kit.settle_s, "the instance gone")

        trio.run(check)

    def test_the_same_request_id_launches_once(self, kit: KitTarget) -> None:
        async def check() -> None:
            provider = kit.make()
            before = set(await provider.non_terminated())
            request = _request()
            await provider.launch(kit.node_type, 1, request)
            await provider.launch(kit.node_type, 1, request)  # a retry of the same request
            await kit.make().launch(kit.node_type, 1, request)  # even from another provider object
            await _until(lambda: _new_instances(provider, before), kit.settle_s, "the instance listed")
            await trio.sleep(min(2.0, kit.settle_s / 10))  # give a second instance time to show, if any
            assert len(await _new_instances(provider, before)) == 1

        trio.run(check)

    def test_ids_are_unique_and_unknown_ids_are_ignored(self, kit: KitTarget) -> None:
        async def check() -> None:
            provider = kit.make()
            before = set(await provider.non_terminated())
            await provider.launch(kit.node_type, 2, _request())
            new = await _until(lambda: _new_instances(provider, before, 2), kit.settle_s, "two instances listed")
            assert len(set(new)) == 2
            await provider.terminate(["no-such-instance"], _request())  # no error
            assert set(new) <= set(await provider.non_terminated())
            assert set(new) <= set(await kit.make().non_terminated())  # another object sees them too

        trio.run(check)

    def test_a_failing_launch_is_reported_once_as_data(self, kit: KitTarget) -> None:
        if kit.failing_node_type is None:
            pytest.skip("the provider_kit names no failing node type")

        async def check() -> None:
            provider = kit.make()
            request = _request()
            await provider.launch(kit.failing_node_type, 1, request)  # must not raise

            async def reported() -> list:
                return [e for e in await provider.poll_errors() if e.node_type == kit.failing_node_type.name]

            errors = await _until(reported, kit.settle_s, "the failed launch reported by poll_errors")
            assert errors[0].message and isinstance(errors[0].message, str)
            assert not [e for e in await provider.poll_errors() if e.request_id == errors[0].request_id]
            listed = await provider.non_terminated()
            assert not [i for i in listed.values() if i.node_type == kit.failing_node_type.name and
                        i.state == "running"]

        trio.run(check)


async def _new_instances(provider: Any, before: set, at_least: int = 1) -> dict:
    new = {k: v for k, v in (await provider.non_terminated()).items() if k not in before}
    return new if len(new) >= at_least else {}


async def _gone(provider: Any, instance_id: str) -> bool:
    return instance_id not in await provider.non_terminated()


async def _none_left(provider: Any) -> bool:
    return not await provider.non_terminated()
