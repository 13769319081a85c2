"""`zero3-conformance repro CASE_ID`: a finding as a script and a bug report that need no harness.

repro.py is the prelude (prelude.py: a stand-in for the harness's case, world and checkpoint, importing only
torch, deepspeed and transformers), the case's values as Python literals, and the check function itself with
every harness function it calls, copied from the harness's source: the script checks exactly what the
harness checked, and says so in the same words. report.md is ready to paste into an upstream issue.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pprint
import re
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Callable

from ..casekey import CaseKey
from ..errors import UsageError
from ..rundir import RunDir
from . import prelude

SUBJECT = "transformers"
# Checks whose script has been seen to reproduce them (exit 0 where they hold, 1 naming the tensor where not).
SCRIPTED = ("P1", "P2", "P4", "P5", "G1", "G2", "G3", "G4", "G5", "G6", "G7", "G8", "N1")
# What the prelude supplies in the harness's place: copied functions call these names.
SUPPLIED = {"Case"}
RUN_COMMAND = "DS_ACCELERATOR=cpu torchrun --nproc-per-node {n} repro.py"


def scripted(clause: str, check: str) -> bool:
    """Whether standalone scripts cover this check (all of its clause's, or this one)."""
    return clause in SCRIPTED or f"{clause}-{check}" in SCRIPTED


class NoScript(Exception):
    """No standalone script can be written for this case (the report then gives the harness command)."""


@dataclasses.dataclass
class Reproducer:
    record: Any
    script: str | None  # None where no standalone script exists; `why` says so
    why: str
    report: str


def write(case_id: str, run_dir: Path, out: Path) -> Reproducer:
    """Writes repro.py (where a script can be made) and report.md for `case_id` of `run_dir` into `out`."""
    record, selection = _find(case_id, run_dir)
    try:
        script, why = _script(record, selection), ""
    except NoScript as exc:
        script, why = None, str(exc)
    report = _report(record, selection, script, why, run_dir)
    out.mkdir(parents=True, exist_ok=True)
    if script is not None:
        (out / "repro.py").write_text(script, encoding="utf-8")
    (out / "report.md").write_text(report, encoding="utf-8")
    return Reproducer(record, script, why, report)


def _find(case_id: str, run_dir: Path) -> tuple[Any, dict[str, Any]]:
    run = RunDir(run_dir)
    if not run.has_records():
        raise UsageError(run.not_a_run_dir())
    matches = [r for r in run.records() if r.case_id == case_id]
    if not matches:
        try:
            CaseKey.parse(case_id)
        except ValueError as exc:  # mistyped, rather than absent from this run
            raise UsageError(str(exc)) from None
        raise UsageError(f"no case {case_id!r} in {run_dir}")
    record = matches[-1]
    if record.subject != SUBJECT:
        raise UsageError(f"{case_id} is a case of the {record.subject} subject: a reproducer is for the "
                         f"{SUBJECT} subject's findings")
    selection = (run.read_plan() or {}).get("selection", {})
    return record, selection


def _case_spec(record: Any) -> Any:
    from ..catalog import build_cases
    from ..zoo import FAMILIES

    zoo = record.model in FAMILIES and FAMILIES[record.model].auto_class == record.head
    try:
        cases = build_cases(subjects=[SUBJECT], clauses=[record.clause], world_sizes=[record.world_size],
                            models=[record.model] if zoo else None, architectures=None if zoo else [record.model])
    except UsageError as exc:
        raise NoScript(f"the installed harness does not make this case: {exc}") from None
    for spec in cases:
        if spec.id == record.case_id:
            return spec
    raise NoScript("the installed harness does not make this case (a checkpoint of your own, or a type this "
                   "transformers lacks)")


def _script(record: Any, selection: dict[str, Any]) -> str:
    from ..checks.registry import load_checks
    from ..dsconfig import with_dtype
    from ..zoo import SHARD_SIZE

    if not scripted(record.clause, record.check):
        raise NoScript(f"no standalone script exists for {record.clause}-{record.check} yet (scripts cover "
                       f"{', '.join(SCRIPTED)})")
    spec = _case_spec(record)
    if spec.skip:
        raise NoScript(f"the case does not run here: {spec.skip}")
    family = spec.family
    config = family.make_config()
    ds_config = with_dtype(selection.get("ds_config") or _default_ds_config(), spec.dtype)
    values = {"CASE_ID": record.case_id, "MODEL_TYPE": config.model_type, "CONFIG": _config_literal(config),
              "MODEL_CLASS": family.auto_class, "CHECKPOINT_CLASS": family.checkpoint_auto_class,
              "LAYOUT": spec.layout or "safetensors", "WORLD_SIZE": spec.world_size, "DTYPE": spec.dtype,
              "DS_CONFIG": ds_config, "SHARD_SIZE": SHARD_SIZE}
    check = load_checks()[spec.check_id].fn
    copied, imports = _closure([check, *_prelude_needs()])
    return _assemble(record, values, copied, imports, check.__name__)


def _default_ds_config() -> dict[str, Any]:
    from ..dsconfig import DEFAULT_ZERO3_CONFIG

    return DEFAULT_ZERO3_CONFIG


def _config_literal(config: Any) -> dict[str, Any]:
    """The fields in which the case's config differs from the type's default one (sub-configs likewise), if
    the config rebuilds from them; else every field."""
    import transformers

    whole = _comparable(config.to_dict())
    candidate = _difference(whole, _comparable(type(config)().to_dict()))
    for _ in range(3):  # a field derived from another one (a width from hidden_size) joins when it differs
        try:
            rebuilt = _comparable(transformers.AutoConfig.for_model(config.model_type, **candidate).to_dict())
        except Exception:  # noqa: BLE001 - every field, as a last resort
            break
        off = [key for key in whole if rebuilt.get(key) != whole[key]]
        if not off:
            if _is_literal(candidate):
                return candidate
            break
        candidate.update({key: whole[key] for key in off})
    try:
        rebuilt = _comparable(transformers.AutoConfig.for_model(config.model_type, **whole).to_dict())
    except Exception as exc:  # noqa: BLE001 - a config that does not rebuild from its own fields
        raise NoScript(f"the tiny {config.model_type} config does not rebuild from its fields: "
                       f"{type(exc).__name__}: {exc}") from None
    if rebuilt == whole and _is_literal(whole):
        return whole
    raise NoScript(f"the tiny {config.model_type} config cannot be written as literal keyword arguments")


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _comparable(v) if isinstance(v, dict) else v for k, v in values.items()
            if k not in ("transformers_version", "model_type", "_name_or_path")}


