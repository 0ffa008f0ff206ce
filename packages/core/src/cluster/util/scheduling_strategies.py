"""Ray's ``ray.util.scheduling_strategies``: where a task or actor runs.

Pass one as ``scheduling_strategy=`` to ``@cluster.remote`` or ``.options()``, beside the
strings ``"DEFAULT"`` and ``"SPREAD"``:

- :class:`NodeAffinitySchedulingStrategy` ``(node_id, soft)``: on that node;
- :class:`NodeLabelSchedulingStrategy` ``(hard, soft=)``: on nodes whose labels match
  (:class:`In`, :class:`NotIn`, :class:`Exists`, :class:`DoesNotExist`); the ``label_selector=``
  option says the same in Ray 2.49's syntax (``{"zone": "in(a,b)"}``);
- :class:`PlacementGroupSchedulingStrategy`: in a placement group's bundle.

The classes live in :mod:`cluster.scheduling` (core's options read them there).
"""

from cluster.scheduling import (
    DoesNotExist,
    Exists,
    In,
    NodeAffinitySchedulingStrategy,
    NodeLabelSchedulingStrategy,
    NotIn,
    PlacementGroupSchedulingStrategy,
)

__all__ = [
    "DoesNotExist",
    "Exists",
    "In",
    "NodeAffinitySchedulingStrategy",
    "NodeLabelSchedulingStrategy",
    "NotIn",
    "PlacementGroupSchedulingStrategy",
]
