"""A run of cases into a run directory: what it was asked to check (its plan, run.json), the cases that plan
names, the records it already finished, and running the rest while summary.md follows every result. Every
front end starts and resumes runs here: the CLI from a plan, the pytest plugin from the records alone."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .. import known_issues
from ..catalog import CaseSpec, build_cases
from ..dsconfig import validate
from ..errors import UsageError
from ..report import summary
from ..results import Record, RecordWriter, read_records, write_records
from ..rundir import PLAN_FILE, RESULTS_FILE, SUMMARY_FILE, mark_finished, write_plan
from ..worlds.launched import LaunchedWorld
from ..zoo import detect_layout, user_family
from .runner import NOT_RUN, Runner, default_parallel_worlds, prepare_checkpoints

SELECTION = ("subject", "models", "architectures", "clauses", "world_sizes", "variants", "model", "ds_config",
             "known_issues", "timeout", "repeat")
# What a plan written before a key existed meant by leaving it out.
SELECTION_BEFORE = {"repeat": 0, "architectures": "", "variants": ""}


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def world_sizes(text: str) -> list[int]:
    try:
        return [int(part) for part in comma_list(text)]
    except ValueError:
        raise UsageError(f"invalid --world-sizes {text!r}: expected comma-separated integers") from None


def read_plan(run_dir: Path) -> dict[str, Any]:
    """The selection an earlier run in `run_dir` was started with."""
    try:
        plan = json.loads((run_dir / PLAN_FILE).read_text(encoding="utf-8"))
        selection = {key: plan["selection"][key] if key in plan["selection"] else SELECTION_BEFORE[key]
                     for key in SELECTION}
    except OSError:
        raise UsageError(f"cannot resume {run_dir}: no {PLAN_FILE} (not a run directory, or one from before "
                         "runs could be resumed)") from None
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"cannot resume {run_dir}: {PLAN_FILE} is not a run plan") from None
    validate(selection["ds_config"], str(run_dir / PLAN_FILE))
    return selection


def finished_records(run_dir: Path, pattern: str = RESULTS_FILE) -> list[Record]:
    """The records of the files matching `pattern` in `run_dir` whose case ran (a torn last line is dropped;
    a case whose world never started or broke first is left to run again)."""
    return [record for path in sorted(run_dir.glob(pattern)) for record in read_records(path)
            if not record.metrics.get(NOT_RUN)]


def same_cell(run_dir: Path, finished: Iterable[Record], cell: dict[str, Any]) -> None:
    """Raises UsageError where a finished record was made on a cell other than `cell`."""
    other_cells = {json.dumps(r.cell, sort_keys=True) for r in finished} - {json.dumps(cell, sort_keys=True)}
    if other_cells:
        raise UsageError(f"cannot resume {run_dir}: it was run on another cell ({sorted(other_cells)[0]}), this "
                         f"environment is {json.dumps(cell, sort_keys=True)}")


def cases_of(selection: dict[str, Any], launched_size: int | None = None) -> list[CaseSpec]:
    """The cases a selection names; in a launched world of `launched_size` ranks, each at that size."""
    user_model = None
    if selection["model"] is not None:
        detect_layout(Path(selection["model"]))
        user_model = user_family(Path(selection["model"]))
    asked_sizes = world_sizes(selection["world_sizes"]) if selection["world_sizes"] else None
    if launched_size is not None and asked_sizes and asked_sizes != [launched_size]:
        raise UsageError(f"--world-sizes {selection['world_sizes']}: the launched world has {launched_size} "
                         f"ranks, and every case runs at its size")
    return build_cases(comma_list(selection["subject"]), comma_list(selection["models"]),
                       comma_list(selection["clauses"]), asked_sizes, user_model,
                       comma_list(selection["architectures"]), launched_size=launched_size,
                       variants=comma_list(selection["variants"]))


class Run:
    """The cases of one selection, run into `out`: records already finished there are kept (a resumed run),
    the rest run, and summary.md is rewritten after every result, so that a run killed outright still has
    one that says it is partial."""

    def __init__(self, out: Path, selection: dict[str, Any], finished: Sequence[Record] | None = None,
                 world: LaunchedWorld | None = None):
        self.out, self.selection, self.world = out, selection, world
        self.issues = known_issues.load(Path(selection["known_issues"]))
        self.cases = cases_of(selection, world.world_size if world is not None else None)
        self.finished = list(finished or ())
        done = {r.case_id for r in self.finished}
        self.remaining = [case for case in self.cases if case.id not in done]
        self.records: list[Record] = list(self.finished)

    @classmethod
    def resume(cls, out: Path, world: LaunchedWorld | None = None) -> Run:
        return cls(out, read_plan(out), finished_records(out), world)

    def execute(self, parallel_worlds: int | None = None,
                on_record: Callable[[Record], None] = lambda record: None) -> list[Record]:
        """Runs what is left and returns every record of the run, the kept ones first."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            # The plan, with the number of cases and no end marker: the run records its end as its last act.
            write_plan(self.out, self.selection, len(self.cases))
            write_records(self.out / RESULTS_FILE, self.finished)  # drops a line a killed run left torn
            (self.out / SUMMARY_FILE).unlink(missing_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot write to output directory {self.out}: {exc.strerror}") from None
        prepare_checkpoints(self.remaining)
        runner = Runner(self.selection["ds_config"], timeout_s=self.selection["timeout"], known_issues=self.issues,
                        repeat=self.selection["repeat"], launched=self.world)
        same_cell(self.out, self.finished, runner.cell)

        def progress(index: int, total: int, record: Record) -> None:
            self.records.append(record)
            summary.write(self.out / SUMMARY_FILE, self.records, len(self.cases))
            on_record(record)

        if self.world is not None:
            parallel_worlds = 1  # the launched world is the one world there is
        with RecordWriter(self.out / RESULTS_FILE) as writer:
            runner.run(self.remaining, writer, progress, parallel_worlds or default_parallel_worlds(runner.backend))
        notes = [f"possibly stale known issue {i.name}: it applies to cases that ran here and none met it "
                 f"(expected {' or '.join(i.expected)}; {i.link})"
                 for i in known_issues.stale(self.issues, self.records)]
        summary.write(self.out / SUMMARY_FILE, self.records, len(self.cases), notes)
        mark_finished(self.out, len(self.cases), len(self.records))
        return self.records