def _difference(values: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(default.get(key), dict):
            inner = _difference(value, default[key])
            if inner:
                out[key] = inner
        elif key not in default or default[key] != value:
            out[key] = value
    return out


def _as_source(value: Any) -> str | None:
    """Python source that rebuilds `value`: a literal, a compiled pattern, or a tuple or list of these; None
    where there is none."""
    if isinstance(value, re.Pattern):
        return f"re.compile({value.pattern!r}, {value.flags})"
    if _is_literal(value):
        return pprint.pformat(value, width=110)
    if isinstance(value, (tuple, list)):
        items = [_as_source(item) for item in value]
        if any(item is None for item in items):
            return None
        inner = ", ".join(items) + ("," if isinstance(value, tuple) and len(items) == 1 else "")
        return f"({inner})" if isinstance(value, tuple) else f"[{inner}]"
    return None


def _is_literal(value: Any) -> bool:
    try:
        return ast.literal_eval(pprint.pformat(value)) == value
    except (ValueError, SyntaxError):
        return False


def _prelude_needs() -> list[Any]:
    """The harness functions and classes the prelude itself uses (its HARNESS block imports them)."""
    block = re.search(r"# --- HARNESS ---.*?# --- END HARNESS ---", inspect.getsource(prelude), flags=re.S)
    imported = ast.parse(block.group(0)).body if block else []
    return [getattr(prelude, alias.name) for node in imported if isinstance(node, ast.ImportFrom)
            for alias in node.names]


def _closure(roots: list[Callable]) -> tuple[list[str], list[str]]:
    """The source of the roots and of every harness function, class and constant they reach, and the
    imports these need at module level."""
    copied: dict[str, str] = {}
    aliases: dict[str, str] = {}  # a name imported under another (`make as make_finding`): set after the copies
    imports: dict[str, str] = {}
    pending: list[Any] = list(roots)
    seen: set[int] = set()
    while pending:
        obj = pending.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        source = _source(obj)
        if re.search(r"^\s*from \.", source, re.M):
            raise NoScript(f"{obj.__name__} imports the harness's own modules inside it")
        copied[obj.__name__] = source
        for name, value in _globals_used(obj).items():
            if name in SUPPLIED or name in copied:
                continue
            if isinstance(value, types.ModuleType):
                if value.__name__.startswith("zero3_conformance"):
                    raise NoScript(f"{obj.__name__} calls the harness's {value.__name__} module")
                imports[name] = f"import {value.__name__}" + (f" as {name}" if value.__name__ != name else "")
            elif getattr(value, "__module__", "") == "typing":
                imports[name] = f"from typing import {name}"
            elif inspect.isfunction(getattr(value, "__wrapped__", None)):  # e.g. functools.cache: its source
                pending.append(value.__wrapped__)                          # holds the decorator
            elif inspect.isfunction(value) or inspect.isclass(value):
                if not value.__module__.startswith("zero3_conformance"):
                    imports[name] = f"from {value.__module__} import {value.__name__}"
                else:
                    pending.append(value)
                    if value.__name__ != name:
                        aliases[name] = f"{name} = {value.__name__}\n"
            elif (literal := _as_source(value)) is not None:
                copied[name] = f"{name} = {literal}\n"
                if "re.compile(" in literal:
                    imports["re"] = "import re"
            else:
                raise NoScript(f"{obj.__name__} uses {name}, which a script cannot hold as a literal")
    return ([copied[name] for name in sorted(copied)] + [aliases[name] for name in sorted(aliases)],
            sorted(set(imports.values())))


def _source(obj: Any) -> str:
    lines = inspect.getsource(obj).splitlines(keepends=True)
    while lines and lines[0].lstrip().startswith("@check("):  # the registration: the script calls it directly
        lines.pop(0)
        while lines and not lines[0].lstrip().startswith(("def ", "class ", "@")):
            lines.pop(0)
    return "".join(lines)


def _globals_used(obj: Any) -> dict[str, Any]:
    """The module-level names the object's source mentions (decorators and class bodies included)."""
    namespace = vars(sys.modules[obj.__module__])
    tree = ast.parse(textwrap.dedent(_source(obj)))
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names -= {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))} - {
        obj.__name__}
    return {name: namespace[name] for name in sorted(names) if name in namespace and name != obj.__name__}


