"""``cluster k8s manifests CONFIG``."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def k8s() -> None:
    """Run cluster on Kubernetes."""


@k8s.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(exists=True, dir_okay=False))
def manifests(config_path: str) -> None:
    """Print the head's manifests for CONFIG (provider type kubernetes) as YAML, for kubectl apply -f -.

    A fresh cluster token is generated into the Secret each time.
    """
    # The config and the manifests (yaml) load for this command only: every cluster command
    # imports this module for its command list.
    from cluster_autoscaler.config import parse_config

    from cluster_k8s.manifests import render, to_yaml, validate

    text = Path(config_path).read_text()
    try:
        docs = render(parse_config(text, config_path), text)
    except Exception as exc:  # ClusterConfigError: names the key (and line)
        raise click.ClickException(str(exc)) from None
    for doc in docs:
        validate(doc)
    click.echo(to_yaml(docs), nl=False)
