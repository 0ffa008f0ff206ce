"""cluster-autoscaler's messages (tags 300-399): what its head service is asked, and answers.

What travels where: a CLI (`cluster status`, `cluster up` waiting for min_workers) sends the
head ``ServiceRequest("autoscaler", GetStatus())``; the autoscaler service
(cluster_autoscaler.service) answers with its latest ``AutoscalerStatus``, which holds
``InstanceStatus``, ``DemandStatus``, ``DecisionStatus`` and ``LaunchFailure`` values.
"""

from __future__ import annotations

import attrs
from attrs.validators import deep_iterable, deep_mapping, instance_of, optional

from cluster.wire.messages import message

_str = instance_of(str)


def _map_of(value_type: type | tuple) -> object:
    return deep_mapping(key_validator=_str, value_validator=instance_of(value_type),
                        mapping_validator=instance_of(dict))


def _list_of(item_type: type) -> object:
    return deep_iterable(member_validator=instance_of(item_type), iterable_validator=instance_of(list))


@message(300)
@attrs.frozen
class GetStatus:
    """Ask the autoscaler for its latest report."""


@message(301)
@attrs.frozen
class InstanceStatus:
    """One of the provider's instances."""

    node_type: str = attrs.field(validator=_str)
    state: str = attrs.field(validator=_str)  # the provider's: "pending" or "running"
    node_id: str | None = attrs.field(default=None, validator=optional(_str))  # once its node joined


@message(302)
@attrs.frozen
class DemandStatus:
    """``count`` tasks or actors of ``shape`` wait for resources."""

    shape: dict = attrs.field(validator=_map_of((int, float)))
    count: int = attrs.field(validator=instance_of(int))


@message(303)
@attrs.frozen
class DecisionStatus:
    """What the policy decided about ``subject`` in the last round, and why."""

    kind: str = attrs.field(validator=_str)  # "launch", "terminate", "keep", "pending", "backoff"
    subject: str = attrs.field(validator=_str)  # a node type, an instance id, or a shape
    reason: str = attrs.field(validator=_str)


@message(304)
@attrs.frozen
class LaunchFailure:
    node_type: str | None = attrs.field(validator=optional(_str))
    message: str = attrs.field(validator=_str)
    at: float = attrs.field(validator=instance_of((int, float)))  # time.time()


@message(305)
@attrs.frozen
class AutoscalerStatus:
    """The autoscaler's report of its last round (``state`` "starting" before the first)."""

    state: str = attrs.field(validator=_str)
    cluster_name: str = attrs.field(validator=_str)
    provider: str = attrs.field(validator=_str)  # the provider's type
    instances: dict = attrs.field(factory=dict, validator=_map_of(InstanceStatus))  # by instance id
    launching: dict = attrs.field(factory=dict, validator=_map_of(int))  # node type -> being launched
    demand: list = attrs.field(factory=list, validator=_list_of(DemandStatus))
    decisions: list = attrs.field(factory=list, validator=_list_of(DecisionStatus))
    errors: list = attrs.field(factory=list, validator=_list_of(LaunchFailure))  # the latest 10
    min_workers: dict = attrs.field(factory=dict, validator=_map_of(int))  # by worker node type
    error: str = attrs.field(default="", validator=_str)  # why the last round failed, if it did
