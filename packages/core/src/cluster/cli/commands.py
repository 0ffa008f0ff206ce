"""The ``cluster`` command line. Subcommands come from plugins (``cluster_add_commands``)."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from cluster import session
from cluster.errors import ClusterConnectionError, ClusterError, ConfigError, RemoteCallError
from cluster.head.tables import stored_identity
from cluster.launch import START_TIMEOUT_S, spawn_daemon
from cluster.plugins import get_plugin_manager, make_metadata_store
from cluster.resources import format_shape, parse_size, resources_arg, total_demand
from cluster.wire import messages as m
from cluster.wire.connection import dial
from cluster.wire.headlink import head_wait_s
from cluster.wire.streams import parse_address

DEFAULT_HEAD_PORT = 6380
RECENT_FAILURES = 10  # faults `cluster status` lists


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cluster-core", prog_name="cluster")
def cli() -> None:
    """Run Python functions as tasks on a cluster of machines."""


@click.command()
@click.option("--head", is_flag=True, help="Start the head of a new cluster on this machine.")
@click.option("--address", help="Join the cluster whose head is at HOST:PORT.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=None, help=f"Port to listen on [head: {DEFAULT_HEAD_PORT}, node: any free port; 0 = any].")
@click.option("--node-ip", help="Address other machines reach this node at (default: --host).")
@click.option("--num-cpus", type=float, help="CPUs this node offers [default: all].")
@click.option("--num-gpus", type=float, help="GPUs this node offers [default: 0].")
@click.option("--resources", default="{}", help='Custom resources as JSON, e.g. \'{"accel": 2}\'.')
@click.option("--labels", default="{}", help='Labels of this node as JSON, e.g. \'{"zone": "a"}\'.')
@click.option("--object-store-memory", help="Bytes of shared memory for this node's object store, e.g. 2GB [default: 30% of RAM].")
@click.option("--object-spilling-dir", help="Where objects spill when the store is full [default: the session dir].")
@click.option("--no-object-spilling", is_flag=True, help="Never spill: a full store raises ObjectStoreFullError.")
@click.option("--object-store", type=click.Choice(["shared", "memory"]), default="shared", show_default=True,
              help="shared: one shared-memory store per node (zero-copy between processes); memory: "
                   "each process keeps its own objects in its memory (for a tiny /dev/shm).")
@click.option("--token", envvar="CLUSTER_TOKEN", help="Cluster token (to join; default: the local head's).")
@click.option("--heartbeat-timeout", type=float, default=10.0, show_default=True, help="Seconds before a silent node is declared dead.")
@click.option("--dashboard-host", default="127.0.0.1", show_default=True, help="Head: interface of the HTTP API (jobs).")
@click.option("--dashboard-port", type=int, help="Head: port of the HTTP API [default: 8265, or a free one if taken; 0 = any].")
@click.option("--autoscaling-config", type=click.Path(exists=True, dir_okay=False),
              help="Head: autoscale by this cluster config (YAML; needs cluster-autoscaler; `cluster up` sets it).")
@click.option("--metadata-store", help="Head: where job records and other metadata are kept, as a URL "
                                       "[default: sqlite:///<session dir>/metadata.db]. Reuse one to keep records across restarts; "
                                       "with cluster-redis, redis://[:PASSWORD@]HOST:PORT/DB or unix:///PATH/redis.sock keeps them in Redis.")
@click.option("--block", is_flag=True, help="Stay in the foreground until interrupted.")
def start(
    head: bool, address: str | None, host: str, port: int | None, node_ip: str | None,
    num_cpus: float | None, num_gpus: float | None, resources: str, labels: str, object_store_memory: str | None,
    object_spilling_dir: str | None, no_object_spilling: bool, object_store: str,
    token: str | None, heartbeat_timeout: float, dashboard_host: str, dashboard_port: int | None,
    autoscaling_config: str | None, metadata_store: str | None, block: bool,
) -> None:
    """Start a head (--head) or a node that joins one (--address HOST:PORT)."""

    if head == bool(address):
        raise click.UsageError("give exactly one of --head (new cluster) or --address HOST:PORT (join one)")
    resources_json = resources_arg(num_cpus, num_gpus, resources)
    try:
        labels_json = json.dumps(json.loads(labels))
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--labels") from None
    store_bytes = parse_size(object_store_memory, "--object-store-memory") if object_store_memory else None
    if address:
        head_host, _ = parse_address(address)
        if _is_loopback(host) and not node_ip and not _is_loopback(head_host):
            click.echo(f"Warning: this node will listen on {host} only, but it joins a head at {address}: "
                       "the head and other machines cannot reach it there. Pass --host <this machine's "
                       "address> (or --host 0.0.0.0, and --node-ip if others reach it at another).", err=True)
        token = token or _local_token_for(address)
        if not token:
            raise ConfigError(
                f"no token to join {address}: pass --token (the head's `cluster start --head` printed "
                "the join command with it) or set CLUSTER_TOKEN"
            )
    session_dir = session.new_session_dir("session" if head else "node")
    token_file = None
    if head:
        token = token or _stored_token(metadata_store) or session.new_token()
        token_file = str(session.write_token(session_dir, token))
    args = ["--session-dir", str(session_dir), "--host", host, "--resources", resources_json, "--labels", labels_json,
            "--port", str(port if port is not None else (DEFAULT_HEAD_PORT if head else 0)),
            "--heartbeat-timeout", str(heartbeat_timeout)]
    args += ["--head"] if head else ["--address", address]
    if block:  # the daemon goes with this process, however it ends (in a container: PID 1)
        args += ["--exit-with-stdin"]
    if node_ip:
        args += ["--node-ip", node_ip]
    if store_bytes:
        args += ["--object-store-memory", str(store_bytes)]
    if object_store != "shared":
        args += ["--object-store", object_store]
    if head:
        args += ["--dashboard-host", dashboard_host]
        if dashboard_port is not None:
            args += ["--dashboard-port", str(dashboard_port)]
        if metadata_store:
            args += ["--metadata-store", metadata_store]
        if autoscaling_config:
            args += ["--autoscaling-config", os.path.abspath(autoscaling_config)]
    if no_object_spilling and object_spilling_dir:
        raise click.UsageError("--object-spilling-dir and --no-object-spilling contradict each other")
    if not no_object_spilling:
        args += ["--spill-dir", os.path.abspath(object_spilling_dir or session_dir / "spill")]
    role = "head" if head else "node"
    click.echo(f"Starting a {role} daemon...", err=True)
    # A node waits for a head that is not up yet (being started or restarted), within bounds.
    timeout = START_TIMEOUT_S if head else START_TIMEOUT_S + head_wait_s()
    proc, info = spawn_daemon(args, token, session_dir, keep_stdin=block, timeout=timeout)
    info.update(role=role, token_file=token_file, start_time=session.process_start_time(proc.pid))
    session.record_daemon(info)
    if head:
        session.write_current({"address": info["address"], "pid": info["pid"],
                               "session_dir": str(session_dir), "token_file": token_file,
                               "dashboard_url": info.get("dashboard_url"), "cluster_id": info.get("cluster_id")})
    cpus = json.loads(resources_json)["CPU"]
    if head:
        if info.get("recovered"):
            click.echo(f"Started the head of cluster {info['cluster_id']} again at {info['address']} ({cpus:g} "
                       f"CPUs), pid {info['pid']}: its nodes, actors' names and jobs come back from "
                       f"{metadata_store}.")
        else:
            click.echo(f"Started the head of a new cluster {info.get('cluster_id')} at {info['address']} "
                       f"({cpus:g} CPUs), pid {info['pid']}.")
        click.echo(f"  session dir: {session_dir}")
        click.echo(f"  token file:  {token_file} (mode 0600)")
        if info.get("dashboard_url"):
            click.echo(f"  HTTP API:    {info['dashboard_url']} (jobs: cluster job submit -- python script.py)")
        if _is_loopback(parse_address(info["address"])[0]):
            click.echo("To add a node on this machine, run (other machines cannot reach a head on loopback; "
                       "start it with --host IP for them):")
            click.echo(f"  cluster start --address {info['address']} --token {token}")
        else:
            click.echo("To join another machine to this cluster, run there:")
            click.echo(f"  cluster start --address {info['address']} --token {token} --host <its address>")
        click.echo("To use it from Python on this machine:  cluster.init()")
        click.echo("To stop what `cluster start` started here:  cluster stop")
    else:
        click.echo(f"Started node {info['node_id']} at {info['address']} ({cpus:g} CPUs), pid {info['pid']}, "
                   f"joined to the cluster at {address}.")
    if block:
        _wait_in_foreground(proc, session_dir)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: only "localhost" is surely this machine alone
        return host == "localhost"


def _wait_in_foreground(proc: Any, session_dir: Path) -> None:
    """Wait for the daemon; Ctrl-C or SIGTERM (how Kubernetes stops a container) stop it
    gracefully. Exits with the daemon's code when it ends on its own with an error."""
    click.echo("Running in the foreground; press Ctrl-C to stop.", err=True)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        while proc.poll() is None:
            try:
                proc.wait()
            except KeyboardInterrupt:
                stop()
    finally:
        session.remove_daemon_record(proc.pid)
    if proc.returncode and not stopping:
        click.echo(f"The daemon exited with code {proc.returncode}; see its log in {session_dir / 'logs'}.",
                   err=True)
        raise SystemExit(proc.returncode)


