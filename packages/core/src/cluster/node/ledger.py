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
    # The node's GPU ids (as CUDA_VISIBLE_DEVICES names them); default: "0".."GPU-1".
    gpu_ids: list[str] | None = None
    available: dict[str, float] = attrs.field(init=False)
    gpu_free: dict[str, float] = attrs.field(init=False)  # each device: how much of it is free

    def __attrs_post_init__(self) -> None:
        self.available = dict(self.total)
        count = int(self.total.get("GPU", 0.0) + 1e-9)
        ids = list(self.gpu_ids or ())[:count]
        ids += [str(i) for i in range(count) if str(i) not in ids][:count - len(ids)]
        self.gpu_free = {gpu: 1.0 for gpu in ids}

    def can_assign_gpus(self, amount: float) -> bool:
        """Whether devices can be found for ``amount`` GPUs now: whole ones for 1 or more (a
        fraction above 1 is refused), one device with room for a fraction."""
        return self._pick_gpus(amount) is not None

    def assign_gpus(self, amount: float) -> list[str]:
        """Take devices for ``amount`` GPUs (the amount is taken from ``available`` by ``take``):
        a fraction goes to the fullest device it fits on, so fractions pack (two 0.5 on one)."""
        picked = self._pick_gpus(amount) or []
        share = amount if amount < 1 else 1.0
        for gpu in picked:
            self.gpu_free[gpu] -= share
        return picked

    def release_gpus(self, gpus: list[str], amount: float) -> None:
        share = amount if amount < 1 else 1.0
        for gpu in gpus:
            if gpu in self.gpu_free:
                self.gpu_free[gpu] = min(1.0, self.gpu_free[gpu] + share)

    def _pick_gpus(self, amount: float) -> list[str] | None:
        if amount <= 0:
            return []
        if amount < 1:
            fitting = [gpu for gpu, free in self.gpu_free.items() if free >= amount - 1e-9]
            return [min(fitting, key=lambda gpu: (self.gpu_free[gpu], gpu))] if fitting else None
        whole = [gpu for gpu, free in self.gpu_free.items() if free >= 1 - 1e-9]
        count = int(amount + 1e-9)
        return whole[:count] if len(whole) >= count and abs(amount - count) < 1e-9 else None

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

    def add(self, resources: Mapping[str, float]) -> None:
        """New resources on offer (a placement group's bundles, under the group's names)."""
        for name, amount in resources.items():
            self.total[name] = self.total.get(name, 0.0) + amount
            self.available[name] = self.available.get(name, 0.0) + amount

    def remove(self, resources: Mapping[str, float]) -> None:
        """Withdraw what ``add`` offered (names that reach zero go)."""
        for name, amount in resources.items():
            for table in (self.total, self.available):
                left = table.get(name, 0.0) - amount
                if abs(left) < 1e-9:
                    table.pop(name, None)
                else:
                    table[name] = left

    def room(self) -> dict[str, float]:
        """A copy of what is free, to plan with."""
        return dict(self.available)
