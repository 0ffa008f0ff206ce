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

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # no usage report leaves the machine

NODE_IP = "127.0.0.1"
GET_TIMEOUT_S = 120.0  # the same guards as our half passes to cluster.get / cluster.wait
BULK_TIMEOUT_S = 900.0
WAIT_TIMEOUT_S = 120.0

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


class RayBackend:
    framework = "ray"
    zero_copy_possible = True

    def __init__(self) -> None:
        self._ray: Any = None

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

        self._ray = ray
        ray.init(address="local", num_cpus=2, _node_ip_address=NODE_IP)
        ctx = ray.get_runtime_context()
        self._gcs = ctx.gcs_address
        self._node_ip = ray.util.get_node_ip_address()
        if not self._gcs.startswith(NODE_IP) or self._node_ip != NODE_IP:
            raise RuntimeError(f"ray left loopback: node {self._node_ip}, gcs {self._gcs}")
        self._noop = ray.remote(_noop)
        self._sleep = ray.remote(_sleep)
        self._sum = ray.remote(_sum)

    def stop(self) -> None:
        import ray

        ray.shutdown()

    def noop(self) -> Any:
        return self._noop.remote()

    def sleep_task(self, seconds: float) -> Any:
        return self._sleep.remote(seconds)

    def sum_task(self, ref: Any) -> Any:
        return self._sum.remote(ref)

    def put(self, value: Any) -> Any:
        return self._ray.put(value)

    def get(self, ref: Any) -> Any:
        return self._ray.get(ref, timeout=GET_TIMEOUT_S)

    def get_many(self, refs: list[Any]) -> list[Any]:
        return self._ray.get(refs, timeout=BULK_TIMEOUT_S)

    def wait_all(self, refs: list[Any]) -> int:
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=WAIT_TIMEOUT_S)
        return len(ready)


def main(argv: list[str] | None = None) -> int:
    from _engine import load_engine

    return load_engine().main_for(RayBackend(), argv, prog="peer_ray.py")


if __name__ == "__main__":
    raise SystemExit(main())
