"""No distribution hides an import of ours inside a function without saying why.

Core's third layering rule (packages/core/tests/layering.py), for every distribution's
``src/``: an import of ``cluster`` or ``cluster_*`` inside a function needs a comment, on its
line or above its block of imports, saying why it is not at the top (start-up cost, a forked
child, an optional dependency). Reads the source, runs nothing.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "packages" / "core" / "tests"))
from layering import hidden_imports  # noqa: E402 (it lives in core's tests, put on the path above)

# Found on disk, as the noxfile finds them: every distribution under packages/, and the example.
SOURCES = sorted(pyproject.parent / "src" for pyproject in
                 [*ROOT.glob("packages/**/pyproject.toml"), *ROOT.glob("examples/*/pyproject.toml")]
                 if (pyproject.parent / "src").is_dir())


def test_every_distribution_is_checked() -> None:
    packages = {package.name for src in SOURCES for package in src.iterdir() if package.is_dir()}
    assert {"cluster", "cluster_store", "cluster_client", "cluster_autoscaler", "cluster_k8s", "cluster_redis",
            "cluster_provider_shell"} <= packages


@pytest.mark.parametrize("src", SOURCES, ids=lambda src: str(src.parent.relative_to(ROOT)))
def test_no_distribution_imports_ours_inside_a_function_without_saying_why(src: Path) -> None:
    assert hidden_imports(src) == []


@pytest.fixture
def client_src(tmp_path: Path) -> Path:
    """A copy of cluster-client's source to break on purpose."""
    src = next(src for src in SOURCES if (src / "cluster_client").is_dir())
    shutil.copytree(src / "cluster_client", tmp_path / "cluster_client",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _add(tree: Path, module: str, text: str) -> None:
    path = tree / module
    path.write_text(path.read_text() + "\n\n" + text + "\n")


def test_an_unexplained_inner_import_fails_and_an_explained_one_passes(client_src: Path) -> None:
    _add(client_src, "cluster_client/plugin.py",
         "def later():\n    from cluster_client.jobs import JobManager, RUNNER_SERVICE\n    return JobManager")
    (problem,) = hidden_imports(client_src)  # one statement, one problem, however many names
    assert problem.startswith("cluster_client/plugin.py:")
    assert "cluster_client.plugin imports cluster_client.jobs inside a function" in problem
    _add(client_src, "cluster_client/plugin.py",
         "def later_again():\n    # jobs brings the wire connection: loaded when the hook runs\n"
         "    from cluster_client.jobs import JobManager\n    return JobManager")
    assert hidden_imports(client_src) == [problem]


def test_imports_of_core_of_a_sibling_and_relative_ones_count_too(client_src: Path) -> None:
    _add(client_src, "cluster_client/sdk.py",
         "class Later:\n    def method(self):\n        import cluster.owner.runtime\n"
         "        from cluster_autoscaler.config import parse_config\n        from . import jobs\n"
         "        import yaml\n        return parse_config, jobs, yaml")
    problems = hidden_imports(client_src)
    assert [p.split(": ", 1)[1].split(" inside")[0] for p in problems] == [
        "cluster_client.sdk imports cluster.owner.runtime",
        "cluster_client.sdk imports cluster_autoscaler.config",
        "cluster_client.sdk imports cluster_client.jobs",
    ]  # yaml is not ours: the rule is about our modules only


def test_one_comment_covers_a_block_that_isort_splits_into_sections(client_src: Path) -> None:
    _add(client_src, "cluster_client/cli.py",
         "def later():\n    # the autoscaler's config and our jobs load for this command only\n"
         "    from cluster_autoscaler.config import parse_config\n\n"
         "    from cluster_client.jobs import JobManager\n    return parse_config, JobManager")
    assert hidden_imports(client_src) == []
