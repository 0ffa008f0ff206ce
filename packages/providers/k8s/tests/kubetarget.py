"""What a test is given to reach a Kubernetes API (see conftest.py), and a polling helper."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import attrs
import yaml


@attrs.frozen
class KubeTarget:
    kubeconfig: str
    namespace: str
    image: str
    listen_host: str  # what pods listen on: the fake's pods share this machine's loopback
    fake: Any = None  # the FakeKube, or None on a real cluster

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig, persist_config=False)

    def provider_options(self, **extra: Any) -> dict[str, Any]:
        """On a real cluster the head's pod uses its service account, and this machine KUBECONFIG;
        the fake's kubeconfig is a file here, named in the config for both."""
        options = {"type": "kubernetes", "namespace": self.namespace, "image": self.image,
                   "listen_host": self.listen_host, **extra}
        if self.fake is not None:
            options.setdefault("kubeconfig", self.kubeconfig)
        return options


def wait_until(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubeconfig_of_nowhere(path: Path) -> int:
    """Write a kubeconfig whose API server is a port where nothing listens; returns the port."""
    port = free_port()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "gone",
        "clusters": [{"name": "gone", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "gone", "user": {}}],
        "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "gone"}}]}))
    return port
