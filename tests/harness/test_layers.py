"""The package's imports point down: every import statement (those inside functions too) forms a graph of
modules with no cycle, and the layers the README's layout names never import the ones above them."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "zero3_conformance"

# The package's parts from the bottom up, as README's layout shows them: a part imports only parts of its own
# layer or below (and parts of one layer never each other both ways). A new module or package is placed here.
LAYERS = (
    ("the record and the stack", ("contract", "errors", "dsconfig", "casekey", "finding_kinds", "results", "rundir",
                                  "cell",
                                  "op_cache", "compat", "known_issues")),
    ("worlds of processes", ("worlds",)),
    ("what passes between a world's ranks and the parent", ("protocol",)),
    ("models", ("architectures", "zoo", "inputs", "reference", "structure")),
    ("subjects", ("subjects",)),
    ("the memory probe", ("memory",)),
    ("checks, rank side", ("checks",)),
    ("the catalog of cases", ("catalog",)),
    ("what is read from runs", ("matrix", "report", "repro")),
    ("running cases", ("execution",)),
    ("front ends", ("mutation", "pytest_plugin", "unittest_suite", "suite", "cli", "__main__")),
)
LAYER = {part: height for height, (_, parts) in enumerate(LAYERS) for part in parts}


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


def _part(module):
    """The top-level module or package of the package that `module` belongs to."""
    return module.split(".")[1]


PARTS = {_part(module): set() for module in GRAPH if module != "zero3_conformance"}
for _module, _targets in GRAPH.items():
    if _module != "zero3_conformance":
        PARTS[_part(_module)] |= {_part(t) for t in _targets} - {_part(_module)}


def test_every_part_of_the_package_has_a_layer():
    assert sorted(set(PARTS) - set(LAYER)) == []
    assert sorted(set(LAYER) - set(PARTS)) == []  # nor does the list name a part that is gone


def test_no_cycle_between_the_parts():
    assert _cycles(PARTS) == []


@pytest.mark.parametrize("layer", [name for name, _ in LAYERS])
def test_a_layer_never_imports_one_above_it(layer):
    height = next(h for h, (name, _) in enumerate(LAYERS) if name == layer)
    upward = sorted(f"{module} imports {target} ({LAYERS[LAYER[_part(target)]][0]})"
                    for module, targets in GRAPH.items()
                    if module != "zero3_conformance" and LAYER.get(_part(module)) == height
                    for target in targets if LAYER.get(_part(target), -1) > height)
    assert upward == []


def _unresolved(name, path, modules):
    """The package's own modules that `name` imports (relative imports, those inside functions too) and that do
    not exist: such an import fails only when its function runs."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    missing = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
            target = ".".join(filter(None, [base, node.module]))
            if target not in modules:
                missing.append(f"line {node.lineno}: from {'.' * node.level}{node.module or ''} ({target})")
    return missing


def test_every_relative_import_names_a_module_that_exists():
    modules = _modules()
    assert {name: found for name, path in modules.items() if (found := _unresolved(name, path, modules))} == {}



