"""A daemon process: the head (with the node role for its own machine) or a node.

Run as ``python -m cluster.daemon`` by ``cluster start`` and ``cluster.init()``, never by hand.
It reads the cluster token as the first line of stdin, and once it accepts connections prints
one JSON line on stdout (its address, node id, pid, session dir); then stdout and stderr go to
its log file. With ``--exit-with-stdin`` it stops when stdin closes: a driver that started a
local cluster holds that pipe, so the cluster goes away with the driver, however it dies.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
import secrets
import signal
import socket
import sys
from typing import Any

import attrs
import structlog
import trio

from cluster import log as cluster_log
from cluster import session
from cluster.errors import ClusterError, ConfigError
from cluster.head.service import HeadService, NodeRecord
from cluster.head.tables import claim_identity
from cluster.node.service import NodeService
from cluster.plugins import get_plugin_manager, make_metadata_store, make_object_store
from cluster.wire import messages as m
from cluster.wire.connection import Connection, run_connection
from cluster.wire.handshake import server_handshake
from cluster.wire.streams import parse_address
from cluster.worker.zygote import Zygote, start_zygote

log = structlog.get_logger("cluster.daemon")
SHUTDOWN_GRACE_S = 5.0


def _port(what: str, hint: str) -> Any:
    def check(instance: Any, attribute: attrs.Attribute, value: int) -> None:
        if not isinstance(value, int) or not 0 <= value < 65536:
            raise ConfigError(f"{what} {value} is out of range (0-65535; {hint})")

    return check


_optional_port_check = _port("dashboard port", "0 picks a free port")


def _optional_port(instance: Any, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None:
        _optional_port_check(instance, attribute, value)


def _resource_amounts(instance: Any, attribute: attrs.Attribute, value: dict[str, Any]) -> None:
    for name, amount in value.items():
        if isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
            raise ConfigError(f"resource {name!r} must be a non-negative number, got {amount!r}")


def _labels(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"labels must map names to strings, got {value!r}")


def _positive_seconds(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"the heartbeat timeout must be a positive number of seconds, got {value!r}")


def _store_kind(instance: Any, attribute: attrs.Attribute, value: str) -> None:
    if value not in ("shared", "memory"):
        raise ConfigError(f'the object store must be "shared" or "memory", got {value!r}')


@attrs.frozen(kw_only=True)
class DaemonConfig:
    """How ``cluster start`` (or a provider) runs a daemon; it cannot exist invalid."""

    head: bool
    head_address: str | None
    host: str
    port: int = attrs.field(validator=_port("port", "0 picks a free port"))
    resources: dict[str, float] = attrs.field(validator=_resource_amounts)
    session_dir: str
    node_ip: str | None = None
    heartbeat_timeout_s: float = attrs.field(default=10.0, validator=_positive_seconds)
    exit_with_stdin: bool = False
    store_root: str | None = None
    object_store_memory: int | None = None
    spill_dir: str | None = None  # where this node spills; None: spilling off
    object_store: str = attrs.field(default="shared", validator=_store_kind)  # or "memory": each process keeps its objects
    # The head's HTTP endpoint (job API, ...; served by plugins): None = 8265, or a free port
    # if that one is taken; 0 = any free port; N = exactly N.
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int | None = attrs.field(default=None, validator=_optional_port)
    metadata_store: str | None = None  # URL; None: sqlite:///<session dir>/metadata.db
    labels: dict[str, str] = attrs.field(factory=dict, validator=_labels)  # e.g. from its node type
    autoscaling_config: str | None = None  # head: a cluster config to autoscale by (a plugin does)

    def __attrs_post_init__(self) -> None:
        if not self.head and not self.head_address:
            raise ConfigError("a node needs the head's address (--address HOST:PORT)")


class Router:
    """Dispatches each message to the service that handles its type."""

    def __init__(self) -> None:
        self.handlers: dict[type, Any] = {}

    def add(self, handlers: dict[type, Any]) -> None:
        self.handlers.update(handlers)

    def __call__(self, conn: Connection, msg: Any, request_id: int) -> None:
        handler = self.handlers.get(type(msg))
        if handler is None:
            conn.reply_error(request_id, "unexpected", f"this daemon does not handle {type(msg).__name__}")
            return
        handler(conn, msg, request_id)


class Services:
    """Plugin services' message handlers by name, shared by the head and node roles of a
    daemon (``head.services`` / ``node.services``): ``services.add("jobs", handler)``, then
    peers send ``ServiceRequest("jobs", payload)``. A handler is called on the trio thread
    as ``handler(conn, payload, request_id)`` and answers with ``conn.reply``/``reply_error``
    (or not at all, for one-way messages)."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}

    def add(self, name: str, handler: Any) -> None:
        if name in self.handlers:
            raise ValueError(f"a service named {name!r} is already registered in this daemon")
        self.handlers[name] = handler

    def __call__(self, conn: Connection, msg: m.ServiceRequest, request_id: int) -> None:
        handler = self.handlers.get(msg.service)
        if handler is None:
            conn.reply_error(request_id, "unexpected", f"this daemon runs no service {msg.service!r}; "
                             "is the plugin that provides it installed here?")
            return
        handler(conn, msg.payload, request_id)


