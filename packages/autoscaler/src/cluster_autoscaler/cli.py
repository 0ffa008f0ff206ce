"""``cluster up CONFIG`` / ``cluster down CONFIG``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from cluster import session
from cluster.cli.commands import _ask_cluster
from cluster.plugins import get_plugin_manager

UP_TIMEOUT_S = 180.0
LOCAL_TYPES = ("local", "fake")  # providers whose head runs on this machine


def _config(path: str) -> Any:
    # The config, the service and the providers (some 25 ms) load only when `cluster up` or
    # `cluster down` runs: every cluster command imports this module for its command list.
    from cluster_autoscaler.config import load_config

    try:
        return load_config(path)
    except Exception as exc:  # ClusterConfigError names the key and line
        raise click.ClickException(str(exc)) from None


def _head_record(state_dir: str) -> dict | None:
    try:
        return json.loads((Path(state_dir) / "head.json").read_text())
    except (OSError, ValueError):
        return None


def _alive(record: dict) -> bool:
    return session.pid_alive(record["pid"]) and session.process_start_time(record["pid"]) == record.get("start_time")


@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(exists=True, dir_okay=False))
@click.option("--timeout", type=float, default=UP_TIMEOUT_S, show_default=True,
              help="Seconds to wait for the head and min_workers.")
def up(config_path: str, timeout: float) -> None:
    """Start the cluster CONFIG describes: its head, with the autoscaler, then its min_workers."""
    from cluster_autoscaler.service import state_dir  # loaded when run (see _config)

    config = _config(config_path)
    if config.provider.type not in LOCAL_TYPES:
        if get_plugin_manager().hook.cluster_provider_up(config=config, config_path=config_path, timeout=timeout):
            return
        raise click.ClickException(
            f"no installed plugin brings up provider type {config.provider.type!r} (cluster up starts "
            f"{', '.join(LOCAL_TYPES)} itself; pip install cluster-k8s for 'kubernetes'); or start the head where "
            f"it should run with `cluster start --head --autoscaling-config {config_path}`")
    folder = state_dir(config.cluster_name)
    record = _head_record(folder)
    if record is not None and _alive(record):
        raise click.ClickException(f"cluster {config.cluster_name!r} is already up (head at {record['address']}, "
                                   f"pid {record['pid']}); `cluster down {config_path}` stops it")
    head_type = config.node_types[config.head_node_type]
    resources = dict(head_type.resources)
    cpus = resources.pop("CPU", 0)
    click.echo(f"Starting the head of {config.cluster_name!r} ({config.head_node_type})...", err=True)
    args = [sys.executable, "-m", "cluster", "start", "--head", "--autoscaling-config", os.path.abspath(config_path),
            "--num-cpus", str(cpus), "--resources", json.dumps(resources), "--labels", json.dumps(dict(head_type.labels)),
            "--port", str(head_type.node_config.get("port", 0))]
    if "dashboard_port" in head_type.node_config:
        args += ["--dashboard-port", str(head_type.node_config["dashboard_port"])]
    started = subprocess.run(args, capture_output=True, text=True)
    if started.returncode != 0:
        raise click.ClickException(f"the head did not start:\n{started.stderr.strip() or started.stdout.strip()}")
    current = session.read_current()
    record = {"pid": current["pid"], "address": current["address"], "token_file": current["token_file"],
              "start_time": session.process_start_time(current["pid"])}
    (Path(folder) / "head.json").write_text(json.dumps(record))
    click.echo(f"Head up at {record['address']} (pid {record['pid']}).", err=True)
    _wait_for_min_workers(config, record, timeout)
    click.echo(f"Cluster {config.cluster_name!r} is up. Use it: cluster.init({record['address']!r}); "
               f"see it: cluster status --explain; stop it: cluster down {config_path}")


def _wait_for_min_workers(config: Any, record: dict, timeout: float) -> None:
    from cluster_autoscaler.service import ask_status  # loaded when run (see _config)

    wanted = {t.name: t.min_workers for t in config.worker_types if t.min_workers}
    if not wanted:
        return
    deadline = time.monotonic() + timeout
    said = None
    while True:
        report = _ask_cluster(record["address"], None, ask_status)
        running: dict[str, int] = {}
        for instance in report.instances.values():
            if instance.state == "running":
                running[instance.node_type] = running.get(instance.node_type, 0) + 1
        progress = ", ".join(f"{name} {min(running.get(name, 0), n)}/{n}" for name, n in sorted(wanted.items()))
        if progress != said:
            click.echo(f"Waiting for min_workers: {progress}", err=True)
            said = progress
        if all(running.get(name, 0) >= n for name, n in wanted.items()):
            return
        if time.monotonic() > deadline:
            errors = "; ".join(f"{e.node_type}: {e.message}" for e in report.errors)
            raise click.ClickException(f"min_workers were not up within {timeout:.0f}s ({progress})"
                                       + (f"; launch errors: {errors}" if errors else "")
                                       + ". The head is still up: cluster status --explain, or cluster down")
        time.sleep(0.5)


@click.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(exists=True, dir_okay=False))
def down(config_path: str) -> None:
    """Stop the cluster CONFIG describes: its head first (so nothing relaunches), then every node."""
    import trio

    # loaded when run (see _config)
    from cluster_autoscaler.provider import ProviderContext, make_provider
    from cluster_autoscaler.service import state_dir

    config = _config(config_path)
    if config.provider.type not in LOCAL_TYPES:
        if get_plugin_manager().hook.cluster_provider_down(config=config, config_path=config_path):
            return
        raise click.ClickException(f"no installed plugin takes down provider type {config.provider.type!r} "
                                   "(pip install cluster-k8s for 'kubernetes')")
    folder = state_dir(config.cluster_name)
    record = _head_record(folder)
    if record is not None and _alive(record):
        click.echo(f"Stopping the head (pid {record['pid']})...", err=True)
        _stop(record["pid"])
        session.remove_daemon_record(record["pid"])
        session.clear_current(record["pid"])
    (Path(folder) / "head.json").unlink(missing_ok=True)
    provider = make_provider(config, ProviderContext(config.cluster_name, record["address"] if record else "", "",
                                                     folder))

    async def terminate_all() -> int:
        instances = await provider.non_terminated()
        if instances:
            click.echo(f"Terminating {len(instances)} node(s): {', '.join(sorted(instances))}...", err=True)
            await provider.terminate(list(instances), f"down-{int(time.time())}")
        deadline = time.monotonic() + 60
        while await provider.non_terminated():
            if time.monotonic() > deadline:
                raise click.ClickException("some nodes did not stop within 60s; run cluster down again")
            await trio.sleep(0.2)
        return len(instances)

    count = trio.run(terminate_all)
    click.echo(f"Cluster {config.cluster_name!r} is down (head and {count} node(s) stopped).")


def _stop(pid: int, grace: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while session.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if session.pid_alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
