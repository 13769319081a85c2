"""Two runs of the same selection, compared case by case: the same cases, each with the same status, raw status
and known-issues entry. What a change to how checks run (not what they check) must leave as it was.

    python benchmarks/compare_runs.py OLD_RUN_DIR NEW_RUN_DIR [--known-issues FILE]

Entries are compared by name: the file's name and the entry's id (`known_issues.toml coalesced-gather-race`).
`--known-issues FILE` triages both runs afresh against FILE first, from their raw outcomes: for runs triaged by
different files, or made before entries had ids (they were named by position).

Exit 0: "same verdicts: N cases". Exit 1: every difference, one per line (a case in one run only; a status, raw
status or entry that differs). A case where an entry expecting more than one status (an intermittent outcome)
applies in either run, and no entry for a steady fault in the other, may differ within those statuses, entry
included. Exit 2: a directory that holds no records.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zero3_conformance import known_issues
from zero3_conformance.errors import UsageError
from zero3_conformance.known_issues import KnownIssue
from zero3_conformance.results import Record
from zero3_conformance.rundir import RunDir


def _by_case(run_dir: Path, issues: list[KnownIssue] | None) -> dict[str, Record]:
    records = {record.case_id: record for record in RunDir(run_dir).records()}  # a resumed case's last record counts
    if issues is not None:
        records = {case: known_issues.apply(record, issues) for case, record in records.items()}
    return records


def _entry(record: Record) -> str:
    return str((record.expected or {}).get("entry", ""))


def _intermittent_statuses(record: Record) -> set[str]:
    """The statuses of the record's entry where it expects more than one (a race's): else none."""
    statuses = set((record.expected or {}).get("expected") or ())
    return statuses if len(statuses) > 1 else set()


def _within_intermittent(old: Record, new: Record) -> bool:
    """An entry that expects either outcome applies to the case in one run or both, and both runs' outcomes are
    among its statuses: an intermittent case, not a difference. Which entry a race's outcome meets may differ
    between runs too (two races, or a race beside a fault whose evidence it can look like)."""
    if any(record.expected and not _intermittent_statuses(record) for record in (old, new)):
        return False  # one run met an entry for a steady fault: which one is a verdict to compare
    statuses = _intermittent_statuses(old) | _intermittent_statuses(new)
    return bool(statuses) and {old.raw_status, new.raw_status} <= statuses


def differences(old: dict[str, Record], new: dict[str, Record]) -> list[str]:
    lines = [f"{case}: only in the old run ({old[case].status})" for case in sorted(old.keys() - new.keys())]
    lines += [f"{case}: only in the new run ({new[case].status})" for case in sorted(new.keys() - old.keys())]
    for case in sorted(old.keys() & new.keys()):
        a, b = old[case], new[case]
        if _within_intermittent(a, b):
            continue
        for what, before, after in (("status", a.status, b.status), ("raw_status", a.raw_status, b.raw_status),
                                    ("entry", _entry(a) or "none", _entry(b) or "none")):
            if before != after:
                lines.append(f"{case}: {what} {before} -> {after}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--known-issues", type=Path, help="triage both runs against this file first")
    args = parser.parse_args(argv)
    try:
        issues = known_issues.load(args.known_issues) if args.known_issues else None
    except UsageError as exc:
        print(f"compare_runs: {exc}", file=sys.stderr)
        return 2
    old, new = _by_case(args.old, issues), _by_case(args.new, issues)
    for run_dir, cases in ((args.old, old), (args.new, new)):
        if not cases:
            print(f"compare_runs: {run_dir}: no result records there", file=sys.stderr)
            return 2
    found = differences(old, new)
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} differences over {len(old.keys() | new.keys())} cases", file=sys.stderr)
        return 1
    print(f"same verdicts: {len(old)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
