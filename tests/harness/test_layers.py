"""The package's imports point down: every import statement (those inside functions too) forms a graph of
modules with no cycle, and the layers the README's layout names never import the ones above them."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "zero3_conformance"

# module (or package, by prefix) -> what it must never import, directly or inside a function
NEVER = {
    "zero3_conformance.checks": ("zero3_conformance.runner", "zero3_conformance.catalog", "zero3_conformance.cli",
                                 "zero3_conformance.report", "zero3_conformance.mutation",
                                 "zero3_conformance.matrix", "zero3_conformance.verdict"),
    "zero3_conformance.report": ("zero3_conformance.runner", "zero3_conformance.cli", "zero3_conformance.mutation",
                                 "zero3_conformance.matrix.runner", "zero3_conformance.catalog"),
    "zero3_conformance.subjects": ("zero3_conformance.mutation", "zero3_conformance.catalog"),
    "zero3_conformance.catalog": ("zero3_conformance.mutation", "zero3_conformance.runner", "zero3_conformance.cli"),
    "zero3_conformance.world": ("zero3_conformance.checks", "zero3_conformance.runner", "zero3_conformance.catalog"),
    "zero3_conformance.contract": ("zero3_conformance.",),
}


def _modules():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name, path, modules):
    """Every module of the package that `name` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            target = ".".join(filter(None, [base, node.module]))
            candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and candidate != "zero3_conformance":
                found.add(candidate)
    return found


GRAPH = {name: _imports(name, path, _modules()) for name, path in _modules().items()}


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_imports_inside_functions():
    assert "zero3_conformance.mutation.mutants" in GRAPH["zero3_conformance.cli"]  # imported inside cmd_run
    assert "zero3_conformance.checks.registry" in GRAPH["zero3_conformance.checks.execute"]


def test_no_import_cycle_lazy_or_not():
    assert _cycles(GRAPH) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]  # the walk finds one where it is


@pytest.mark.parametrize("layer", sorted(NEVER))
def test_a_layer_never_imports_one_above_it(layer):
    upward = sorted(f"{module} imports {target}" for module, targets in GRAPH.items()
                    if module == layer or module.startswith(layer + ".")
                    for target in targets if target.startswith(NEVER[layer]))
    assert upward == []