def _assemble(record: Any, values: dict[str, Any], copied: list[str], imports: list[str], check_name: str) -> str:
    """The script: the case's literals, the harness's check and helpers, then the prelude's stand-ins and main."""
    text = inspect.getsource(prelude)
    body = text.split("from __future__ import annotations\n", 1)[1].lstrip()
    body = re.sub(r"# --- HARNESS ---.*?# --- END HARNESS ---\n", "", body, flags=re.S)
    top, rest = re.split(r"# --- CASE ---\n.*?# --- END CASE ---\n", body, flags=re.S)
    case_block = "".join(f"{name} = {pprint.pformat(value, width=110, sort_dicts=False)}\n"
                         for name, value in values.items())
    typing_names = {name.strip() for line in [*imports, *top.splitlines()] if line.startswith("from typing import ")
                    for name in line[len("from typing import "):].split(",")}
    lines = {line for line in [*imports, *top.splitlines()] if line.strip() and not line.startswith("from typing ")}
    lines.add(f"from typing import {', '.join(sorted(typing_names))}")
    top = "\n".join(sorted(lines, key=lambda line: (line.startswith("from "), line)))
    command = RUN_COMMAND.format(n=record.world_size)
    header = (f'"""Reproduces {record.case_id}\nwith transformers, deepspeed and torch alone (no zero3-conformance).'
              f"\n\nRun it on a CPU machine:   {command}\nOn GPUs (NCCL):            torchrun --nproc-per-node "
              f"{record.world_size} repro.py\nExit status 1: the clause is broken here, with the evidence printed; "
              f'0: it holds.\n"""\n\nfrom __future__ import annotations\n\nimport sys\n')
    parts = [header + top,
             "# The case, as the harness made it.\n" + case_block.rstrip(),
             "# The harness's check and every helper it calls, as the harness has them.\n\n\n"
             + "\n\n".join(copied).rstrip(),
             "# What stands in for the harness: the case, the subject (transformers), the world.\n\n\n" + rest.strip(),
             f'if __name__ == "__main__":\n    sys.exit(main({check_name}))\n']
    return "\n\n\n".join(parts)


def _report(record: Any, selection: dict[str, Any], script: str | None, why: str, run_dir: Path) -> str:
    from ..contract import clause_text

    cell = record.cell
    versions = ", ".join(f"{k} {cell[k]}" for k in ("transformers", "deepspeed", "torch", "accelerate", "python")
                         if k in cell)
    title = f"ZeRO-3: {_first_line(record.message) or record.check} ({record.model}, {record.head})"
    lines = [f"# {title}", "", f"**Environment:** {versions}; backend {cell.get('backend')}, device "
             f"{cell.get('device')}, world size {record.world_size}.", "",
             "**Contract clause** " + clause_text(record.clause), "",
             f"**Case:** `{record.case_id}` (zero3-conformance {cell.get('harness', '')})", "",
             *([f"**Run:** `{run_dir}`, {ended}", ""] if (ended := RunDir(run_dir).completion().note) else []),
             "## Expected vs observed", "", "```", record.message.strip() or record.status, "```", ""]
    if script is not None:
        lines += ["## Reproduce", "", "```sh", RUN_COMMAND.format(n=record.world_size), "```", "",
                  "<details><summary>repro.py</summary>", "", "```python", script.rstrip(), "```", "", "</details>",
                  ""]
    else:
        rerun = (f"zero3-conformance run --subject {SUBJECT} --clauses {record.clause} --world-sizes "
                 f"{record.world_size} " + (f"--models {record.model}" if not record.head or record.head.startswith(
                     "Auto") else f"--architectures {record.model}") + f" --out {run_dir.name}-rerun")
        lines += ["## Reproduce", "", f"No standalone script: {why}. The harness reruns the case:", "", "```sh",
                  rerun, "```", ""]
    return "\n".join(lines)


def _first_line(message: str) -> str:
    text = re.sub(r"^\[.*? on \S+, world size \d+\] (rank [\d,]+: )?", "", message.strip())
    return text.splitlines()[0][:120] if text else ""
