"""Talking to the Kubernetes API with the official client: where the API is, and what its
errors mean in words a person can act on."""

from __future__ import annotations

import json
import os
import re
from typing import Any

from cluster_autoscaler.errors import ClusterConfigError

from cluster_k8s.manifests import Options


class KubernetesUnavailable(Exception):
    """The API cannot be reached, or refuses us; the message says which and what to do."""


def api_client(options: Options) -> Any:
    """An ApiClient: inside a Kubernetes pod, from its service account (the head's, whatever
    the config says: ``provider.kubeconfig`` names a file on the machine that ran `cluster
    up`); elsewhere from ``provider.kubeconfig``/``context``, else ``KUBECONFIG`` or
    ~/.kube/config."""
    from kubernetes import client, config

    if "KUBERNETES_SERVICE_HOST" not in os.environ:
        path = options.kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            return config.new_client_from_config(config_file=path, context=options.context,
                                                 persist_config=False)
        except (config.ConfigException, OSError, ValueError, TypeError) as exc:
            raise ClusterConfigError(
                f"cannot load the Kubernetes config {path}"
                + (f" (context {options.context!r})" if options.context else "") + f": {str(exc).rstrip('.')}. Point "
                "provider.kubeconfig or KUBECONFIG at a kubeconfig (kubectl uses the same), or run inside "
                "Kubernetes") from None
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException as exc:
        raise ClusterConfigError(f"cannot use this pod's service account for the Kubernetes API: {exc}") from None
    return client.ApiClient(configuration)


def describe(exc: BaseException, api: Any = None) -> str:
    """What went wrong in a call to the API, in one line."""
    from kubernetes.client import ApiException

    if isinstance(exc, ApiException):
        message = exc.reason or ""
        try:
            message = json.loads(exc.body).get("message") or message
        except (TypeError, ValueError, AttributeError):
            pass
        hint = {401: " (the credentials were not accepted: check the kubeconfig's user)",
                403: " (not allowed: the account needs the rights of the Role `cluster k8s manifests` renders)",
                }.get(exc.status or 0, "")
        return f"{exc.status} {message}{hint}"
    host = getattr(getattr(api, "configuration", None), "host", None)
    reason = getattr(exc, "reason", None) or exc  # urllib3 wraps the socket's error
    errno = re.search(r"\[Errno -?\d+\] ([^)\"']+)", str(reason))
    detail = errno.group(1).strip().lower() if errno else f"{type(reason).__name__}: {reason}"
    return (f"cannot reach the Kubernetes API{f' at {host}' if host else ''} ({detail}); is the cluster up, and "
            "is this the kubeconfig and context it is in?")


def status_of(exc: BaseException) -> int | None:
    from kubernetes.client import ApiException

    return exc.status if isinstance(exc, ApiException) else None