def bind(config: DaemonConfig) -> socket.socket:
    """The daemon's listening socket, bound before anything else starts."""
    try:
        sock = socket.create_server((config.host, config.port), backlog=1024)
    except OSError as exc:
        raise ConfigError(
            f"could not listen on {config.host}:{config.port}: {exc.strerror}. Choose another "
            "port with --port (0 picks a free one)."
        ) from None
    return sock


async def run_daemon(
    config: DaemonConfig,
    token: str,
    sock: socket.socket,
    zygote: Zygote,
    *,
    drains: list | None = None,
    task_status: trio.TaskStatus[dict] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the head and/or node role on ``sock`` until cancelled. ``drains`` gets the
    async functions that let in-flight work finish before a graceful stop."""
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]
    port = sock.getsockname()[1]
    advertised = config.node_ip or (config.host if config.host not in ("0.0.0.0", "::", "") else
                                    _own_ip(toward=None if config.head else config.head_address))
    address = f"{advertised}:{port}"
    router = Router()
    services = Services()
    router.add({m.ServiceRequest: services})
    pm = get_plugin_manager()

    async def serve(stream: trio.SocketStream) -> None:
        try:
            peer_role = await server_handshake(stream, token, "head" if config.head else "node")
        except Exception as exc:  # a stranger, a wrong token, a version mismatch: refuse, log, go on
            log.warning("refused_connection", error=str(exc))
            await trio.aclose_forcefully(stream)
            return
        await run_connection(stream, "peer", peer_role, router)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve, listeners)
        head = None
        recovered = False  # a head started again on the metadata store of an earlier one
        if config.head:
            head = HeadService(session_dir=config.session_dir, address=address,
                               heartbeat_timeout_s=config.heartbeat_timeout_s,
                               dashboard_host=config.dashboard_host, dashboard_port=config.dashboard_port,
                               token=token, autoscaling_config=config.autoscaling_config)
            store_url = config.metadata_store or f"sqlite:///{os.path.join(config.session_dir, 'metadata.db')}"
            head.metadata = make_metadata_store(store_url)
            identity, recovered = claim_identity(head.metadata, token, store_url)
            head.cluster_id = identity.cluster_id
            log.info("cluster_identity", cluster_id=identity.cluster_id, recovered=recovered, store=store_url)
            head.services = services
            router.add(head.handlers())
            await nursery.start(head.run)
            for previous in head.previous_head_nodes:
                _remove_store(previous)
            for started in pm.hook.cluster_head_services(head=head):
                for service in started or ():
                    await nursery.start(service)
        node = NodeService(
            node_id=secrets.token_hex(8),
            address=address,
            head_address=address if config.head else config.head_address,
            token=token,
            resources=config.resources,
            labels=config.labels,
            session_dir=config.session_dir,
            is_head=config.head,
            store_root=config.store_root,
            store_capacity=config.object_store_memory,
            spill_dir=config.spill_dir,
            object_store=config.object_store,
            zygote=zygote,
        )
        node.services = services
        router.add(node.handlers())
        await nursery.start(node.run)
        if drains is not None:
            drains.append(node.drain)
        for started in pm.hook.cluster_node_services(node=node):
            for service in started or ():
                await nursery.start(service)
        task_status.started({"address": address, "node_id": node.node_id, "pid": os.getpid(),
                             "session_dir": config.session_dir, "store_path": node.store_path,
                             "dashboard_url": head.dashboard_url if head is not None else None,
                             "cluster_id": head.cluster_id if head is not None else None,
                             "recovered": recovered if head is not None else False})


def _remove_store(node: NodeRecord) -> None:
    """Remove the object store (and what it spilled) of a previous head process of this
    cluster: nobody serves it any more, and its objects were declared lost with its node."""
    if node.hostname != socket.gethostname() or not node.store_path:
        return
    try:
        make_object_store(node.store_path, {"node_id": node.node_id, "store_path": node.store_path,
                                            "store_capacity": node.store_capacity, "spill_dir": node.spill_dir,
                                            "object_store": node.object_store}).destroy()
    except Exception as exc:  # a store we cannot open is not worth failing the head's start
        log.warning("previous_store_not_removed", node_id=node.node_id, store_path=node.store_path, error=repr(exc))
    else:
        log.info("previous_store_removed", node_id=node.node_id, store_path=node.store_path)


# Where a route out of this machine starts, when nothing better is known (TEST-NET-1: a
# documentation address; asking the kernel for its route sends no packet).
_SOME_REMOTE_HOST = "192.0.2.1"


def _own_ip(*, toward: str | None) -> str:
    """The address other machines reach this one at, for a daemon listening on every interface
    with no --node-ip: the source address of the route toward ``toward`` (a node: the head),
    else what the hostname resolves to unless that is a loopback address (Debian maps the
    hostname to 127.0.1.1), else the source of the default route, else 127.0.0.1."""
    if toward is not None:
        routed = _route_source(parse_address(toward)[0])
        if routed:
            return routed
    try:
        named = socket.gethostbyname(socket.gethostname())
    except OSError:
        named = None
    if named and not ipaddress.ip_address(named).is_loopback:
        return named
    return _route_source(_SOME_REMOTE_HOST) or named or "127.0.0.1"


def _route_source(host: str) -> str | None:
    """This machine's address on the route to ``host`` (a UDP socket's connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((host, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return None


async def _main(config: DaemonConfig, token: str, sock: socket.socket, zygote: Zygote) -> None:
    drains: list = []
    stop = trio.Event()
    ready = False
    async with trio.open_nursery() as nursery:
        # Both from the very start: a node may wait long for its head before it is ready.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

            async def watch_signals() -> None:
                async for signum in signals:
                    log.info("daemon_stopping", signal=signal.Signals(signum).name)
                    if ready:
                        stop.set()  # let running work finish (below)
                    else:
                        nursery.cancel_scope.cancel()  # still starting: nothing runs yet
                    return

            nursery.start_soon(watch_signals)
            if config.exit_with_stdin:
                nursery.start_soon(_watch_stdin, nursery.cancel_scope)
            info = await nursery.start(functools.partial(run_daemon, drains=drains), config, token, sock, zygote)
            ready = True
            os.write(1, (json.dumps(info) + "\n").encode())
            log_path = os.path.join(config.session_dir, "logs", f"{'head' if config.head else 'node'}-{os.getpid()}.out")
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            log.info("daemon_ready", **info)
            await stop.wait()
        nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_GRACE_S
        for drain in drains:
            await drain()  # running tasks finish, within the grace (the deadline cuts it short)
        nursery.cancel_scope.cancel()


async def _watch_stdin(scope: trio.CancelScope) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(0))
    while await stdin.receive_some(1024):
        pass
    log.info("daemon_stopping", reason="the driver that started this cluster exited")
    scope.cancel()


def _raise_open_file_limit() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def parse_args(argv: list[str]) -> DaemonConfig:
    parser = argparse.ArgumentParser(prog="python -m cluster.daemon")
    parser.add_argument("--head", action="store_true")
    parser.add_argument("--address")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--node-ip")
    parser.add_argument("--resources", default="{}")
    parser.add_argument("--session-dir", required=True)
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0)
    parser.add_argument("--exit-with-stdin", action="store_true")
    parser.add_argument("--store-root")
    parser.add_argument("--object-store-memory", type=int)
    parser.add_argument("--spill-dir")
    parser.add_argument("--object-store", choices=("shared", "memory"), default="shared")
    parser.add_argument("--dashboard-host", default="127.0.0.1")
    parser.add_argument("--dashboard-port", type=int)
    parser.add_argument("--metadata-store")
    parser.add_argument("--labels", default="{}")
    parser.add_argument("--autoscaling-config")
    args = parser.parse_args(argv)
    return DaemonConfig(
        head=args.head,
        head_address=args.address,
        host=args.host,
        port=args.port,
        node_ip=args.node_ip,
        resources=json.loads(args.resources),
        session_dir=args.session_dir,
        heartbeat_timeout_s=args.heartbeat_timeout,
        exit_with_stdin=args.exit_with_stdin,
        store_root=args.store_root,
        object_store_memory=args.object_store_memory,
        spill_dir=args.spill_dir,
        object_store=args.object_store,
        dashboard_host=args.dashboard_host,
        dashboard_port=args.dashboard_port,
        metadata_store=args.metadata_store,
        labels=json.loads(args.labels),
        autoscaling_config=args.autoscaling_config,
    )


def main(argv: list[str] | None = None) -> None:
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except ClusterError as exc:  # a bad option: the message says which and what it takes
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    token = sys.stdin.readline().strip()
    role = "head" if config.head else "node"
    _raise_open_file_limit()  # every zero-copy object a worker holds keeps a mapping (and fd) open
    try:
        sock = bind(config)
        zygote = start_zygote(close_in_workers=[sock.fileno()])
        cluster_log.configure(os.path.join(config.session_dir, "logs"), f"{role}-{os.getpid()}")
        trio.run(_main, config, token, sock, zygote)
    except BaseException as exc:
        errors = [e for e in _leaves(exc) if isinstance(e, ClusterError)]
        if not errors:
            raise
        for exc in errors:
            print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    finally:
        session.remove_daemon_record(os.getpid())
        session.clear_current(os.getpid())


if __name__ == "__main__":
    main()
