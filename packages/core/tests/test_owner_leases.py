"""An owner's leases, driven without processes: a lease goes back to its node once idle."""

from __future__ import annotations

from typing import Any

import trio

from cluster.owner.runtime import Runtime
from cluster.owner.tasks import Lease, PendingTask, ShapeQueue
from cluster.wire import messages as m

SHAPE = (("CPU", 1.0),)


class FakeConnection:
    """What a lease uses of its connections: sends are recorded, a request gets ``answer``."""

    def __init__(self, answer: Any = None) -> None:
        self.answer = answer
        self.sent: list[Any] = []
        self.sent_functions: set[bytes] = set()
        self.closed = False
        self.context: Any = None

    async def request(self, msg: Any) -> Any:
        return self.answer

    def send(self, msg: Any) -> None:
        self.sent.append(msg)


def a_task(n: int) -> PendingTask:
    return PendingTask(bytes([n]) * 16, "f", b"function id", b"function", b"args", [], 1, [bytes([n]) * 20],
                       SHAPE, 0, False)


def test_a_lease_whose_last_task_is_taken_back_goes_back_to_its_node() -> None:
    # The victim had a running task and one queued behind it. The owner asked for the queued
    # one back; meanwhile the running one finished (its results left in_flight with the queued
    # task still in it, so they did not mark the lease idle). The steal takes the last task,
    # which goes to the other lease: the victim is idle, and must go back like any idle lease.
    runtime = Runtime(token="t", head_address="127.0.0.1:1", node=None, role="driver")
    queued = a_task(2)
    other = Lease(1, FakeConnection(), FakeConnection(), SHAPE, idle_since=0.0)
    victim = Lease(2, FakeConnection(), FakeConnection(answer=[queued.task_id]), SHAPE,
                   in_flight={queued.task_id: queued})
    queue = runtime._queues[SHAPE] = ShapeQueue(SHAPE, leases=[other, victim])

    async def main() -> None:
        await runtime._steal(queue, victim)
        with trio.move_on_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(runtime._linger_loop)
                while not victim.returned:
                    await trio.sleep(0.01)
                nursery.cancel_scope.cancel()

    trio.run(main)
    assert queued.lease is other and other.in_flight == {queued.task_id: queued}
    assert victim.returned
    assert victim.node_conn.sent == [m.ReturnLease(2, True)]
    assert not other.returned