def test_an_import_of_a_module_that_is_not_there_is_found(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from .reference import config\n    from ..reference import config\n")
    assert _unresolved("zero3_conformance.mutation.probe", source, _modules()) == [
        "line 2: from .reference (zero3_conformance.mutation.reference)"]


def _run_file_names():
    from zero3_conformance.rundir import RunDir

    return sorted({RunDir.PLAN, RunDir.RESULTS, RunDir.SUMMARY, RunDir.CELL, RunDir.SERVED,
                   *filter(None, RunDir.WORKER_RESULTS.split("{worker}"))})


def _naming_run_files(sources):
    """Module -> the run files' names its source spells (docstrings and comments too)."""
    names = _run_file_names()
    return {module: found for module, text in sources.items() if (found := [n for n in names if n in text])}


def test_only_rundir_names_a_run_file():
    """Where a run directory's files are called what they are called is said once: every module reaches them
    through RunDir."""
    sources = {name: path.read_text(encoding="utf-8") for name, path in _modules().items()
               if name != "zero3_conformance.rundir"}
    assert _naming_run_files(sources) == {}
    assert _naming_run_files({"m": "see DIR/summary.md", "n": "results-gw0.jsonl"}) == {
        "m": ["summary.md"], "n": [".jsonl", "results-"]}


def test_worlds_carry_tasks_and_results_without_reading_them():
    """worlds/ starts processes and carries a task to every rank and its result back: what a task or a result
    means (a check, a clause, a status, an expectation) is the protocol's, above it."""
    meaning = {"checks", "contract", "results", "known_issues", "protocol", "finding_kinds", "errors"}
    reads = sorted(f"{module} imports {target}" for module, targets in GRAPH.items()
                   if module.startswith("zero3_conformance.worlds") for target in targets
                   if _part(target) in meaning)
    assert reads == []


_STRING_READS = {"split", "rsplit", "partition", "rpartition", "startswith", "endswith", "find", "rfind", "index",
                 "replace", "removeprefix", "removesuffix", "strip", "count"}


def _is_case_id(node):
    return (isinstance(node, ast.Attribute) and node.attr == "case_id") or (
        isinstance(node, ast.Name) and node.id == "case_id")


def _case_id_reads(source):
    """Lines of `source` that read a case id as text: a string method, `in`, an index or a regular expression
    applied to a `case_id`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        read = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and ((node.func.attr in _STRING_READS and _is_case_id(node.func.value))
                     or (isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                     and any(_is_case_id(arg) for arg in node.args)))) \
            or (isinstance(node, ast.Compare) and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops)
                and any(_is_case_id(side) for side in node.comparators)) \
            or (isinstance(node, ast.Subscript) and _is_case_id(node.value))
        if read:
            found.append(node.lineno)
    return sorted(found)


def test_only_casekey_parse_reads_a_case_id():
    """A case's identity is the key's fields, which records carry: no module reads them back out of its id."""
    reads = {name: lines for name, path in _modules().items() if name != "zero3_conformance.casekey"
             if (lines := _case_id_reads(path.read_text(encoding="utf-8")))}
    assert reads == {}
    assert _case_id_reads('a = f"-{m}.{h}-" in r.case_id\nb = r.case_id.split("[")\nc = re.match(P, case_id)\n'
                          'd = case_id[2:]\ne = r.case_id == x\n') == [1, 2, 3, 4]


def _options_named(source):
    """The command-line options (`--world-sizes`) that a module's strings name, its docstrings aside."""
    import re

    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return sorted({option for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
                   and id(node) not in docstrings for option in re.findall(r"--[a-z][a-z-]+", node.value)})


def test_running_cases_names_no_front_ends_option():
    """execution/ serves every front end: what is wrong with a selection is said of its value, and each front end
    names its own option around it."""
    named = {name: found for name, path in _modules().items() if name.startswith("zero3_conformance.execution.")
             if (found := _options_named(path.read_text(encoding="utf-8")))}
    assert named == {}
    assert _options_named('"""Says --resume."""\nraise ValueError(f"invalid --world-sizes {x}")\n') == ["--world-sizes"]


def _uses(source, module, name):
    """Whether `source` uses `name` of the package's `module` (`zoo`): imported from it, or as `module.name`."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").rpartition(".")[2] == module \
                and any(alias.name == name for alias in node.names):
            return True
        if isinstance(node, ast.Attribute) and node.attr == name and isinstance(node.value, ast.Name) \
                and node.value.id == module:
            return True
    return False


@pytest.mark.parametrize(("module", "name", "where", "owner"), [
    # A run writes each checkpoint once, before its cases; a rank only finds its node's copy.
    ("zoo", "ensure_checkpoint", ("execution", "checks"), "zero3_conformance.execution.checkpoints"),
    ("zoo", "ensure_checkpoints", ("execution", "checks"), "zero3_conformance.execution.checkpoints"),
    # The runner records what ran; the known-issues file is applied where records are written.
    ("known_issues", "apply", ("execution",), "zero3_conformance.execution.records"),
])
def test_running_cases_does_each_thing_in_one_place(module, name, where, owner):
    users = sorted(found for found, path in _modules().items() if "." in found and _part(found) in where
                   and _uses(path.read_text(encoding="utf-8"), module, name))
    assert users == [owner]
    assert _uses("from ..zoo import Family, ensure_checkpoint\n", "zoo", "ensure_checkpoint")
    assert _uses("x = known_issues.apply(r, i)\n", "known_issues", "apply")
    assert not _uses("from ..zoo import ensure_checkpoints\n", "zoo", "ensure_checkpoint")
