"""The import graph of harness/ and zoo/, imports inside functions included: no cycles, and packages import
only downward (docs/architecture.md, "Package layout"). Read from the source with ast, nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Lowest first: a module may import its own package and the packages before it, never one after it.
LAYERS = ["harness.errors", "harness.console", "harness.tracking", "harness.study.schema", "zoo",
          "harness.training", "harness.diffusion", "harness.eval", "harness.recipes", "harness.study",
          "harness.reporting", "harness.run", "harness.bench", "harness.cli"]
def modules(root: Path = REPO) -> dict[str, Path]:
    out = {}
    for pkg in ("harness", "zoo"):
        for p in (root / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(root).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the harness/zoo modules it imports anywhere in its source (the innermost existing module)."""
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: list[str] = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets += [base] + [f"{base}.{a.name}" for a in node.names]
        graph[name] = {r for t in targets if (r := resolve(t)) and r != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> int:
    """The index of the most specific layer ``module`` belongs to."""
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS.index(best)


def test_there_is_no_import_cycle():
    assert cycles(import_graph(modules())) == []


def test_packages_import_only_downward():
    graph = import_graph(modules())
    upward = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts
                    if m not in ("harness", "zoo") and t not in ("harness", "zoo") and layer(t) > layer(m))
    assert upward == []


def test_the_checks_find_a_cycle_and_an_upward_import(tmp_path):
    for rel, text in {"harness/__init__.py": "", "harness/training/__init__.py": "",
                      "harness/training/a.py": "def f():\n    from harness.training import b\n",
                      "harness/training/b.py": "from harness.training.a import f\nimport harness.cli.main\n",
                      "harness/cli/__init__.py": "", "harness/cli/main.py": "", "zoo/__init__.py": ""}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    graph = import_graph(modules(tmp_path))
    assert cycles(graph) == [{"harness.training.a", "harness.training.b"}]
    assert "harness.cli.main" in graph["harness.training.b"] and layer("harness.cli.main") > layer("harness.training.b")