def _stored_token(metadata_store: str | None) -> str | None:
    """The token of the cluster whose head kept its tables in ``metadata_store`` before (a
    head started again is the same cluster: nodes and drivers reconnect with that token)."""
    if not metadata_store:
        return None  # the default store is new with each session
    store = make_metadata_store(metadata_store)
    try:
        identity = stored_identity(store)
    finally:
        store.close()
    return identity.token if identity is not None else None


def _local_token_for(address: str) -> str | None:
    current = session.read_current()
    if current is not None and current.get("address") == address and current.get("token_file"):
        return session.read_token(current["token_file"])
    for record in session.list_daemons():
        if record.get("address") == address and record.get("token_file"):
            return session.read_token(record["token_file"])
    return None


@click.command()
@click.option("--grace", type=float, default=10.0, show_default=True, help="Seconds to wait before killing.")
def stop(grace: float) -> None:
    """Stop every daemon `cluster start` started on this machine (and their workers)."""
    records = session.list_daemons()
    ours = []
    for record in records:
        pid = record["pid"]
        if session.pid_alive(pid) and session.process_start_time(pid) == record.get("start_time"):
            ours.append(record)
        else:  # it died without cleaning up (killed, or its machine rebooted): do it for it
            if record.get("store_path"):
                shutil.rmtree(record["store_path"], ignore_errors=True)
            session.remove_daemon_record(pid)
    if not ours:
        click.echo("No cluster daemons are running on this machine.")
        return
    # Nodes first, so they don't log the head's disappearance as a failure.
    ours.sort(key=lambda r: r.get("role") == "head")
    for record in ours:
        click.echo(f"Stopping {record.get('role', 'daemon')} pid {record['pid']} ({record.get('address')})...", err=True)
        _signal_group(record["pid"], signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(session.pid_alive(r["pid"]) for r in ours):
        time.sleep(0.05)
    for record in ours:
        # The daemon is its process group's leader; its zygote and workers share the group.
        killed = session.pid_alive(record["pid"])
        _signal_group(record["pid"], signal.SIGKILL)
        if killed and record.get("store_path"):
            shutil.rmtree(record["store_path"], ignore_errors=True)  # it had no chance to clean up
        session.remove_daemon_record(record["pid"])
        session.clear_current(record["pid"])
    click.echo(f"Stopped {len(ours)} daemon(s): pids {', '.join(str(r['pid']) for r in ours)}.")


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass


@click.command()
@click.option("--address", help="Head address HOST:PORT [default: the cluster started on this machine].")
@click.option("--token", envvar="CLUSTER_TOKEN", help="Cluster token [default: the local head's].")
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as JSON.")
@click.option("--explain", is_flag=True, help="Also say why each pending demand waits and each idle node stays "
                                              "(with an autoscaler).")
def status(address: str | None, token: str | None, as_json: bool, explain: bool) -> None:
    """List the cluster's nodes with their used and total resources, and what waits."""
    nodes = _fetch_nodes(address, token)
    if as_json:
        click.echo(json.dumps(nodes, indent=2))
        return
    alive = [n for n in nodes if n["state"] == "alive"]
    head = next((n["address"] for n in nodes if n["is_head"]), address)
    click.echo(f"Cluster at {head}: {len(alive)} node(s) alive, {len(nodes) - len(alive)} dead")
    names = sorted({k for n in nodes for k in n["resources"]} - {"CPU", "GPU"})
    header = ["NODE", "ADDRESS", "STATE", "CPU used/total", "GPU used/total", *names]
    rows = [header]
    for n in nodes:
        total, avail = n["resources"], n["available"]

        def used(name: str, total: dict = total, avail: dict = avail) -> str:
            t = total.get(name, 0.0)
            return f"{t - avail.get(name, t) if avail else 0:g}/{t:g}"

        rows.append([n["node_id"] + (" (head)" if n["is_head"] else ""), n["address"], n["state"],
                     used("CPU"), used("GPU"), *(used(k) for k in names)])
    _print_table([[str(c) for c in row] for row in rows])
    dead = [n for n in nodes if n["state"] != "alive"]
    if dead:
        click.echo("Dead nodes:")
        for n in sorted(dead, key=lambda n: n.get("died_at") or 0):
            click.echo(f"  {n['node_id']} at {n['address']}: {n.get('death_reason') or 'dead'}{_ago(n.get('died_at'))}")
    demand = total_demand(n.get("demand") for n in alive)
    if not demand:
        click.echo("Pending demand: none")
    else:
        click.echo("Pending demand (work waiting for resources):")
        for item in demand:
            note = "  (no node of the cluster can fit it)" if item["infeasible"] else ""
            click.echo(f"  {item['count']} x {format_shape(item['shape'])}{note}")

    def request(msg: Any) -> Any:
        async def ask(connect: Any) -> Any:
            return await (await connect()).request(msg)

        return _ask_cluster(address, token, ask)


    failures = request(m.ListFailures())
    if failures:
        click.echo(f"Recent failures (last {min(len(failures), RECENT_FAILURES)} of {len(failures)} kept):")
        for failure in failures[-RECENT_FAILURES:]:
            click.echo(f"  {failure.kind}: {failure.what}{_ago(failure.when)}")

    for lines in get_plugin_manager().hook.cluster_status_lines(request=request, explain=explain):
        for line in lines or ():
            click.echo(line)


def _ago(when: float | None) -> str:
    """`` (12s ago, at 14:03:07)`` for a wall-clock time; "" for none."""
    if not when:
        return ""
    seconds = max(0.0, time.time() - when)
    since = f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f} min"
    return f" ({since} ago, at {time.strftime('%H:%M:%S', time.localtime(when))})"


