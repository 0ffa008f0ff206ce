"""The layering check holds for core, and fails when a layer imports upward or a cycle returns."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from layering import LAYERS, check, room_of

SRC = Path(__file__).resolve().parents[1] / "src"


def test_core_keeps_its_layers() -> None:
    assert check(SRC) == []


def test_every_module_of_core_belongs_to_a_room_named_in_the_layers() -> None:
    rooms = {room for layer in LAYERS for room in layer}
    for path in (SRC / "cluster").rglob("*.py"):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        room = room_of(module)
        assert room in rooms
        assert room != "cluster" or module == "cluster", f"{module} is in no room: add it to LAYERS"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of core's source to break on purpose."""
    shutil.copytree(SRC / "cluster", tmp_path / "cluster", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _add(tree: Path, module: str, text: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + "\n" + text + "\n")


def test_an_upward_import_fails_the_check(tree: Path) -> None:
    _add(tree, "cluster/wire/streams.py", "from cluster.head.metadata import sqlite_path")
    (problem,) = check(tree)
    assert problem.startswith("cluster/wire/streams.py:")
    assert "cluster.wire.streams (room cluster.wire, layer 1) imports cluster.head.metadata" in problem
    assert "upward" in problem


def test_an_upward_import_only_for_types_fails_too(tree: Path) -> None:
    _add(tree, "cluster/hookspec.py", "if TYPE_CHECKING:\n    from cluster.node.service import NodeService")
    (problem,) = check(tree)
    assert "cluster.hookspec" in problem and "cluster.node.service" in problem and "upward" in problem


def test_siblings_on_one_layer_may_not_import_each_other(tree: Path) -> None:
    _add(tree, "cluster/node/policy.py", "from cluster.head import service")
    (problem,) = check(tree)
    assert "a sibling room on the same layer (cluster.node and cluster.head" in problem


def test_an_import_cycle_fails_the_check(tree: Path) -> None:
    # connection imports codec at load time; codec importing connection closes the circle.
    _add(tree, "cluster/wire/codec.py", "from cluster.wire import connection")
    (problem,) = check(tree)
    assert problem.startswith("import cycle: ")
    assert "cluster.wire.codec -> cluster.wire.connection" in problem


def test_an_unexplained_import_inside_a_function_fails_the_check(tree: Path) -> None:
    _add(tree, "cluster/owner/tasks.py", "def later():\n    from cluster.objects import values\n    return values")
    (problem,) = check(tree)
    assert "cluster.owner.tasks imports cluster.objects.values inside a function" in problem
    _add(tree, "cluster/owner/tasks.py",
         "def later_again():\n    # a forked child imports it (why it waits)\n    from cluster.objects import values\n"
         "    return values")
    assert check(tree) == [problem]  # the explained one passes


def test_core_may_not_import_a_distribution_built_on_it(tree: Path) -> None:
    _add(tree, "cluster/cli/commands.py", "import cluster_client")
    (problem,) = check(tree)
    assert "imports cluster_client, a distribution that depends on cluster-core" in problem


def test_the_check_runs_as_a_command_and_exits_non_zero_on_a_violation(tree: Path) -> None:
    script = Path(__file__).with_name("layering.py")
    ok = subprocess.run([sys.executable, script, str(SRC)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    _add(tree, "cluster/objects/refs.py", "import cluster.api")
    broken = subprocess.run([sys.executable, script, str(tree)], capture_output=True, text=True)
    assert broken.returncode == 1
    assert "cluster.objects.refs (room cluster.objects, layer 2) imports cluster.api" in broken.stdout
