"""The package's layout: module-level imports between optimkit's modules form no cycle, and
every folder of the package is a package with a docstring.

The modules are parsed with :mod:`ast`, never imported. An edge ``a -> b`` is an import that
runs when ``a`` is imported: a top-level ``import``/``from`` statement (also inside a
top-level ``if``/``try``/``with`` or a class body, but not inside a function, nor under
``if TYPE_CHECKING:``). ``pkg/__init__.py`` is the module ``pkg``. ``from pkg import name``
is an edge to ``pkg.name`` when that is a module and to ``pkg`` otherwise; importing
``pkg.sub.mod`` from outside ``pkg.sub`` also runs ``pkg/sub/__init__.py``, so it is an
edge to ``pkg.sub`` too. So a package's ``__init__`` may import its submodules, and those
may import their siblings directly, but a submodule that imports a name through its own
package (``from . import Name``) while the package imports that submodule is a cycle.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = SRC / "optimkit"
TOP = ROOT.name


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py")) if "__pycache__" not in path.parts}


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]):
    """The import statements that run when the module is imported."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            for block in (node.body, node.orelse, node.finalbody):
                yield from _module_level(block)
            for handler in node.handlers:
                yield from _module_level(handler.body)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            yield from _module_level(node.body)
        elif type(node).__name__ == "Match":
            for case in node.cases:
                yield from _module_level(case.body)


def _targets(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules of optimkit that ``node``, in module ``name``, imports by name."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        package = name if is_package(name) else name.rpartition(".")[0]
        base = package.split(".")
        if node.level > 1:
            base = base[: -(node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    found = []
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        found.append(submodule if submodule in modules() else source)
    return found


@cache
def _scan() -> tuple[dict[str, list[str]], list[str]]:
    edges: dict[str, list[str]] = {}
    unresolved: list[str] = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        own = set()  # the module and the packages it is in: already being imported
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            own.add(".".join(parts[:i]))
        targets: list[str] = []
        for node in _module_level(tree.body):
            for target in _targets(name, node):
                if target != TOP and not target.startswith(TOP + "."):
                    continue
                if target not in modules():
                    missing = f"{path.relative_to(SRC.parent)}:{node.lineno}: no module {target}"
                    if missing not in unresolved:
                        unresolved.append(missing)
                    continue
                # Importing pkg.sub.mod runs pkg/sub/__init__.py first, unless it is running
                # (the packages ``name`` is in, optimkit's own __init__ among them).
                chain = target.split(".")
                for i in range(1, len(chain) + 1):
                    step = ".".join(chain[:i])
                    if (step == target or step not in own) and step not in targets:
                        targets.append(step)
        edges[name] = [t for t in targets if t != name]
    return edges, unresolved


def graph() -> dict[str, list[str]]:
    """Every module's optimkit-internal module-level imports, as module names."""
    return _scan()[0]


def find_cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """One cycle (``a -> b -> ... -> a``) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm (the package is small: recursion is fine)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)

    cycles = []
    for component in components:
        members = set(component)
        start = min(component)
        # Breadth-first within the component: the shortest way from start back to start.
        previous: dict[str, str] = {}
        frontier = [start]
        done = False
        while frontier and not done:
            following = []
            for v in frontier:
                for w in edges[v]:
                    if w not in members:
                        continue
                    if w == start:
                        path = [v]
                        while path[-1] != start:
                            path.append(previous[path[-1]])
                        cycles.append([start, *reversed(path[:-1]), start])
                        done = True
                        break
                    if w not in previous:
                        previous[w] = v
                        following.append(w)
                if done:
                    break
            frontier = following
    return sorted(cycles)


def _describe(cycles: list[list[str]]) -> str:
    return "\n".join("  " + " -> ".join(cycle) for cycle in cycles)


def test_the_graph_sees_the_package():
    edges = graph()
    assert TOP in edges and f"{TOP}.checkpoint" in edges
    assert f"{TOP}.checkpoint.checkpointer" in edges[f"{TOP}.checkpoint"]


def test_every_internal_import_names_a_module():
    unresolved = _scan()[1]
    assert not unresolved, "imports of optimkit modules that do not exist:\n" + "\n".join(unresolved)


def test_module_level_imports_form_no_cycle():
    cycles = find_cycles(graph())
    assert not cycles, "module-level imports between optimkit's modules form cycles:\n" + _describe(cycles)


def test_the_checkpoint_package_imports_one_way():
    """format <- dcp <- checkpointer, cli <- the package (and its __main__)."""
    pkg = f"{TOP}.checkpoint"
    edges = {name: targets for name, targets in graph().items() if name == pkg or name.startswith(pkg + ".")}
    inside = {name: sorted(t for t in targets if t in edges) for name, targets in edges.items()}
    assert inside == {
        pkg: [f"{pkg}.checkpointer", f"{pkg}.cli", f"{pkg}.format"],
        f"{pkg}.__main__": [f"{pkg}.cli"],
        f"{pkg}.checkpointer": [f"{pkg}.dcp", f"{pkg}.format"],
        f"{pkg}.cli": [f"{pkg}.dcp", f"{pkg}.format"],
        f"{pkg}.dcp": [f"{pkg}.format"],
        f"{pkg}.format": [],
    }


@pytest.mark.parametrize(
    "folder",
    sorted(p.name for p in ROOT.iterdir() if p.is_dir() and p.name != "__pycache__" and any(p.rglob("*.py"))),
)
def test_every_folder_is_a_package_with_a_docstring(folder):
    init = ROOT / folder / "__init__.py"
    assert init.is_file(), f"src/optimkit/{folder}/ has no __init__.py"
    docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert docstring and docstring.strip(), f"src/optimkit/{folder}/__init__.py has no docstring"


def test_the_top_package_has_a_docstring():
    assert ast.get_docstring(ast.parse((ROOT / "__init__.py").read_text(encoding="utf-8")))


def test_find_cycles_reports_a_readable_path():
    edges = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": [], "e": ["e"]}
    assert find_cycles(edges) == [["a", "b", "c", "a"]]  # a self-import is not a module cycle
    assert _describe(find_cycles(edges)) == "  a -> b -> c -> a"
