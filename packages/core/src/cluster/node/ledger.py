"""A node's resources as a value: what it has, what is free, and who may take what.

No I/O: :class:`~cluster.node.service.NodeService` asks it before granting a lease and tells it
when a lease, a reservation or a lent CPU comes back. Unit-tested without processes.

Imports: cluster.resources only.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from cluster.resources import fits


@attrs.define
class ResourceLedger:
    total: dict[str, float]
    available: dict[str, float] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.available = dict(self.total)

    def fits(self, shape: Mapping[str, float]) -> bool:
        """Whether ``shape`` fits in what is free now."""
        return fits(shape, self.available)

    def could_ever_fit(self, shape: Mapping[str, float]) -> bool:
        """Whether ``shape`` fits in this node at all (all of it free)."""
        return fits(shape, self.total)

    def take(self, shape: Mapping[str, float]) -> bool:
        """Take ``shape`` out of what is free if it fits now; False (and nothing taken) if not."""
        if not fits(shape, self.available):
            return False
        for name, amount in shape.items():
            self.available[name] = self.available.get(name, 0.0) - amount
        return True

    def give_back(self, shape: Mapping[str, float], lent_cpu: float = 0.0) -> None:
        """Return what ``take`` took; ``lent_cpu`` of its CPU was given back already (``lend``)."""
        for name, amount in shape.items():
            if name == "CPU":
                amount -= lent_cpu
            self.available[name] = self.available.get(name, 0.0) + amount

    def lend(self, cpu: float) -> None:
        """A holder waits (a task blocked in get): its CPU is free for others meanwhile."""
        self.available["CPU"] = self.available.get("CPU", 0.0) + cpu

    def reclaim(self, cpu: float) -> None:
        """The holder runs again: it takes back the CPU it lent (even if others hold it now:
        the node is then over-committed until one of them finishes, as Ray's is)."""
        self.available["CPU"] = self.available.get("CPU", 0.0) - cpu

    def room(self) -> dict[str, float]:
        """A copy of what is free, to plan with."""
        return dict(self.available)
