"""cluster-client's messages (tags 200-299): the payloads of its ``ServiceRequest``s and their replies.

What travels where:

- head (job manager) -> node, service ``job-runner`` (cluster_client.runner): ``StartJob``
  (answered by ``StartJobReply``), ``StopJob`` (answered by whether the node knew the job).
- worker -> its node, service ``job-runner``: ``PrepareWorkingDir`` (answered by the unpacked
  directory's path).
- node -> head, service ``jobs`` (cluster_client.jobs): ``FetchPackageChunk`` (answered by
  ``PackageChunk`` or ``PackageMissing``); ``JobRunning``, ``JobLog``, ``JobExited`` (answered
  by whether the head still has the job).
- remote client -> head, service ``client`` (cluster_client.relay): ``OpenSession`` (answered
  by ``SessionOpened``), ``RelayCall`` (answered by the proxy's ``CallResult``).
- proxy driver -> head, service ``client``: ``AttachProxy`` (answered by True),
  ``SessionOutput`` (one-way).
- head -> proxy driver, service ``client-call``: the client's ``Call``; the proxy answers
  ``CallResult``, which the head passes on to the client.
- head -> remote client: service ``client-output`` carries core's ``LogLines`` (what the
  session's workers print), service ``client-end`` a ``SessionEnded``.

Job records do not travel on this wire: the HTTP API (cluster_client.http_api) serves them as
Ray's JSON.
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs.validators import and_, deep_mapping, ge, in_, instance_of, optional

from cluster.wire import messages as m
from cluster.wire.messages import message

_str = instance_of(str)
_opt_str = optional(instance_of(str))
_shape = deep_mapping(key_validator=_str, value_validator=instance_of((int, float)),
                      mapping_validator=instance_of(dict))
_str_map = deep_mapping(key_validator=_str, value_validator=_str, mapping_validator=instance_of(dict))
_counts = deep_mapping(key_validator=instance_of(bytes), value_validator=instance_of(int),
                       mapping_validator=instance_of(dict))

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


# --- remote client mode: the client, the head's relay and the proxy driver ------------------


@message(220)
@attrs.frozen
class OpenSession:
    """A remote client asks for a session: the head starts a proxy driver for it."""


@message(221)
@attrs.frozen
class SessionOpened:
    session: str = attrs.field(validator=_str)
    head_address: str = attrs.field(validator=_str)
    address: str = attrs.field(validator=_str)  # the proxy driver's (it owns the client's objects)
    node_id: str = attrs.field(validator=_str)
    session_dir: str | None = attrs.field(validator=_opt_str)
    pid: int = attrs.field(validator=instance_of(int))  # the proxy driver's, on the head's machine


@message(222)
@attrs.frozen
class AttachProxy:
    """The proxy driver of ``session`` is up and takes calls on this connection."""

    session: str = attrs.field(validator=_str)
    address: str = attrs.field(validator=_str)
    node_id: str = attrs.field(validator=_str)
    session_dir: str | None = attrs.field(validator=_opt_str)
    pid: int = attrs.field(validator=instance_of(int))


# What a remote client's runtime asks of its proxy driver: the op (a method of the proxy,
# cluster_client.proxy, ``op_<name>``) and the names of its arguments, in order.
CALL_OPS: dict[str, tuple[str, ...]] = {
    "submit": ("fields",),
    "create_actor": ("name", "methods", "options", "blob", "payload", "deps", "held"),
    "actor_call": ("spec", "method", "num_returns", "payload", "deps", "held", "group"),
    "put": ("value",),
    "get": ("refs", "timeout"),
    "wait": ("refs", "num_returns", "timeout"),
    "cancel": ("ref", "force", "recursive"),
    "kill_actor": ("spec", "no_restart"),
    "named_actor": ("name", "namespace"),
    "handle_escaped": ("actor_id",),
    "release": ("refs", "handles"),
    "nodes": (),
}


@message(223)
@attrs.frozen
class Call:
    """One call of a remote client's runtime, for its proxy driver to run: ``op`` one of
    ``CALL_OPS``, ``args`` its positional arguments, cloudpickled (they are the runtime's
    Python values: task payloads, put values, handles). The proxy checks them against the op's
    arguments before it runs anything (``check_args``)."""

    op: str = attrs.field(validator=in_(CALL_OPS))
    args: bytes = attrs.field(validator=instance_of(bytes))

    @staticmethod
    def check_args(op: str, args: Any) -> None:
        """Raise TypeError, naming what the op takes, unless ``args`` fits ``op``."""
        names = CALL_OPS[op]
        if type(args) is not tuple or len(args) != len(names):
            got = f"{len(args)} argument(s)" if type(args) is tuple else f"a {type(args).__name__}"
            raise TypeError(f"the client's call {op!r} takes {len(names)} argument(s) "
                            f"({', '.join(names) or 'none'}), got {got}; are the client and the "
                            "cluster the same version of cluster-client?")


@message(224)
@attrs.frozen
class RelayCall:
    """From the client of ``session``: pass ``call`` to its proxy driver, and the answer back."""

    session: str = attrs.field(validator=_str)
    call: Call = attrs.field(validator=instance_of(Call))


@message(225)
@attrs.frozen
class CallResult:
    """What a ``Call`` returned (``raised``: the exception it raised), cloudpickled, and the
    refs and actor handles the proxy granted the client with it (id -> how many)."""

    value: bytes = attrs.field(validator=instance_of(bytes))
    raised: bool = attrs.field(validator=instance_of(bool))
    refs: dict = attrs.field(factory=dict, validator=_counts)
    handles: dict = attrs.field(factory=dict, validator=_counts)


@message(226)
@attrs.frozen
class SessionOutput:
    """What a worker of ``session`` printed, from its proxy driver, for the client's console."""

    session: str = attrs.field(validator=_str)
    lines: m.LogLines = attrs.field(validator=instance_of(m.LogLines))


@message(227)
@attrs.frozen
class SessionEnded:
    """To the client: its session is over, and why."""

    reason: str = attrs.field(validator=_str)
