"""Demo: start a two-node cluster on this machine, run a real workload across it, stop it.

Run with ``nox -s demo`` (which installs everything first) or, in an environment where
cluster-core is installed, ``python examples/demo.py``.

``python examples/demo.py --address ADDRESS`` runs the same workload on a cluster that is
already running (it starts and stops nothing): ``HOST:PORT`` from a machine of the cluster, or
``cluster://HOST:PORT`` from one that runs no node (remote client mode, cluster-client). The
token comes from ``--token`` or ``$CLUSTER_TOKEN``. The cluster needs a node with the resource
``producer`` and another with ``consumer``, one CPU at least each.

The workload estimates pi by Monte Carlo sampling spread over both nodes' workers, then
builds a 100 MB matrix on one node and reduces it in tasks pinned to the other node, so the
array crosses between the nodes' object stores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

import cluster


def cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "cluster", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"`cluster {' '.join(args)}` failed:\n{proc.stderr}")
    return proc.stdout


@cluster.remote
def sample(seed: int, n: int) -> tuple[int, str]:
    rng = np.random.default_rng(seed)
    xy = rng.random((n, 2))
    inside = int(((xy**2).sum(axis=1) <= 1.0).sum())
    return inside, os.environ["CLUSTER_NODE_ID"]


@cluster.remote(resources={"producer": 1})
def make_matrix(rows: int, cols: int) -> np.ndarray:
    print(f"building a {rows}x{cols} matrix ({rows * cols * 8 / 1e6:.0f} MB)")
    return np.arange(rows * cols, dtype=np.float64).reshape(rows, cols)


@cluster.remote(resources={"consumer": 1})
def column_sums(matrix: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, str]:
    return matrix[:, start:stop].sum(axis=0), os.environ["CLUSTER_NODE_ID"]


def workload() -> None:
    print("== Monte Carlo estimate of pi over 200 tasks")
    t0 = time.perf_counter()
    per_task = 200_000
    results = cluster.get([sample.remote(seed, per_task) for seed in range(200)])
    inside = sum(r[0] for r in results)
    nodes = Counter(r[1] for r in results)
    print(f"pi ~= {4 * inside / (200 * per_task):.5f} from {200 * per_task:,} samples "
          f"in {time.perf_counter() - t0:.2f}s; tasks per node: {dict(nodes)}")

    print("== a 100 MB matrix made on one node, reduced on the other")
    t0 = time.perf_counter()
    matrix = make_matrix.remote(1250, 10_000)
    parts = cluster.get([column_sums.remote(matrix, i, i + 2500) for i in range(0, 10_000, 2500)])
    total = float(sum(p[0].sum() for p in parts))
    expected = float(np.arange(1250 * 10_000, dtype=np.float64).sum())
    local = cluster.get(matrix)
    print(f"sum = {total:.6g} (expected {expected:.6g}, {'OK' if total == expected else 'MISMATCH'}); "
          f"reduced on node(s) {sorted({p[1] for p in parts})} in {time.perf_counter() - t0:.2f}s; "
          f"driver's copy is a zero-copy view: {not local.flags.owndata and not local.flags.writeable}")
    if total != expected:
        sys.exit("demo failed: the reduced sum is wrong")
    del local


def on_local_cluster() -> None:
    """Start a head and a second node daemon here, run the workload across them, stop them."""
    root = Path(tempfile.mkdtemp(prefix="cluster-demo-"))
    os.environ["CLUSTER_TMPDIR"] = str(root)  # keep this demo's cluster to itself
    os.environ.pop("CLUSTER_ADDRESS", None)
    print("== starting a head and a second node daemon on 127.0.0.1")
    print(cli("start", "--head", "--port", "0", "--num-cpus", "1", "--resources", '{"producer": 1}'))
    address = json.loads((root / "current.json").read_text())["address"]
    print(cli("start", "--address", address, "--num-cpus", "1", "--resources", '{"consumer": 1}'))
    try:
        print(cli("status"))
        cluster.init("auto")
        workload()
    finally:
        cluster.shutdown()
        print("== stopping the cluster")
        print(cli("stop"))


def on_existing_cluster(address: str, token: str | None) -> None:
    """Run the workload on the cluster at ``address``; start and stop nothing."""
    print(f"== connecting to the cluster at {address}")
    cluster.init(address, token=token)
    try:
        for node in cluster.nodes():
            print(f"node {node['node_id']} at {node['address']} on {node['hostname']}: {node['resources']}")
        workload()
    finally:
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", help="run on this running cluster (HOST:PORT or cluster://HOST:PORT) "
                                          "instead of starting one here")
    parser.add_argument("--token", help="its token [default: $CLUSTER_TOKEN, or the local head's]")
    args = parser.parse_args()
    if args.address:
        on_existing_cluster(args.address, args.token)
    else:
        on_local_cluster()


if __name__ == "__main__":
    main()
