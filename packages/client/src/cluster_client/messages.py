"""cluster-client's messages (tags 200-299): the payloads of its ``ServiceRequest``s and their replies.

What travels where:

- head (job manager) -> node, service ``job-runner`` (cluster_client.runner): ``StartJob``
  (answered by ``StartJobReply``), ``StopJob`` (answered by whether the node knew the job).
- worker -> its node, service ``job-runner``: ``PrepareWorkingDir`` (answered by the unpacked
  directory's path).
- node -> head, service ``jobs`` (cluster_client.jobs): ``FetchPackageChunk`` (answered by
  ``PackageChunk`` or ``PackageMissing``); ``JobRunning``, ``JobLog``, ``JobExited`` (answered
  by whether the head still has the job).

Job records do not travel on this wire: the HTTP API (cluster_client.http_api) serves them as
Ray's JSON.
"""

from __future__ import annotations

import attrs
from attrs.validators import and_, deep_mapping, ge, instance_of, optional

from cluster.wire.messages import message

_str = instance_of(str)
_opt_str = optional(instance_of(str))
_shape = deep_mapping(key_validator=_str, value_validator=instance_of((int, float)),
                      mapping_validator=instance_of(dict))
_str_map = deep_mapping(key_validator=_str, value_validator=_str, mapping_validator=instance_of(dict))

# --- jobs: the head and its nodes ---------------------------------------------------------


@message(200)
@attrs.frozen
class StartJob:
    """Run this job's entrypoint on the node, with ``shape`` reserved for it."""

    submission_id: str = attrs.field(validator=_str)
    entrypoint: str = attrs.field(validator=_str)
    shape: dict = attrs.field(validator=_shape)
    env_vars: dict = attrs.field(validator=_str_map)
    working_dir: str | None = attrs.field(default=None, validator=_opt_str)  # a package name


@message(201)
@attrs.frozen
class StartJobReply:
    started: bool = attrs.field(validator=instance_of(bool))
    reason: str = attrs.field(default="", validator=_str)  # why not (e.g. "busy")


@message(202)
@attrs.frozen
class StopJob:
    submission_id: str = attrs.field(validator=_str)


@message(203)
@attrs.frozen
class PrepareWorkingDir:
    """Unpack the uploaded package ``name`` on this node (once per node); answered by its path."""

    name: str = attrs.field(validator=_str)


@message(204)
@attrs.frozen
class FetchPackageChunk:
    name: str = attrs.field(validator=_str)
    offset: int = attrs.field(validator=and_(instance_of(int), ge(0)))


@message(205)
@attrs.frozen
class PackageChunk:
    data: bytes = attrs.field(validator=instance_of(bytes))  # from the offset asked for; empty at the end
    total: int = attrs.field(validator=instance_of(int))  # the package's size


@message(206)
@attrs.frozen
class PackageMissing:
    error: str = attrs.field(validator=_str)


@message(207)
@attrs.frozen
class JobRunning:
    submission_id: str = attrs.field(validator=_str)
    pid: int = attrs.field(validator=instance_of(int))


@message(208)
@attrs.frozen
class JobLog:
    submission_id: str = attrs.field(validator=_str)
    data: bytes = attrs.field(validator=instance_of(bytes))


@message(209)
@attrs.frozen
class JobExited:
    """The entrypoint exited with ``code`` (None: it never ran; then ``error`` says why)."""

    submission_id: str = attrs.field(validator=_str)
    code: int | None = attrs.field(validator=optional(instance_of(int)))
    error: str = attrs.field(default="", validator=_str)
