"""The layering check of cluster-core: which room of ``cluster`` may import which.

Reads the source as text (``ast``), runs nothing. Three rules, each reported as a line that
names the file, the line and what to do:

1. **Dependencies point down.** Every module belongs to a room (a subpackage, or one of the
   leaf modules); rooms sit on layers (``LAYERS``, lowest first). A module may import its own
   room and rooms of lower layers; rooms side by side on one layer (owner, node, head) may
   not import each other, except on the lowest layer (the leaves) and the top one. Imports
   under ``if TYPE_CHECKING:`` count too: a type named upward is a dependency upward.
2. **No cycles** among the imports that run when a module loads (module level, outside
   ``TYPE_CHECKING``).
3. **No hidden imports.** An import of a ``cluster`` module inside a function needs a comment
   (on its line or the line above) saying why it is not at the top: start-up cost, a forked
   child, an optional dependency.

Core imports no distribution that depends on it (``FORBIDDEN_DISTRIBUTIONS``).
``python packages/core/tests/layering.py [SRC]`` prints the violations (exit 1 if any).

Rule 3 holds for every distribution of the repository, not only core: ``hidden_imports(src)``
checks the packages under another distribution's ``src/`` for inner imports of our modules
(``cluster``, ``cluster_*``) with no comment (``tests/test_no_hidden_imports.py`` runs it).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

PACKAGE = "cluster"

# Lowest first. A room is a subpackage (``cluster.wire``) or a single module (``cluster.errors``).
LAYERS: list[tuple[str, ...]] = [
    (  # leaves: plain definitions everyone may use
        "cluster.errors",
        "cluster.exceptions",
        "cluster.contracts",
        "cluster.resources",
        "cluster.session",
        "cluster.log",
        "cluster.hookspec",
        "cluster.plugins",
        "cluster.launch",
        "cluster.context",
        "cluster.packaging",
        "cluster.runtime_env",
        "cluster.scheduling",
    ),
    ("cluster.wire",),
    ("cluster.objects",),
    ("cluster.owner", "cluster.node", "cluster.head"),
    ("cluster.api",),
    ("cluster.worker",),
    ("cluster.daemon",),
    (  # the top: entry points and plugins, which may import anything
        "cluster",
        "cluster.__main__",
        "cluster.actor",
        "cluster.autoscaler",
        "cluster.builtins",
        "cluster.cli",
        "cluster.testing",
        "cluster.util",
    ),
]

FORBIDDEN_DISTRIBUTIONS = ("cluster_client", "cluster_autoscaler", "cluster_k8s", "cluster_aws", "cluster_redis")


@attrs.frozen
class Import:
    module: str  # the importing module
    target: str  # the imported module (cluster.x.y), or a forbidden distribution
    path: Path
    line: int
    at_top: bool  # runs when the module loads (module level, not TYPE_CHECKING)
    typing_only: bool
    explained: bool  # a comment on the line or the line above


def room_of(module: str) -> str:
    """The room a module lives in: the longest room name that is it or contains it."""
    best = PACKAGE
    for layer in LAYERS:
        for room in layer:
            if (module == room or module.startswith(room + ".")) and len(room) > len(best):
                best = room
    return best


def layer_of(room: str) -> int:
    for index, layer in enumerate(LAYERS):
        if room in layer:
            return index
    raise KeyError(room)


def module_name(src: Path, path: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_sees(top: str) -> bool:
    """The imports core's check follows: cluster's own, and the distributions it must not know."""
    return top == PACKAGE or top in FORBIDDEN_DISTRIBUTIONS


def is_ours(top: str) -> bool:
    """A top-level package of ours or of a plugin built on us: ``cluster``, ``cluster_*``."""
    return top == PACKAGE or top.startswith(PACKAGE + "_")


def imports_of(src: Path, path: Path, known: set[str],
               follow: Callable[[str], bool] = core_sees) -> Iterator[Import]:
    """The imports in ``path`` whose top-level package ``follow`` accepts."""
    text = path.read_text()
    lines = text.splitlines()
    tree = ast.parse(text, str(path))
    module = module_name(src, path)
    is_package = path.name == "__init__.py"

    def explained(node: ast.stmt) -> bool:
        if "#" in lines[node.lineno - 1]:
            return True
        above = node.lineno - 2  # the comment may stand above a block of imports
        while above >= 0 and (lines[above].strip().startswith(("from ", "import "))
                              or not lines[above].strip()):  # isort's sections are one block
            above -= 1
        return above >= 0 and lines[above].strip().startswith("#")

    def targets(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
            return
        base = node.module or ""
        if node.level:
            anchor = module.split(".")
            anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            yield sub if sub in known else base

    def walk(node: ast.AST, at_top: bool, typing_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in targets(child):
                    top = target.split(".")[0]
                    if follow(top):
                        yield Import(module, target, path, child.lineno, at_top and not typing_only,
                                     typing_only, explained(child))
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                yield from walk(child, False, typing_only)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), at_top, True)
                for stmt in child.orelse:
                    yield from walk(ast.Module(body=[stmt], type_ignores=[]), at_top, typing_only)
            else:
                yield from walk(child, at_top, typing_only)

    yield from walk(tree, True, False)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def check(src: Path) -> list[str]:
    """Every violation of the three rules in the ``cluster`` package under ``src``."""
    files = sorted((src / PACKAGE).rglob("*.py"))
    known = {module_name(src, path) for path in files}
    found = [imp for path in files for imp in imports_of(src, path, known)]
    problems = []
    for imp in found:
        where = f"{imp.path.relative_to(src)}:{imp.line}"
        if imp.target.split(".")[0] in FORBIDDEN_DISTRIBUTIONS:
            problems.append(f"{where}: {imp.module} imports {imp.target}, a distribution that "
                            "depends on cluster-core; core must not know it (use a hook)")
            continue
        mine, theirs = room_of(imp.module), room_of(imp.target)
        if mine != theirs:
            low, high = layer_of(theirs), layer_of(mine)
            top, bottom = len(LAYERS) - 1, 0
            if low > high:
                problems.append(f"{where}: {imp.module} (room {mine}, layer {high}) imports "
                                f"{imp.target} (room {theirs}, layer {low}), upward; move the "
                                "shared piece down, or pass it in from above")
            elif low == high and high not in (top, bottom):
                problems.append(f"{where}: {imp.module} imports {imp.target}, a sibling room on "
                                f"the same layer ({mine} and {theirs} must not know each other)")
        if _hidden(imp):
            problems.append(_hidden_problem(imp, where))
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(found)]
    return problems


def hidden_imports(src: Path) -> list[str]:
    """Rule 3 for any distribution: inner imports of our modules, with no comment, under ``src``."""
    files = sorted(src.rglob("*.py"))
    known = {module_name(src, path) for path in files}
    problems = [_hidden_problem(imp, f"{imp.path.relative_to(src)}:{imp.line}")
                for path in files for imp in imports_of(src, path, known, is_ours) if _hidden(imp)]
    return list(dict.fromkeys(problems))  # ``from x import a, b`` is one import, reported once


def _hidden(imp: Import) -> bool:
    return not imp.at_top and not imp.typing_only and not imp.explained


def _hidden_problem(imp: Import, where: str) -> str:
    return (f"{where}: {imp.module} imports {imp.target} inside a function; move it to the top, "
            "or say why it must wait in a comment")


def _cycles(found: list[Import]) -> list[list[str]]:
    graph: dict[str, set[str]] = {}
    for imp in found:
        if imp.at_top and imp.target != imp.module:
            graph.setdefault(imp.module, set()).add(imp.target)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[1] / "src"
    problems = check(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
    print("\n".join(problems) or "layering: no violations")
    sys.exit(1 if problems else 0)
