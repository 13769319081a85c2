"""`zero3-conformance known-issues compare`: the proof that an edit of the known-issues file changes nothing it
should not. Every record of the runs is triaged afresh with the old file and with the new one; a record whose
status, entry or met-ness differs is listed. An entry is identified by its cause, not its number: a new
finding by its short name, a known upstream one by its link; so reordering entries, or merging entries for one
cause into one, is no difference.

A comparison that compared nothing has not passed: the summary says how many records met an entry through their
findings' kinds (`match`) and how many only through `message`, the fallback for records without findings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import known_issues
from ..known_issues import KnownIssue
from ..results import Record
from .aggregate import load_cell


@dataclass
class Comparison:
    records: int = 0
    met_by_kinds: int = 0  # met, in the new file, by an entry's `match` against the record's findings
    met_by_message: int = 0  # met, in the new file, without findings or without `match`
    differences: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.records} records re-triaged; with the new file {self.met_by_kinds} meet an entry through "
                f"their findings' kinds, {self.met_by_message} through a message (no findings, or an entry "
                f"without match); {len(self.differences)} triaged otherwise than with the old file")


def _cause(issue: KnownIssue | None) -> str:
    return "" if issue is None else issue.short_name or issue.link


def _identity(issue: KnownIssue | None) -> str:
    return "none" if issue is None else f"{issue.name} ({_cause(issue)})"


def _entry_of(record: Record, issues: Sequence[KnownIssue]) -> KnownIssue | None:
    name = (record.expected or {}).get("entry")
    return next((issue for issue in issues if issue.name == name), None)


def compare(run_dirs: Sequence[Path], old: Sequence[KnownIssue], new: Sequence[KnownIssue]) -> Comparison:
    result = Comparison()
    for run_dir in run_dirs:
        cell = load_cell(run_dir)
        for record in cell.records:
            before, after = known_issues.apply(record, old), known_issues.apply(record, new)
            entry_before, entry_after = _entry_of(before, old), _entry_of(after, new)
            met_before = bool((before.expected or {}).get("met"))
            met_after = bool((after.expected or {}).get("met"))
            result.records += 1
            if met_after and entry_after is not None:
                if entry_after.judges_by_kinds(record):
                    result.met_by_kinds += 1
                else:
                    result.met_by_message += 1
            if (before.status, met_before) != (after.status, met_after) or _cause(entry_before) != _cause(entry_after):
                result.differences.append(
                    f"{cell.name} {record.case_id}: {before.status} -> {after.status}; entry "
                    f"{_identity(entry_before)}{' (met)' if met_before else ''} -> "
                    f"{_identity(entry_after)}{' (met)' if met_after else ''}")
    return result