def _head_and_token(address: str | None, token: str | None) -> tuple[str, str]:
    if address is None:
        current = session.read_current()
        if current is None:
            raise ConfigError("no cluster is running on this machine; pass --address HOST:PORT, or start one with `cluster start --head`")
        address = current["address"]
    token = token or _local_token_for(address)
    if not token:
        raise ConfigError(f"no token for {address}: pass --token or set CLUSTER_TOKEN")
    return address, token


def _ask_cluster(address: str | None, token: str | None, ask: Any) -> Any:
    """Run ``await ask(dial_head_or_peer)`` against the cluster; our errors come out unwrapped."""
    import trio


    address, token = _head_and_token(address, token)

    async def run() -> Any:
        async with trio.open_nursery() as nursery:
            async def connect(peer: str | None = None, what: str = "the cluster") -> Any:
                return await dial(nursery, peer or address, token, "cli", lambda *a: None, what=what)

            result = await ask(connect)
            nursery.cancel_scope.cancel()
        return result

    try:
        return trio.run(run)
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None


def _fetch_nodes(address: str | None, token: str | None) -> list[dict]:
    """The head's node table (for status and memory)."""

    async def ask(connect: Any) -> list:
        return await (await connect()).request(m.ListNodes())

    return _ask_cluster(address, token, ask)


