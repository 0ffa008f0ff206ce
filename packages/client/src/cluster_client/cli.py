"""``cluster job submit|status|logs|stop|list|delete``."""

from __future__ import annotations

import contextlib
import enum
import json
import shlex
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from cluster.resources import parse_size

if TYPE_CHECKING:
    from cluster_client.sdk import JobSubmissionClient

_address = click.option("--address", envvar="CLUSTER_API_ADDRESS",
                        help="The head's HTTP API, http://HOST:PORT [default: the cluster started here].")
_token = click.option("--token", envvar="CLUSTER_TOKEN", help="Cluster token [default: the local head's].")


def _client(address: str | None, token: str | None) -> JobSubmissionClient:
    from cluster_client.sdk import JobSubmissionClient  # (httpx loads only for `cluster job`)

    with _api_errors():
        return JobSubmissionClient(address, token)


@contextlib.contextmanager
def _api_errors() -> Iterator[None]:
    """The API's refusals and unreachable heads, as one-line CLI errors (never a traceback)."""
    from cluster_client.sdk import JobSubmissionError  # (httpx loads only for `cluster job`)

    try:
        yield
    except JobSubmissionError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def job() -> None:
    """Submit programs to the cluster as jobs, and follow them."""


@job.command(context_settings={"ignore_unknown_options": True})
@_address
@_token
@click.option("--submission-id", help="Id for the job [default: generated].")
@click.option("--working-dir", type=click.Path(exists=True, file_okay=False),
              help="A local directory to run the job in (uploaded; on sys.path of the job).")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Leave matching files of the working dir out (.gitignore syntax; repeatable).")
@click.option("--max-working-dir-size", default="1GiB", show_default=True,
              help="Refuse to upload a working dir larger than this (e.g. 500MB, 2GiB).")
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help="Environment variable for the job (repeatable).")
@click.option("--num-cpus", type=float, help="CPUs the entrypoint holds while it runs [default: 0].")
@click.option("--num-gpus", type=float, help="GPUs the entrypoint holds while it runs [default: 0].")
@click.option("--resources", help='Custom resources the entrypoint holds, as JSON, e.g. \'{"accel": 1}\'.')
@click.option("--metadata", multiple=True, metavar="KEY=VALUE", help="A label for the job (repeatable).")
@click.option("--no-wait", is_flag=True, help="Print the job's id and return; don't follow its logs.")
@click.argument("entrypoint", nargs=-1, required=True, type=click.UNPROCESSED)
def submit(address: str | None, token: str | None, submission_id: str | None, working_dir: str | None,
           excludes: tuple[str, ...], max_working_dir_size: str, env: tuple[str, ...],
           num_cpus: float | None, num_gpus: float | None, resources: str | None, metadata: tuple[str, ...],
           no_wait: bool, entrypoint: tuple[str, ...]) -> None:
    """Run ENTRYPOINT (a command: `cluster job submit -- python script.py`) as a job.

    Follows its output and exits with its status: 0 if it succeeded, its exit code if it failed.
    """
    command = entrypoint[0] if len(entrypoint) == 1 else shlex.join(entrypoint)
    try:
        extra = json.loads(resources) if resources else None
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--resources") from None
    client = _client(address, token)
    client.max_working_dir_bytes = parse_size(max_working_dir_size, "--max-working-dir-size")
    runtime_env: dict[str, Any] = {}
    if env:
        runtime_env["env_vars"] = _pairs(env, "--env")
    if working_dir:
        runtime_env.update(working_dir=working_dir, excludes=list(excludes))
    with _api_errors():
        job_id = client.submit_job(
            entrypoint=command, submission_id=submission_id, runtime_env=runtime_env or None,
            metadata=_pairs(metadata, "--metadata") or None,
            entrypoint_num_cpus=num_cpus, entrypoint_num_gpus=num_gpus, entrypoint_resources=extra,
        )
    if no_wait:
        click.echo(job_id)
        click.echo(f"Submitted job {job_id}. Follow it with: cluster job logs --follow {job_id}", err=True)
        return
    click.echo(f"Submitted job {job_id}; following its output (Ctrl-C stops following, not the job).", err=True)
    sys.exit(_follow_to_the_end(client, job_id))


