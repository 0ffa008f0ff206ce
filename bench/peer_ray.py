"""Ray's half of the benchmark: the same metrics as ``cluster microbenchmark``.

    python bench/peer_ray.py [--json] [--quick] [--only NAME,...]

Ray is kept on loopback: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 must be set before ray is
imported (else it moves to the machine's own address even with _node_ip_address), and it is
set here at import time so that the cold-start child inherits it too.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from _engine import load_engine

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report leaves the machine

NODE_IP = "127.0.0.1"

# address="local" always starts a fresh instance instead of joining one found on the machine.
_COLD_START = f"""
import ray
ray.init(address="local", num_cpus=2, _node_ip_address={NODE_IP!r})
try:
    @ray.remote
    def f():
        return 1 + 1
    print("RESULT " + str(ray.get(f.remote())), flush=True)
finally:
    ray.shutdown()
"""


def _noop() -> None:
    return None


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _sum(array: Any) -> float:
    return float(array.sum())


class RayBackend(load_engine().RayStyleBackend):
    framework = "ray"

    def version(self) -> str:
        import ray

        return ray.__version__

    def describe(self) -> str:
        if self._node_ip is None:
            return "ray.init(num_cpus=2) on 127.0.0.1"
        return f"ray.init(num_cpus=2); node bound to {self._node_ip}, gcs {self._gcs}"

    def cold_start_argv(self) -> list[str]:
        return [sys.executable, "-c", _COLD_START]

    _node_ip: str | None = None
    _gcs: str | None = None

    def start(self) -> None:
        import ray

        ray.init(address="local", num_cpus=2, _node_ip_address=NODE_IP)
        self._bind(ray, _noop, _sleep, _sum)
        ctx = ray.get_runtime_context()
        self._gcs = ctx.gcs_address
        self._node_ip = ray.util.get_node_ip_address()
        if not self._gcs.startswith(NODE_IP) or self._node_ip != NODE_IP:
            raise RuntimeError(f"ray left loopback: node {self._node_ip}, gcs {self._gcs}")


def main(argv: list[str] | None = None) -> int:
    return load_engine().main_for(RayBackend(), argv, prog="peer_ray.py")


if __name__ == "__main__":
    raise SystemExit(main())
