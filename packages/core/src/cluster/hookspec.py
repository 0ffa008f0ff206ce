"""The hooks through which plugins extend cluster (pluggy project name ``cluster``).

Plugins are modules or objects with functions marked ``@cluster.hookimpl`` and are found
through the entry-point group ``cluster.plugins``. Everything built in is a plugin too
(``cluster.builtins``: store, spilling, metadata, scheduler, cli), registered the same way, and any plugin can be switched off by name
with ``CLUSTER_DISABLE_PLUGINS=name1,name2``.

Hooks are synchronous. Where a hook contributes something long-running, it returns an async
callable that the daemon starts in its nursery with ``await nursery.start(fn)``; the callable
must take ``task_status`` and call ``task_status.started()`` once it is ready.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click
    from cluster_store import ObjectStore, SpillTarget

    from cluster.contracts import DriverRuntime, Head, MetadataStore, Node, SchedulingPolicy

hookspec = pluggy.HookspecMarker("cluster")
hookimpl = pluggy.HookimplMarker("cluster")

Service = Callable[..., Awaitable[Any]]

# --- command line ------------------------------------------------------------------------


@hookspec
def cluster_add_commands(cli: click.Group) -> None:
    """Add subcommands to the ``cluster`` command line.

    ``cli`` is the top-level click group; call ``cli.add_command(...)``. Implemented by any
    distribution with commands of its own (``cluster job``, ``cluster up``). Return nothing.
    """


@hookspec
def cluster_status_lines(request: Callable[[Any], Any], explain: bool) -> list[str] | None:
    """Add lines to `cluster status` (``explain``: `cluster status --explain`).

    ``request(msg)`` sends one message to the head and returns its reply (raising
    ``cluster.errors.RemoteCallError`` if the head refuses it, e.g. for a ServiceRequest to
    a service it does not run). Return the lines to print, or None. cluster-autoscaler adds
    its instances, launches, demand and decisions.
    """


# --- daemons -----------------------------------------------------------------------------


@hookspec
def cluster_head_services(head: Head) -> list[Service] | None:
    """Return services to run in the head daemon (e.g. an HTTP API, the autoscaler).

    Each is ``async def service(*, task_status)``, started with ``nursery.start`` after the
    head accepts connections, and cancelled when the head shuts down.
    """


@hookspec
def cluster_node_services(node: Node) -> list[Service] | None:
    """Return services to run in every node daemon (same contract as head services)."""


# --- building blocks (the first plugin to answer wins) -------------------------------------


@hookspec(firstresult=True)
def cluster_make_object_store(path: str, node: dict[str, Any]) -> ObjectStore | None:
    """Build the object store for a node whose store directory is ``path``.

    Called in every process that reads or writes a node's objects (node daemon, workers,
    drivers). Return an object with cluster_store.ObjectStore's methods, or None to let the
    next plugin answer. The built-in plugin returns ``cluster_store.ObjectStore(path,
    spill_target=cluster.plugins.make_spill_target(node))`` (see
    ``cluster_make_spill_target``).
    """


@hookspec(firstresult=True)
def cluster_make_spill_target(node: dict[str, Any]) -> SpillTarget | None:
    """Build where a node's object store moves objects when it is full; None: spilling off.

    ``node`` is the node description (``node["node_id"]``, ``node["spill_dir"]``: the
    node's spill directory, None if the user turned spilling off, ...). Called by
    ``cluster_make_object_store`` (the built-in one calls it through
    ``cluster.plugins.make_spill_target``) in every process that opens the node's store:
    any of them may spill an object and any other restore it, so all must get a target
    naming the same place (see ``cluster_store.SpillTarget`` for what a target guarantees).
    Return a ``cluster_store.SpillTarget``, or None to let the next plugin answer; the first
    answer wins. The built-in plugin returns ``cluster_store.DirectorySpillTarget(spill_dir)``,
    or None when ``spill_dir`` is None. A plugin with another target (a bucket, a remote disk)
    implements this with ``@hookimpl(tryfirst=True)``, and should return None when
    ``spill_dir`` is None so that ``--no-object-spilling`` still turns spilling off.
    """


@hookspec(firstresult=True)
def cluster_make_provider(config: Any, context: Any) -> Any:
    """Build the node provider for an autoscaled cluster (cluster-autoscaler's contract,
    ``cluster_autoscaler.provider.Provider``; typed ``Any`` here because these are the types of
    cluster-autoscaler, a distribution built on core, which core cannot name).

    ``config`` is the ``ClusterConfig``: answer only if ``config.provider.type`` is yours
    (return None otherwise), reading your options from ``config.provider.options``.
    ``context`` is a ``ProviderContext``: the cluster's name, the head address new nodes
    join, the token, and a directory you may keep state in. cluster-autoscaler answers
    ``local`` and ``fake``; cluster-k8s answers ``kubernetes``.
    """


@hookspec(firstresult=True)
def cluster_provider_up(config: Any, config_path: str, timeout: float) -> bool | None:
    """``cluster up CONFIG`` for a provider whose head does not run on this machine: create
    the head where the provider runs things, wait for it (and ``min_workers``) with progress
    on stderr, and say how to reach it. Return True, or None when ``config.provider.type``
    is not yours; raise ``click.ClickException`` with what to do when it cannot be done.
    cluster-autoscaler brings up ``local`` and ``fake`` itself; cluster-k8s answers
    ``kubernetes``.
    """


@hookspec(firstresult=True)
def cluster_provider_down(config: Any, config_path: str) -> bool | None:
    """``cluster down CONFIG`` for the providers of ``cluster_provider_up``: remove the head,
    every node and everything else ``up`` created. Return True, or None when not yours."""


@hookspec(firstresult=True)
def cluster_connect(address: str, token: str | None) -> DriverRuntime | None:
    """Connect this process to a cluster at an address with a scheme (``cluster://HOST:PORT``).

    Return a started runtime (a :class:`cluster.contracts.DriverRuntime`: what ``cluster.api``
    asks of a runtime), or None when the scheme is not yours; the first answer
    wins. cluster-client answers ``cluster://``: remote client mode, through the head.
    """


@hookspec(firstresult=True)
def cluster_working_dir(package: str) -> str | None:
    """The local directory of a job's working dir ``package`` (``pkg_<hash>.zip``), fetched and
    unpacked on this node if need be; None if you don't provide working dirs.

    Called in a worker, from its executing thread, the first time it loads a function or
    actor class submitted by a job that has a working dir; the worker puts the path on
    ``sys.path``. cluster-client implements it (it asks the node's job runner).
    """


@hookspec(firstresult=True)
def cluster_make_metadata_store(url: str) -> MetadataStore | None:
    """Open the head's metadata store named by ``url`` (``cluster start --head
    --metadata-store URL``; default ``sqlite:///<session dir>/metadata.db``).

    Return an object with :class:`cluster.contracts.MetadataStore`'s methods, or None when the
    URL's scheme is not yours; the first answer wins. Core answers ``sqlite:///PATH``
    (cluster-redis ``redis://``, ``rediss://`` and ``unix://``); a store proves itself with
    ``cluster.testing.MetadataStoreConformance``. Called once, in the head daemon, before head
    services start.
    """


@hookspec(firstresult=True)
def cluster_make_scheduler(node: Node) -> SchedulingPolicy | None:
    """Build the policy a node daemon places every lease request it receives with.

    Return a :class:`cluster.contracts.SchedulingPolicy` (core's: :class:`cluster.node.policy.SchedulingPolicy`),
    or None to let the next plugin answer; the first answer wins, and the built-in plugin
    ``scheduler`` answers last. Called once per node daemon, as it starts.
    """
