"""From run directories to one aggregate: per cell, per clause, counts, failures and where the fault likely lies.

Blame compares the two subjects on the same case (same check, model, head, layout, world size, dtype and
ZeRO-3 configuration variant), on every try of each: a report names one subject only when the difference held
on every try of both (`reference` passed every try and `transformers` failed every one: the transformers
integration; the reverse: this harness's reference), and only in a cell where the reference's own outcomes
were reproducible on every case (a reference that is intermittent anywhere in the cell shows the stack under
both subjects is not, and a difference that held three times may still be chance). Both failing on every try
points at deepspeed/torch. Any other mix of outcomes is intermittent: attributed to deepspeed/torch when both
subjects failed at least once, else not attributed.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import known_issues
from ..casekey import CaseKey
from ..cell import COMPLETE, PARTIAL, cell_label, topology_suffix
from ..errors import UsageError
from ..results import BAD_STATUSES, PASS, REPRODUCED_BY, XFAIL, XPASS, Record
from ..rundir import RunDir
from .summary import architecture_coverage, classes_with_values_compared

BLAME_INTEGRATION = "transformers integration"
BLAME_STACK = "deepspeed/torch"
BLAME_REFERENCE = "zero3-conformance reference"
NOT_ATTRIBUTED = "not attributed"
INTERMITTENT = "intermittent"
ONE_SUBJECT = "undetermined (one subject only)"


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


def load_cell(run_dir: Path, issues: Sequence[known_issues.KnownIssue] | None = None) -> CellResult:
    """One run directory: its records, and its cell file where a matrix run wrote one. With `issues`, the records
    are triaged afresh against them from their raw outcomes."""
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    info = run.read_cell()
    if info is None and not run.has_records():
        raise UsageError(run.not_a_run_dir(run.CELL))
    records = run.records()
    if issues is not None:
        records = [known_issues.apply(record, issues) for record in records]
    if info and info["status"] != COMPLETE:  # a matrix cell that never ran, or whose run broke
        status, message = info["status"], info.get("message", "")
    else:  # finished only where the run said so as its last act
        ended = run.completion(len(records))
        status, message = (COMPLETE if ended.finished else PARTIAL), ended.note
    cell = records[0].cell if records else {**(info or {}).get("pins", {})}
    # A matrix cell's name is its versions; a launched world's shape makes it another cell of the report.
    matrix_name = (info or {}).get("cell")
    name = matrix_name + topology_suffix(cell) if matrix_name else cell_label(cell) if records else run_dir.name
    return CellResult(name, status, message, cell, records)


def likely_fault(record: Record, others: Sequence[Record], reference_flaky: int = 0) -> str:
    """Where the fault behind `record` (a case that did not pass) likely lies, from the raw outcomes of every
    try of it and of the same case for the other subjects. `reference_flaky`: cases of the cell on which the
    reference itself was intermittent; where there are any, the stack under both subjects is shown to be
    nondeterministic, so a difference that held on every try may still be chance and names no one subject. A
    leftover record names whose cases spoiled a world by replaying each subject's share alone."""
    if REPRODUCED_BY in record.metrics:  # with the other subjects' leftover records of the same class
        return _replayed_fault(sorted({subject for r in [record, *others] if REPRODUCED_BY in r.metrics
                                       for subject in r.metrics[REPRODUCED_BY]}))
    reference = next((r for r in [record, *others] if r.subject == "reference"), None)
    subject = record if record.subject != "reference" else next(
        (r for r in others if r.subject == "transformers"), others[0] if others else None)
    if reference is None or subject is None:
        return ONE_SUBJECT
    failed = {r.subject: any(o in BAD_STATUSES for o in r.outcomes) for r in (reference, subject)}
    if reference.intermittent or subject.intermittent:
        return f"{BLAME_STACK} ({INTERMITTENT})" if all(failed.values()) else f"{NOT_ATTRIBUTED} ({INTERMITTENT})"
    if all(failed.values()):
        return BLAME_STACK
    if len(reference.outcomes) < 2 or len(subject.outcomes) < 2:
        return f"{NOT_ATTRIBUTED} (one try: run with --repeat 1 or more)"
    if failed[subject.subject] and set(reference.outcomes) == {PASS}:
        blamed = BLAME_INTEGRATION if subject.subject == "transformers" else f"subject {subject.subject}"
    elif failed[reference.subject] and set(subject.outcomes) == {PASS}:
        blamed = BLAME_REFERENCE
    else:
        return NOT_ATTRIBUTED
    if reference_flaky:
        return (f"{NOT_ATTRIBUTED} (would be {blamed}, but the reference itself was intermittent on "
                f"{reference_flaky} case{'s' if reference_flaky > 1 else ''} of this cell: a difference here "
                "may be chance)")
    return blamed


def _replayed_fault(reproduced_by: Sequence[str]) -> str:
    if len(reproduced_by) == 1:
        subject = reproduced_by[0]
        blamed = BLAME_INTEGRATION if subject == "transformers" else BLAME_REFERENCE if subject == "reference" \
            else f"subject {subject}"
        return f"{blamed} (its cases alone, replayed in a fresh world, leave the same change)"
    if reproduced_by:
        return (f"{BLAME_STACK} (the cases of each of {', '.join(reproduced_by)} alone, replayed in a fresh world, "
                f"leave the class changed)")
    return f"{NOT_ATTRIBUTED} (no one subject's cases alone, replayed in a fresh world, leave the same change)"


