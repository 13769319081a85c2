"""`zero3-conformance known-issues draft`: expectations drafted from runs' unexpected results.

Like wptrunner's update-expectations, the entries come from the results, not from memory: one entry per
clause / check / subject / model that did not hold somewhere without a known issue expecting it, with

- `expected`: every outcome those cases had (a set, PASS included, where they were intermittent);
- `match`: the finding kinds the failures recorded (where every one recorded its findings);
- `versions`: per library, open until fixed: from the oldest release seen failing, with no upper bound unless a
  cell with a newer release of that library (and no older release of any other than seen failing) passed the
  same cases on every try, and then below the first such release. A bug nobody fixed does not stop at the
  last release someone ran. A comment names any cell inside the range where the same cases passed on every
  try, which a version range cannot leave out;
- head class, layout, world size, dtype and backend narrowed to the failing ones where others ran and passed;
- `link = ""`: to be filled (an upstream issue or pull request, or, with `upstream = false`, the tracker where
  a new finding should be reported). The harness refuses an entry whose link is empty, so nothing drafted
  is applied before someone has triaged it.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from ..known_issues import VERSIONED, KnownIssue, versions_hold
from ..results import BAD_STATUSES, PASS, SEVERITY, SKIP, Record
from ..rundir import RunDir
from .aggregate import CellResult, load_cell

GROUP = ("clause", "check", "subject", "model")
NARROWED = ("head", "layout", "world_size", "dtype")
# What the runner put first in a message before the record's fields alone said it (runs of older releases):
# "[case on gloo, world size 2] ".
CASE_PREFIX = re.compile(r"^\[.*? on \S+, world size \d+\] ")


def _public(text: str) -> Any:
    """The public version (2.13.0 of 2.13.0+cpu): a range cannot name a local label, and without one it holds
    every local build of that version. None where `text` is not a version."""
    try:
        return Version(Version(text).public)
    except InvalidVersion:
        return None


def _version_of(cell: dict[str, Any], library: str) -> Any:
    return _public(str(cell.get(library, "")))


def _open_range(library: str, failing: list[dict[str, Any]], passing: list[dict[str, Any]],
                oldest_failing: dict[str, Any]) -> str | None:
    """`library`'s range for an entry failing in the cells `failing`: from the oldest release seen failing, up to
    (not including) the oldest newer release of `library` in a cell of `passing` whose every other library is
    at least as new as the oldest release seen failing (`oldest_failing`, per library), so that the newer
    `library` is what tells it apart; open above where no such cell passed. None when a failing cell's version
    is not a version."""
    seen = [_version_of(cell, library) for cell in failing]
    if any(version is None for version in seen):
        return None
    newest = max(seen)
    fixed = [_version_of(cell, library) for cell in passing
             if all((_version_of(cell, lib) or Version("0")) >= oldest_failing[lib] for lib in VERSIONED
                    if lib != library)]
    fixed = [version for version in fixed if version is not None and version > newest]
    return f">={min(seen)}" + (f",<{min(fixed)}" if fixed else "")


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string


def entries(cells: Sequence[CellResult]) -> list[dict[str, Any]]:
    """The drafted entries, each with the comments that go above it (`comments`)."""
    cell_of = {cell.name: cell.cell for cell in cells}
    groups: dict[tuple, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for cell in cells:
        for record in cell.records:
            if record.raw_status != SKIP:
                groups[tuple(getattr(record, f) for f in GROUP)][cell.name].append(record)
    drafted = []
    for key, by_cell in sorted(groups.items(), key=lambda kv: str(kv[0])):
        failing = {name: [r for r in records if r.status in BAD_STATUSES] for name, records in by_cell.items()}
        failing = {name: records for name, records in failing.items() if records}
        if not failing:
            continue
        passing = [name for name, records in by_cell.items()
                   if all(set(r.outcomes) == {PASS} for r in records)]
        bad = [r for records in failing.values() for r in records]
        # An id to keep or rename: the group's fields, as the file's ids are written.
        entry: dict[str, Any] = {"id": re.sub(r"[^a-z0-9]+", "-", "-".join(map(str, key)).lower()).strip("-"),
                                 **dict(zip(GROUP, key))}
        if entry["model"] == "none":  # a check that builds no model
            del entry["model"]
        for field in NARROWED:
            ran = {getattr(r, field) for name in failing for r in by_cell[name]}
            failed = {getattr(r, field) for r in bad}
            if failed < ran and None not in failed:
                values = sorted(failed)
                entry[field] = values[0] if len(values) == 1 else values
        backends = {str(cell_of[name].get("backend")) for name in failing}
        if backends < {str(cell_of[name].get("backend")) for name in by_cell}:
            entry["backend"] = sorted(backends)[0] if len(backends) == 1 else sorted(backends)
        versions = {}
        failing_cells, passing_cells = [cell_of[name] for name in failing], [cell_of[name] for name in passing]
        oldest_failing = {lib: min(_version_of(cell, lib) or Version("0") for cell in failing_cells)
                          for lib in VERSIONED}
        for library in VERSIONED:
            seen = {str(cell_of[name].get(library, "")) for name in by_cell}
            spec = _open_range(library, failing_cells, passing_cells, oldest_failing)
            if spec is not None and (library != "python" or len(seen) > 1):
                versions[library] = spec
        entry["versions"] = versions
        entry["expected"] = sorted({o for r in bad for o in r.outcomes}, key=SEVERITY.index)
        if all(r.findings for r in bad):  # the kinds seen, what the entry will match on
            kinds = sorted({found["kind"] for r in bad for found in r.findings})
            entry["match"] = {"kind": kinds[0] if len(kinds) == 1 else kinds}
        first = CASE_PREFIX.sub("", bad[0].message.strip().split("\n")[0])
        entry["reason"] = f"{first} (seen in {len(failing)} of {len(by_cell)} cells that ran it)"
        entry["link"] = ""
        # The passing cells the entry would apply to, judged as the entry itself will judge them.
        inside = [name for name in passing if versions_hold(cell_of[name], versions.items())]
        comments = [f"failing: {name}: " + ", ".join(f"{r.case_id} {'/'.join(r.outcomes)}" for r in records)
                    for name, records in failing.items()]
        comments += [f"passing on every try: {', '.join(passing)}"] if passing else []
        comments += [f"CHECK: passes on every try inside this range in {', '.join(inside)}: split the entry or "
                     "narrow it"] if inside else []
        drafted.append({"comments": comments, "entry": entry})
    return drafted


def render(drafted: list[dict[str, Any]], sources: Sequence[Path]) -> str:
    lines = ["# Drafted by `zero3-conformance known-issues draft` from " + ", ".join(map(str, sources)) + ".",
             "# Triage each entry before use: fill `link` with an upstream issue or pull request (.../issues/N,",
             "# .../pull/N), or set `upstream = false` for a finding not reported yet, describe it (tensor,",
             "# expected_value, observed_value, seen_in, not_seen_in) and link the tracker it belongs to.",
             "# An entry with an empty link is refused, so a draft is never applied untriaged."]
    lines += [f"# {d}: {ended.note}: a case it never ran cannot be drafted from it" for d in sources
              if (ended := RunDir(d).completion()).note] + [""]
    for item in drafted:
        lines += ["[[issue]]"] + [f"# {c}" for c in item["comments"]]
        lines += [f"{field} = {_toml(value)}" for field, value in item["entry"].items()] + [""]
    return "\n".join(lines)


def draft(run_dirs: Sequence[Path], issues: Sequence[KnownIssue] | None = None) -> str:
    """The draft file's text, from the runs' results (triaged afresh against `issues` when given)."""
    return render(entries([load_cell(d, issues) for d in run_dirs]), run_dirs)