async def _ask_every_owner(connect: Any, request: Any) -> tuple[list[dict], list[dict], list, list[str]]:
    """Send ``request`` to every driver and worker of the cluster.

    Returns (nodes, owners, [(owner, reply)...], what did not answer).
    """
    import trio


    head = await connect()
    nodes = await head.request(m.ListNodes())
    owners = list(await head.request(m.ListDrivers()))
    unanswered: list[str] = []
    replies: list = []

    async def workers_of(node: dict) -> None:
        try:
            conn = await connect(node["address"], f"node {node['node_id']}")
            owners.extend(await conn.request(m.ListWorkers()))
        except (ClusterConnectionError, RemoteCallError):
            unanswered.append(f"node {node['node_id']} ({node['address']})")

    async def ask(owner: dict) -> None:
        try:
            conn = await connect(owner["address"], f"{owner['kind']} pid {owner['pid']}")
            with trio.fail_after(10):
                replies.append((owner, await conn.request(request)))
        except (ClusterConnectionError, RemoteCallError, trio.TooSlowError):
            unanswered.append(f"{owner['kind']} pid {owner['pid']} ({owner['address']})")

    async with trio.open_nursery() as nursery:
        for node in nodes:
            if node["state"] == "alive":
                nursery.start_soon(workers_of, node)
    async with trio.open_nursery() as nursery:
        for owner in owners:
            nursery.start_soon(ask, owner)
    return nodes, owners, replies, unanswered