def blame(cell: CellResult) -> list[dict[str, Any]]:
    """Every case where a subject did not hold the clause and no known issue expected it, with where the
    fault likely lies."""
    by_case: dict[CaseKey, list[Record]] = defaultdict(list)
    for record in cell.records:
        by_case[record.key.across_subjects()].append(record)
    reference_flaky = sum(r.subject == "reference" and r.intermittent for r in cell.records)
    found = []
    for _, records in sorted(by_case.items(), key=lambda kv: str(dataclasses.astuple(kv[0]))):
        for record in sorted(records, key=lambda r: r.subject):
            if record.status not in BAD_STATUSES:
                continue
            others = [r for r in records if r is not record]
            found.append({"cell": cell.name, "case": record.case_id, "clause": record.clause,
                          "subject": record.subject, "status": record.status, "outcomes": record.outcomes,
                          "intermittent": record.intermittent,
                          "likely_fault": likely_fault(record, others, reference_flaky),
                          "message": record.message, "known_issue": known_issues.note(record)})
    return found


def triage(cell: CellResult) -> dict[str, int]:
    """How the cell's non-passing cases are accounted for."""
    counts = Counter()
    for record in cell.records:
        if record.status == XFAIL:
            counts[_entry_of(record)["kind"]] += 1
        elif record.status in BAD_STATUSES:
            counts["unexpected"] += 1
        if record.intermittent:
            counts[INTERMITTENT] += 1
    return {key: counts[key] for key in (known_issues.KNOWN_UPSTREAM, known_issues.NEW_FINDING, INTERMITTENT,
                                         "unexpected")}


def _failing_clauses(cell: CellResult) -> set[str]:
    return {f"{r.clause}/{r.subject}" for r in cell.records if r.status in BAD_STATUSES}


def aggregate(run_dirs: list[Path], baseline: dict[str, Any] | None = None,
              issues: Sequence[known_issues.KnownIssue] | None = None) -> dict[str, Any]:
    """The report's content, as report.json holds it; with `issues`, every record triaged afresh against them."""
    from .. import __version__

    cells = [load_cell(d, issues) for d in run_dirs]
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise UsageError(f"two run directories are the same cell: {sorted(n for n in names if names.count(n) > 1)[0]}")
    out: dict[str, Any] = {
        "schema": 2,
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
            "passed": bool(cell.records) and cell.status == COMPLETE
                      and not any(r.status in BAD_STATUSES for r in cell.records),
            # Every clause held: no failure at all, not even one a known issue expects.
            "clean": bool(cell.records) and cell.status == COMPLETE
                     and not any(r.status in (*BAD_STATUSES, XFAIL) for r in cell.records),
            "failing": sorted(_failing_clauses(cell)),
            "triage": triage(cell),
            "intermittent": dict(Counter(r.clause for r in cell.records if r.intermittent)),
            "architectures": architecture_coverage(cell.records),
            "values_compared": {subject: len(pairs)
                                for subject, pairs in classes_with_values_compared(cell.records).items()},
            "stale": [{"entry": i.name, "expected": list(i.expected), "link": i.link}
                      for i in known_issues.stale(issues or [], cell.records)],
        })
        out["failures"].extend(blame(cell))
        # A known issue that passed: fixed, or a finding that only shows some of the time. Either way the
        # known-issues entry needs a look.
        out["xpasses"].extend({"cell": cell.name, "case": r.case_id, "message": known_issues.note(r) or r.message}
                              for r in cell.records if r.status == XPASS)
    out["expected"] = _met_entries(cells)
    out["supported"] = _supported_ranges(out["cells"])
    if baseline is not None:
        out["diff"] = _diff(baseline, out)
    return out


def _entry_of(record: Record) -> dict[str, Any]:
    """The known-issues entry an XFAIL met; a schema 1 record did not name it."""
    return record.expected or {"entry": "(not named: a schema 1 record)", "kind": known_issues.KNOWN_UPSTREAM,
                               "reason": "", "link": "", "expected": [record.raw_status], "met": True}


def _met_entries(cells: list[CellResult]) -> list[dict[str, Any]]:
    """Each known-issues entry that made cases XFAIL, with the cells where it did and how many cases."""
    entries: dict[str, dict[str, Any]] = {}
    for cell in cells:
        for record in cell.records:
            if record.status != XFAIL:
                continue
            entry = entries.setdefault(_entry_of(record)["entry"], {**_entry_of(record), "cells": Counter(),
                                                                     "intermittent": 0})
            entry["cells"][cell.name] += 1
            entry["intermittent"] += record.intermittent
    return [{**entry, "cells": dict(entry["cells"])} for entry in entries.values()]


def _supported_ranges(cells: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Per library and version: in how many of the cells that use it every clause held, and in how many
    only known findings failed."""
    from ..matrix import LIBRARIES

    tally: dict[str, dict[str, Counter]] = {lib: defaultdict(Counter) for lib in LIBRARIES}
    for cell in cells:
        for lib in LIBRARIES:
            version = str(cell["versions"].get(lib, "?"))
            tally[lib][version][verdict(cell)] += 1
    return {lib: {v: f"{c[CLEAN]}/{sum(c.values())} cells every clause held"
                     + (f", {c[KNOWN_ONLY]} known findings only" if c[KNOWN_ONLY] else "")
                  for v, c in sorted(versions.items())}
            for lib, versions in tally.items()}


CLEAN, KNOWN_ONLY, FAILS = "passes", "known findings only", "fails"


def verdict(cell: dict[str, Any]) -> str:
    """A cell of the report in a word: every clause held, only known findings failed, or it fails (a failure
    nobody expected, or the run did not finish: its status then)."""
    if cell["status"] != COMPLETE:
        return cell["status"]
    return CLEAN if cell["clean"] else KNOWN_ONLY if cell["passed"] else FAILS


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
