"""A run directory's plan and its end: whether the run in it finished.

A run writes its plan (run.json: what it was asked to check and how many cases that is) before its first
case, and as its last act adds the end marker (`finished`: cases planned and recorded). A directory whose
plan has no end marker was killed, or is still running: PARTIAL, whatever its records say. summary.md is no
evidence either way: it is rewritten after every record. A directory written before the marker existed is
judged by its records against the count its summary gives, and says that its completion was not recorded.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from .results import Record, read_records, write_whole

PLAN_FILE = "run.json"  # what a run was asked to check, so that `run --resume DIR` can finish it
RESULTS_FILE = "results.jsonl"  # the CLI's records
WORKER_RESULTS = "results-*.jsonl"  # the pytest front end's records: one file per worker (xdist's id, or "main")
SUMMARY_FILE = "summary.md"
END = "finished"  # the plan's end marker
# How summary.md has stated its plan's size since it was first written ("— 12 of 896 planned results").
_SUMMARY_PLANNED = re.compile(r" of (\d+) planned results")


@dataclasses.dataclass(frozen=True)
class Completion:
    finished: bool  # the run ended, and every case it planned has a record here
    note: str  # "" for a run that finished and said so; else what is known ("PARTIAL: 1 of 896 recorded")


def result_files(run_dir: Path) -> list[Path]:
    """The files holding a run's records: the CLI's one, or the pytest front end's one per worker."""
    run_dir = Path(run_dir)
    return [run_dir / RESULTS_FILE] if (run_dir / RESULTS_FILE).is_file() else sorted(run_dir.glob(WORKER_RESULTS))


def records(run_dir: Path) -> list[Record]:
    return [record for path in result_files(run_dir) for record in read_records(path)]


def read_plan_file(run_dir: Path) -> dict[str, Any] | None:
    try:
        plan = json.loads((Path(run_dir) / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def write_plan(run_dir: Path, selection: dict[str, Any] | None, planned: int) -> None:
    """The plan a run starts with, without an end marker: a run resumed in this directory starts over here."""
    plan: dict[str, Any] = {"schema": 1, "planned": planned}
    if selection is not None:
        plan["selection"] = selection
    _write_plan_file(run_dir, plan)


def mark_finished(run_dir: Path, planned: int, recorded: int) -> None:
    """The run's last act: its plan says that it ended, with the cases it planned and recorded."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    plan = read_plan_file(run_dir) or {"schema": 1}
    plan.update(planned=planned)
    plan[END] = {"planned": planned, "recorded": recorded}
    _write_plan_file(run_dir, plan)


def clear_end(run_dir: Path) -> None:
    """A run starting again in `run_dir` (resumed) has not finished until it records its end anew."""
    plan = read_plan_file(run_dir)
    if plan is not None and END in plan:
        del plan[END]
        _write_plan_file(run_dir, plan)


def _write_plan_file(run_dir: Path, plan: dict[str, Any]) -> None:
    write_whole(Path(run_dir) / PLAN_FILE, json.dumps(plan, indent=2) + "\n")


def completion(run_dir: Path, recorded: int) -> Completion:
    """Whether the run in `run_dir`, which holds `recorded` records, finished."""
    plan = read_plan_file(run_dir) or {}
    end = plan.get(END)
    if isinstance(end, dict) and isinstance(end.get("planned"), int):
        if recorded >= end["planned"]:
            return Completion(True, "")
        return Completion(False, f"PARTIAL: {recorded} of {end['planned']} recorded")
    if isinstance(plan.get("planned"), int):  # a run of this harness that never reached its end
        return Completion(False, f"PARTIAL: {recorded} of {plan['planned']} recorded (the run did not record its "
                                 "end: killed, or still running)")
    planned = _planned_by_summary(Path(run_dir))
    if planned is None:
        return Completion(False, f"PARTIAL: {recorded} recorded, completion not recorded and no plan to count against")
    if recorded >= planned:
        return Completion(True, f"completion not recorded: {recorded} of {planned} recorded")
    return Completion(False, f"PARTIAL: {recorded} of {planned} recorded (completion not recorded)")


def completion_of(run_dir: Path) -> Completion:
    return completion(run_dir, len(records(run_dir)))


def _planned_by_summary(run_dir: Path) -> int | None:
    try:
        found = _SUMMARY_PLANNED.search((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    except OSError:
        return None
    return int(found.group(1)) if found else None