def _fetch_objects(address: str | None, token: str | None, limit: int) -> tuple[list[dict], list[dict], list[str]]:
    """(nodes, the largest objects of every owner in the cluster, owners that did not answer).

    Borrowers in the objects' ``referenced_by`` are named by kind and pid where known.
    """

    async def ask(connect: Any) -> tuple:
        nodes, owners, replies, unanswered = await _ask_every_owner(connect, m.ListObjects(limit))
        rows = [row for _, reply in replies for row in reply]
        rows.sort(key=lambda row: row["size"], reverse=True)
        names = {o["address"]: f"{o['kind']} pid {o['pid']}" for o in owners}
        for row in rows:
            row["referenced_by"] = [_name_borrower(reason, names) for reason in row["referenced_by"]]
        return nodes, rows[:limit], unanswered

    return _ask_cluster(address, token, ask)


def _fetch_actors(address: str | None, token: str | None) -> tuple[list[dict], list[str]]:
    """Every actor: what its owner knows (state, restarts, name) joined with where it runs."""

    async def ask(connect: Any) -> tuple:
        _, _, replies, unanswered = await _ask_every_owner(connect, m.ListActors())
        actors: dict[str, dict] = {}
        for owner, reply in replies:
            for row in reply.owned:
                row["owner"] = f"{owner['kind']} pid {owner['pid']}"
                actors.setdefault(row["actor_id"], {}).update(row)
        for owner, reply in replies:
            hosted = reply.hosting
            if hosted:  # the worker that *is* the actor: where it runs, for sure
                row = actors.setdefault(hosted["actor_id"], {"state": "alive", "restarts": 0, "name": "",
                                                             "owner": "(exited; detached)", "cause": ""})
                row.update(hosted, node_id=owner.get("node_id", ""), pid=owner["pid"])
        return list(actors.values()), unanswered

    return _ask_cluster(address, token, ask)


def _name_borrower(reason: str, names: dict[str, str]) -> str:
    prefix = "borrowed by "
    if reason.startswith(prefix):
        address, _, count = reason[len(prefix):].partition(" ")
        if address in names:
            return f"{prefix}{names[address]} at {address} {count}"
    return reason


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _print_objects(nodes: list[dict], objects: list[dict], unanswered: list[str]) -> None:
    node_names = {n["node_id"]: n["node_id"] + (" (head)" if n["is_head"] else "") for n in nodes}
    by_address = {n["address"]: n["node_id"] for n in nodes}
    rows = [["OBJECT", "SIZE", "STATE", "WHERE", "OWNER", "REFERENCED BY"]]
    for o in objects:
        where = [node_names.get(o["node_id"], o["node_id"])] if o["node_id"] else []
        where += [by_address.get(a, a) + " (copy)" for a in o["copies"] if by_address.get(a) != o["node_id"]]
        rows.append([o["object_id"][:16] + "…", _human(o["size"]), o["state"], ", ".join(where) or "-",
                     f"{o['owner_kind']} pid {o['owner_pid']}", "; ".join(o["referenced_by"]) or "-"])
    if len(rows) == 1:
        click.echo("No objects are alive in the cluster.")
    else:
        _print_table(rows)
    for who in unanswered:
        click.echo(f"(no answer from {who}; its objects are not listed)", err=True)


@click.command()
@click.option("--address", help="Head address HOST:PORT [default: the cluster started on this machine].")
@click.option("--token", envvar="CLUSTER_TOKEN", help="Cluster token [default: the local head's].")
@click.option("--objects", "top", type=click.IntRange(min=0), default=10, show_default=True,
              help="Also list this many of the largest objects, with their owners (0: none).")