def _follow_to_the_end(client: JobSubmissionClient, job_id: str) -> int:
    try:
        with _api_errors():
            _wait_while_pending(client, job_id)
            for text in client.follow_job_logs(job_id):
                click.echo(text, nl=False)
            info = client.get_job_info(job_id)
    except KeyboardInterrupt:
        click.echo(f"\nStopped following; job {job_id} goes on (cluster job stop {job_id} stops it).", err=True)
        return 130
    click.echo(f"Job {job_id} {info.status}: {info.message.splitlines()[0] if info.message else ''}", err=True)
    if info.status == "SUCCEEDED":
        return 0
    if info.status == "FAILED" and info.driver_exit_code and info.driver_exit_code > 0:
        return info.driver_exit_code
    return 1


def _wait_while_pending(client: JobSubmissionClient, job_id: str) -> None:
    """Say why the job waits (each new reason once) until it runs or ends."""
    said = None
    while True:
        info = client.get_job_info(job_id)
        if info.status != "PENDING":
            return
        if info.message != said:
            click.echo(f"Job {job_id} is PENDING: {info.message}", err=True)
            said = info.message
        time.sleep(0.2)


@job.command()
@_address
@_token
@click.argument("job_id")
def status(address: str | None, token: str | None, job_id: str) -> None:
    """Show a job's status and what it is doing."""
    with _api_errors():
        info = _client(address, token).get_job_info(job_id)
    click.echo(f"{job_id}: {info.status}")
    if info.message:
        click.echo(info.message)


@job.command()
@_address
@_token
@click.option("--follow", "-f", is_flag=True, help="Keep printing as the job prints, until it ends.")
@click.argument("job_id")
def logs(address: str | None, token: str | None, follow: bool, job_id: str) -> None:
    """Print a job's output (kept after the job ends)."""
    client = _client(address, token)
    with _api_errors():
        if follow:
            for text in client.follow_job_logs(job_id):
                click.echo(text, nl=False)
        else:
            click.echo(client.get_job_logs(job_id), nl=False)


@job.command()
@_address
@_token
@click.option("--no-wait", is_flag=True, help="Return once asked; don't wait until it has stopped.")
@click.argument("job_id")
def stop(address: str | None, token: str | None, no_wait: bool, job_id: str) -> None:
    """Stop a job: SIGTERM to its processes, SIGKILL after a grace period."""
    client = _client(address, token)
    with _api_errors():
        if not client.stop_job(job_id):
            click.echo(f"Job {job_id} had already ended ({client.get_job_status(job_id)}).")
            return
        click.echo(f"Stopping job {job_id}...", err=True)
        while not no_wait and not client.get_job_status(job_id).is_terminal():
            time.sleep(0.2)
        click.echo(f"Job {job_id} {client.get_job_status(job_id)}.")


@job.command(name="list")
@_address
@_token
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def list_jobs(address: str | None, token: str | None, as_json: bool) -> None:
    """List the cluster's jobs, oldest first."""
    with _api_errors():
        jobs = _client(address, token).list_jobs()
    if as_json:
        import attrs

        click.echo(json.dumps([attrs.asdict(j, value_serializer=_plain) for j in jobs], indent=2))
        return
    if not jobs:
        click.echo("No jobs.")
        return
    click.echo(f"{'SUBMISSION ID':24} {'STATUS':10} ENTRYPOINT")
    for info in jobs:
        click.echo(f"{info.submission_id:24} {info.status.value:10} {info.entrypoint}")


@job.command()
@_address
@_token
@click.argument("job_id")
def delete(address: str | None, token: str | None, job_id: str) -> None:
    """Forget a finished job and its logs."""
    with _api_errors():
        _client(address, token).delete_job(job_id)
    click.echo(f"Deleted job {job_id}.")


def _pairs(items: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        out[key] = value
    return out


def _plain(_inst: Any, _field: Any, value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value
