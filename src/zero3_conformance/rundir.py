"""A run directory and every file in it: `RunDir` is the one place that names them.

A run writes its plan (what it was asked to check and how many cases that is) before its first case, and as
its last act adds the end marker (`finished`: cases planned and recorded). A directory whose plan has no end
marker was killed, or is still running: PARTIAL, whatever its records say. The summary is no evidence either
way: it is rewritten after every record. A directory written before the marker existed is judged by its
records against the count its summary gives, and says that its completion was not recorded.

Records are in one file (the CLI's) or one file per pytest worker (xdist's id, or "main"); every reader
reads either. A matrix cell's directory also holds its cell file, and a node of a launched run that served
another node's rank 0 leaves its note there instead of records.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .results import NOT_RUN, Record, RecordWriter, read_records, write_records, write_whole

END = "finished"  # the plan's end marker
# How the summary has stated its plan's size since it was first written ("— 12 of 896 planned results").
_SUMMARY_PLANNED = re.compile(r" of (\d+) planned results")


@dataclasses.dataclass(frozen=True)
class Completion:
    finished: bool  # the run ended, and every case it planned has a record here
    note: str  # "" for a run that finished and said so; else what is known ("PARTIAL: 1 of 896 recorded")


class RunDir:
    PLAN = "run.json"  # what a run was asked to check, so that `run --resume DIR` can finish it
    RESULTS = "results.jsonl"  # the CLI's records
    WORKER_RESULTS = "results-{worker}.jsonl"  # the pytest front end's records, one file per worker
    SUMMARY = "summary.md"
    CELL = "cell.json"  # a matrix cell's: whether its environment installed and imported, how its run ended
    SERVED = "served.json"  # a launched run's node that served another node's rank 0

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def plan_path(self) -> Path:
        return self.path / self.PLAN

    @property
    def results_path(self) -> Path:
        return self.path / self.RESULTS

    @property
    def summary_path(self) -> Path:
        return self.path / self.SUMMARY

    def worker_results_path(self, worker: str) -> Path:
        return self.path / self.WORKER_RESULTS.format(worker=worker)

    # -- records

    def result_files(self) -> list[Path]:
        """The files holding the run's records: the CLI's one, or the pytest front end's one per worker."""
        if self.results_path.is_file():
            return [self.results_path]
        return sorted(self.path.glob(self.WORKER_RESULTS.format(worker="*")))

    def has_records(self) -> bool:
        return bool(self.result_files())

    def not_a_run_dir(self, *also: str) -> str:
        """What a reader says of a directory with no records (nor any of the files `also` names that it reads)."""
        names = [self.RESULTS, self.WORKER_RESULTS.format(worker="*"), *also]
        return f"{self.path} is not a run directory (no {' or '.join(names)})"

    def records(self) -> list[Record]:
        return [record for path in self.result_files() for record in read_records(path)]

    def finished_records(self, path: Path | None = None) -> list[Record]:
        """The records (of `path`, one of the result files, or of them all) whose case ran; a torn last line is
        dropped, and a case whose world never started or broke first is left to run again."""
        return [record for file in ([path] if path else self.result_files()) for record in read_records(file)
                if not record.metrics.get(NOT_RUN)]

    def keep_only(self, records: Iterable[Record], path: Path | None = None) -> None:
        """Replaces a result file (the CLI's by default) with exactly these records."""
        write_records(path or self.results_path, records)

    def keep_only_finished(self) -> None:
        """Every result file keeps only its records whose case ran, so that a case run again has one record."""
        for path in self.result_files():
            self.keep_only(self.finished_records(path), path)

    def clear_records(self) -> None:
        """A run starting afresh here: no earlier run's records, and no summary of them."""
        for path in self.result_files():
            path.unlink()
        self.drop_summary()

    def writer(self, worker: str | None = None) -> RecordWriter:
        """Appends to the CLI's result file, or with `worker` to that pytest worker's."""
        return RecordWriter(self.worker_results_path(worker) if worker else self.results_path)

    # -- the plan and its end

    def read_plan(self) -> dict[str, Any] | None:
        try:
            plan = json.loads(self.plan_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return plan if isinstance(plan, dict) else None

    def write_plan(self, selection: dict[str, object] | None, planned: int | None) -> None:
        """The plan a run starts with, without an end marker: a run resumed in this directory starts over here.
        `planned`: None where the cases are not counted yet (a pytest controller's, before its workers collect)."""
        plan: dict[str, Any] = {"schema": 1} if planned is None else {"schema": 1, "planned": planned}
        if selection is not None:
            plan["selection"] = selection
        self._write_plan(plan)

    def mark_finished(self, planned: int, recorded: int) -> None:
        """The run's last act: its plan says that it ended, with the cases it planned and recorded."""
        plan = self.read_plan() or {"schema": 1}
        plan.update(planned=planned)
        plan[END] = {"planned": planned, "recorded": recorded}
        self._write_plan(plan)

    def clear_end(self) -> None:
        """A run starting again here (resumed) has not finished until it records its end anew."""
        plan = self.read_plan()
        if plan is not None and END in plan:
            del plan[END]
            self._write_plan(plan)

    def _write_plan(self, plan: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_whole(self.plan_path, json.dumps(plan, indent=2) + "\n")

    def completion(self, recorded: int | None = None) -> Completion:
        """Whether the run here, which holds `recorded` records (by default, those its files hold), finished."""
        recorded = len(self.records()) if recorded is None else recorded
        plan = self.read_plan() or {}
        end = plan.get(END)
        if isinstance(end, dict) and isinstance(end.get("planned"), int):
            if recorded >= end["planned"]:
                return Completion(True, "")
            return Completion(False, f"PARTIAL: {recorded} of {end['planned']} recorded")
        if isinstance(plan.get("planned"), int):  # a run of this harness that never reached its end
            return Completion(False, f"PARTIAL: {recorded} of {plan['planned']} recorded (the run did not record "
                                     "its end: killed, or still running)")
        planned = self._planned_by_summary()
        if planned is None:
            return Completion(False, f"PARTIAL: {recorded} recorded, completion not recorded and no plan to count "
                                     "against")
        if recorded >= planned:
            return Completion(True, f"completion not recorded: {recorded} of {planned} recorded")
        return Completion(False, f"PARTIAL: {recorded} of {planned} recorded (completion not recorded)")

    def _planned_by_summary(self) -> int | None:
        try:
            found = _SUMMARY_PLANNED.search(self.summary_path.read_text(encoding="utf-8"))
        except OSError:
            return None
        return int(found.group(1)) if found else None

    # -- the summary, a matrix cell's file, a served node's note

    def write_summary(self, text: str) -> None:
        write_whole(self.summary_path, text)

    def drop_summary(self) -> None:
        self.summary_path.unlink(missing_ok=True)

    def read_cell(self) -> dict[str, Any] | None:
        return self._read_json(self.CELL)

    def write_cell(self, info: dict[str, Any]) -> None:
        self._write_json(self.CELL, info)

    def read_served(self) -> dict[str, Any] | None:
        return self._read_json(self.SERVED)

    def write_served(self, note: dict[str, Any]) -> None:
        self._write_json(self.SERVED, note)

    def _read_json(self, name: str) -> dict[str, Any] | None:
        try:
            value = json.loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _write_json(self, name: str, value: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_whole(self.path / name, json.dumps(value, indent=2, sort_keys=True) + "\n")