def memory(address: str | None, token: str | None, top: int) -> None:
    """Show each node's object store (use, capacity, spilled, transfers) and the largest objects."""
    if top:
        nodes, objects, unanswered = _fetch_objects(address, token, top)
    else:
        nodes, objects, unanswered = _fetch_nodes(address, token), [], []
    rows = [["NODE", "STATE", "STORE USED", "CAPACITY", "USE", "OBJECTS", "COPIES", "SPILLED", "SPILLED OBJECTS",
             "PULLED"]]
    for n in nodes:
        store = n.get("store", {})
        used = store.get("used", 0)
        capacity = n.get("store_capacity") or 0
        share = f"{100 * used / capacity:.1f}%" if capacity else "-"
        spilled = _human(store.get("spilled", 0)) if n.get("spill_dir") else "off"
        pulled = f"{store.get('pulled', 0)} ({_human(store.get('pulled_bytes', 0))})"
        copies = f"{store.get('copies', 0)} ({_human(store.get('copies_bytes', 0))})"
        rows.append([n["node_id"] + (" (head)" if n["is_head"] else ""), n["state"], _human(used),
                     _human(capacity), share, str(store.get("objects", 0)), copies, spilled,
                     str(store.get("spilled_objects", 0)), pulled])
    _print_table(rows)
    if top:
        click.echo("")
        click.echo(f"Largest objects (up to {top}):")
        _print_objects(nodes, objects, unanswered)


@click.group(name="list")
def list_group() -> None:
    """List the cluster's state: actors, objects."""


@list_group.command(name="actors")
@click.option("--address", help="Head address HOST:PORT [default: the cluster started on this machine].")
@click.option("--token", envvar="CLUSTER_TOKEN", help="Cluster token [default: the local head's].")
@click.option("--json", "as_json", is_flag=True, help="Print the actors as JSON.")
def list_actors(address: str | None, token: str | None, as_json: bool) -> None:
    """Actors of the cluster: name, class, state, node, pid, restarts."""
    actors, unanswered = _fetch_actors(address, token)
    actors.sort(key=lambda a: (a.get("state") != "alive", a.get("class", ""), a.get("name", "")))
    if as_json:
        click.echo(json.dumps(actors, indent=2))
    elif not actors:
        click.echo("No actors in the cluster.")
    else:
        rows = [["ACTOR", "CLASS", "NAME", "STATE", "NODE", "PID", "RESTARTS", "OWNER", "WHY DEAD"]]
        for a in actors:
            alive = a.get("state") == "alive"
            rows.append([a["actor_id"][:16], a.get("class", "?"), a.get("name") or "-", a.get("state", "?"),
                         a.get("node_id", "") if alive else "-", str(a.get("pid", "")) if alive else "-",
                         str(a.get("restarts", 0)), a.get("owner", "?"), a.get("cause") or "-"])
        _print_table(rows)
    for who in unanswered:
        click.echo(f"(no answer from {who}; its actors are not listed)", err=True)


@list_group.command(name="objects")
@click.option("--address", help="Head address HOST:PORT [default: the cluster started on this machine].")
@click.option("--token", envvar="CLUSTER_TOKEN", help="Cluster token [default: the local head's].")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Show at most this many, largest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the objects as JSON.")
def list_objects(address: str | None, token: str | None, limit: int, as_json: bool) -> None:
    """Objects alive in the cluster, largest first: size, where, owner, and what holds them."""
    nodes, objects, unanswered = _fetch_objects(address, token, limit)
    if as_json:
        click.echo(json.dumps(objects, indent=2))
        for who in unanswered:
            click.echo(f"(no answer from {who}; its objects are not listed)", err=True)
        return
    _print_objects(nodes, objects, unanswered)


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} B"


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def builtin_commands() -> list[click.Command]:
    return [start, stop, status, memory, list_group]


def main(argv: list[str] | None = None) -> None:

    try:
        get_plugin_manager().hook.cluster_add_commands(cli=cli)
        cli.main(args=argv, prog_name="cluster", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClusterError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except BaseExceptionGroup as group:
        inner = _unwrap(group)
        if isinstance(inner, ClusterError):
            click.echo(f"Error: {inner}", err=True)
            sys.exit(1)
        raise
