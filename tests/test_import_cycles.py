"""No import cycles in itune/: the graph of every import statement (lazy ones inside functions included,
`if TYPE_CHECKING:` ones not), read with `ast`, at two granularities: modules, and concerns (top-level
modules and first-level subpackages: `itune.train`, `itune.sweep`, `itune.data`, ...).

Cycles that predate this check are listed in KNOWN_CYCLES; the test fails when a cycle appears that is not
part of a known one. Run this file as a script to print the cycles of the current tree.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "itune"
PLUGINS = "hydra_plugins"  # itune/hydra_plugins/ ships as the top-level hydra_plugins package

# Strongly connected components (module sets that import each other, directly or not) that predate this
# test, to be broken by the architecture issue's other parts. A cycle that is a subset of one is allowed.
KNOWN_CYCLES: dict[str, list[frozenset[str]]] = {
    "modules": [
        # itune.sweep.optuna.register_plugin imports the plugin lazily; the plugin imports sweep.optuna/shared
        frozenset(
            {
                "hydra_plugins.itune_optuna_sweeper",
                "hydra_plugins.itune_optuna_sweeper.sweeper",
                "itune.sweep.optuna",
                "itune.sweep.shared",
            }
        ),
    ],
    "concerns": [
        frozenset({"hydra_plugins.itune_optuna_sweeper", "itune.sweep"}),  # register_plugin, as above
    ],
}
SWEEP_REPORT = "itune.sweep.report"
LAUNCHER_SIDE = ("itune.sweep.callbacks", "itune.sweep.job", "itune.sweep.optuna", "itune.sweep.study")
LAUNCHER_SIDE += ("itune.sweep.shared", "itune.sweep.pruning", "itune.cli", PLUGINS)
TOUCHED = (SWEEP_REPORT, "itune.sweep.callbacks", "itune.sweep.criterion", "itune.sweep.status")
TOUCHED += ("itune.cli.report",)  # the modules the sweep report's move touched


def module_names(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file of every module under itune/ (a package by its `__init__.py`)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[1:2] == [PLUGINS]:
            parts = parts[1:]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a module, outside `if TYPE_CHECKING:` blocks."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo += node.orelse
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        todo += ast.iter_child_nodes(node)
    return found


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """`name`, or its longest prefix that is a module of ours (`itune.x.y` of `itune.x.y.Class`)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) or None


def imports_of(name: str, modules: dict[str, Path]) -> set[str]:
    """The modules of ours that module `name` imports (`from pkg import sub` counts as `pkg.sub`)."""
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _statements(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            base = (base + "." + (node.module or "")).strip(".") if node.level else node.module or ""
            targets = [f"{base}.{alias.name}" for alias in node.names]
        found |= {m for m in (_known(t, modules) for t in targets) if m is not None}
    return found - {name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports."""
    modules = module_names(root)
    return {name: imports_of(name, modules) for name in modules}


def concern(module: str) -> str:
    """The concern a module belongs to: itself at the top level, else its first-level subpackage.

    >>> concern("itune.sweep.report.select"), concern("itune.train"), concern("itune")
    ('itune.sweep', 'itune.train', 'itune')
    """
    return ".".join(module.split(".")[:2])


def by_concern(graph: dict[str, set[str]], unit: Callable[[str], str] = concern) -> dict[str, set[str]]:
    """The graph between concerns, or other `unit`s of modules (edges within one dropped)."""
    out: dict[str, set[str]] = {}
    for module, targets in graph.items():
        out.setdefault(unit(module), set()).update(unit(t) for t in targets)
    return {k: v - {k} for k, v in out.items()}


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def all_cycles() -> dict[str, list[frozenset[str]]]:
    graph = import_graph()
    return {"modules": cycles(graph), "concerns": cycles(by_concern(graph))}


def test_no_new_cycle():
    for level, found in all_cycles().items():
        new = [c for c in found if not any(c <= known for known in KNOWN_CYCLES[level])]
        assert not new, f"new import cycle(s) among {level}: {[sorted(c) for c in new]}"


def test_sweep_report_is_in_no_cycle():
    """The report package, as one unit, and the modules it shares with the sweep sit in no cycle."""
    graph = import_graph()
    touched = [c for c in cycles(graph) if any(m.startswith(TOUCHED) for m in c)]
    assert not touched, f"import cycle(s) through the sweep report: {[sorted(c) for c in touched]}"

    def unit(module: str) -> str:  # the report package as one; the sweep's other modules each their own
        if module.startswith(SWEEP_REPORT):
            return SWEEP_REPORT
        return module if module.startswith("itune.sweep.") else concern(module)

    assert not [sorted(c) for c in cycles(by_concern(graph, unit)) if SWEEP_REPORT in c]


def test_sweep_report_does_not_reach_the_launcher():
    graph = import_graph()
    seen, todo = set(), [m for m in graph if m == SWEEP_REPORT or m.startswith(SWEEP_REPORT + ".")]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph[module]
    assert seen, f"no module {SWEEP_REPORT}"
    launcher = sorted(m for m in seen if m.startswith(LAUNCHER_SIDE))
    assert not launcher, f"{SWEEP_REPORT} reaches the sweep's callback/launcher side: {launcher}"


def test_graph_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "itune"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from itune.c import thing\n")
    lazy = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from itune.sub import b\n"
    (pkg / "c.py").write_text(lazy + "import itune.sub.b\n")
    graph = import_graph(pkg)
    assert graph == {
        "itune": set(),
        "itune.sub": {"itune.sub.b"},
        "itune.sub.b": {"itune.c"},
        "itune.c": {"itune.sub.b"},
    }
    assert cycles(graph) == [frozenset({"itune.sub.b", "itune.c"})]


if __name__ == "__main__":
    for level, found in all_cycles().items():
        print(f"{level}: {len(found)} cycle(s)")
        for c in found:
            print("  ", sorted(c))
