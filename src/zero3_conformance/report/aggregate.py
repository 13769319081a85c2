"""From run directories to one aggregate: per cell, per clause, counts, failures and where the fault likely lies.

Blame compares the two subjects on the same case (same check, model, layout, world size, dtype): where
`reference` passes and `transformers` does not, the fault is likely in the transformers integration;
where neither passes, in deepspeed or torch; where only `reference` fails, in this harness's reference.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional

from ..cell import cell_label
from ..errors import UsageError
from ..results import BAD_STATUSES, PASS, SKIP, XFAIL, XPASS, Record, read_records

GOOD = (PASS, XPASS)  # the clause held
NOT_JUDGED = (SKIP, XFAIL)  # not applicable, or a known finding shown apart
BLAME_INTEGRATION = "transformers integration"
BLAME_STACK = "deepspeed/torch"
BLAME_REFERENCE = "zero3-conformance reference"


@dataclasses.dataclass
class CellResult:
    name: str
    status: str  # COMPLETE, PARTIAL, NOT_INSTALLABLE, NOT_IMPORTABLE, RUN_FAILED
    message: str
    cell: dict[str, Any]  # versions as the records give them (pins where nothing ran)
    records: list[Record]

    def clause_counts(self) -> dict[str, Counter]:
        counts: dict[str, Counter] = defaultdict(Counter)
        for record in self.records:
            counts[record.clause][record.status] += 1
        return counts


def load_cell(run_dir: Path) -> CellResult:
    """One run directory: its records, and cell.json where a matrix run wrote one."""
    from ..matrix_runner import COMPLETE, read_cell_file

    run_dir = Path(run_dir)
    info = read_cell_file(run_dir)
    results = run_dir / "results.jsonl"
    if info is None and not results.is_file():
        raise UsageError(f"{run_dir} is not a run directory: no results.jsonl or cell.json")
    records = read_records(results) if results.is_file() else []
    status = info["status"] if info else COMPLETE
    if status == COMPLETE and not (run_dir / "summary.md").is_file():
        status = "PARTIAL"  # a run that was cut off before it wrote its summary
    cell = records[0].cell if records else {**(info or {}).get("pins", {})}
    name = (info or {}).get("cell") or (cell_label(cell) if records else run_dir.name)
    return CellResult(name, status, (info or {}).get("message", ""), cell, records)


def _case_key(record: Record) -> tuple:
    return (record.clause, record.check, record.model, record.layout, record.world_size, record.dtype)


def blame(cell: CellResult) -> list[dict[str, Any]]:
    """Every case where a subject did not hold the clause, with where the fault likely lies."""
    by_case: dict[tuple, dict[str, Record]] = defaultdict(dict)
    for record in cell.records:
        by_case[_case_key(record)][record.subject] = record
    found = []
    for _, subjects in sorted(by_case.items(), key=lambda kv: str(kv[0])):
        ours, theirs = subjects.get("reference"), subjects.get("transformers")
        bad = {name: r for name, r in subjects.items() if r.status in BAD_STATUSES}
        if not bad:
            continue
        if theirs is not None and theirs.status in BAD_STATUSES:
            likely = BLAME_STACK if ours is not None and ours.status in BAD_STATUSES else (
                BLAME_INTEGRATION if ours is not None and ours.status in GOOD else "undetermined (no reference result)")
        else:
            likely = BLAME_REFERENCE
        for name, record in sorted(bad.items()):
            found.append({"cell": cell.name, "case": record.case_id, "clause": record.clause, "subject": name,
                          "status": record.status, "likely_fault": likely, "message": record.message})
    return found


def _failing_clauses(cell: CellResult) -> set[str]:
    return {f"{r.clause}/{r.subject}" for r in cell.records if r.status in BAD_STATUSES}


def aggregate(run_dirs: list[Path], baseline: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The report's content, as report.json holds it."""
    from .. import __version__

    cells = [load_cell(d) for d in run_dirs]
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise UsageError(f"two run directories are the same cell: {sorted(n for n in names if names.count(n) > 1)[0]}")
    out: dict[str, Any] = {
        "schema": 1,
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "harness": __version__,
        "cells": [],
        "failures": [],
        "xpasses": [],
    }
    for cell in cells:
        counts = cell.clause_counts()
        out["cells"].append({
            "name": cell.name, "status": cell.status, "message": cell.message, "versions": cell.cell,
            "clauses": {clause: dict(counter) for clause, counter in sorted(counts.items())},
            "passed": bool(cell.records) and cell.status == "COMPLETE"
                      and not any(r.status in BAD_STATUSES for r in cell.records),
            "failing": sorted(_failing_clauses(cell)),
        })
        out["failures"].extend(blame(cell))
        # A known issue that passed: fixed, or a finding that only shows some of the time. Either way the
        # known-issues entry needs a look.
        out["xpasses"].extend({"cell": cell.name, "case": r.case_id, "message": r.message}
                              for r in cell.records if r.status == XPASS)
    out["supported"] = _supported_ranges(out["cells"])
    if baseline is not None:
        out["diff"] = _diff(baseline, out)
    return out


def _supported_ranges(cells: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Per library and version: in how many of the cells that use it every clause held."""
    from ..matrix import LIBRARIES

    tally: dict[str, dict[str, Counter]] = {lib: defaultdict(Counter) for lib in LIBRARIES}
    for cell in cells:
        for lib in LIBRARIES:
            version = str(cell["versions"].get(lib, "?"))
            tally[lib][version]["passed" if cell["passed"] else "not"] += 1
    return {lib: {v: f"{c['passed']}/{c['passed'] + c['not']} cells pass" for v, c in sorted(versions.items())}
            for lib, versions in tally.items()}


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    """Per cell: clauses (clause/subject) newly failing and newly fixed against an older report.json."""
    before = {c["name"]: set(c.get("failing", [])) for c in old.get("cells", [])}
    changes = {}
    for cell in new["cells"]:
        if cell["name"] not in before:
            changes[cell["name"]] = {"new_cell": [], "newly_failing": cell["failing"], "newly_fixed": []}
            continue
        now = set(cell["failing"])
        failing, fixed = sorted(now - before[cell["name"]]), sorted(before[cell["name"]] - now)
        if failing or fixed:
            changes[cell["name"]] = {"newly_failing": failing, "newly_fixed": fixed}
    return changes
