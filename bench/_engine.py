"""Load the benchmark engine shared with our own half.

The loops, counts and clocks live in ``bench/peer_cluster.py``, next to our own half. The
peers' halves load that file by path, so they run in an environment without ``cluster``
installed and are still measured by the very same code as ours.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
ENGINE_PATH = REPO / "bench" / "peer_cluster.py"
_NAME = "_cluster_bench_engine"


def load_engine() -> ModuleType:
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.spec_from_file_location(_NAME, ENGINE_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the benchmark engine from {ENGINE_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module
