"""A run of cases into a run directory: what it was asked to check (its plan), the cases that plan names,
the records it already finished, and running the rest while the summary follows every result. Every
front end starts and resumes runs here: the CLI from a plan, the pytest plugin from the records alone."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .. import known_issues
from ..errors import UsageError
from ..report import summary
from ..results import Record
from ..rundir import RunDir
from ..worlds.launched import LaunchedWorld
from .records import Recorder
from .runner import Runner, default_parallel_worlds
from .selection import Selection


def read_plan(run_dir: RunDir) -> Selection:
    """The selection an earlier run in `run_dir` was started with."""
    if not run_dir.plan_path.is_file():
        raise UsageError(f"cannot resume {run_dir}: no {run_dir.PLAN} (not a run directory, or one from before "
                         "runs could be resumed)")
    plan = (run_dir.read_plan() or {}).get("selection")
    if not isinstance(plan, dict):
        raise UsageError(f"cannot resume {run_dir}: {run_dir.PLAN} is not a run plan")
    return Selection.from_plan(plan, str(run_dir.plan_path))


def same_cell(run_dir: RunDir, finished: Iterable[Record], cell: dict[str, Any]) -> None:
    """Raises UsageError where a finished record was made on a cell other than `cell`."""
    other_cells = {json.dumps(r.cell, sort_keys=True) for r in finished} - {json.dumps(cell, sort_keys=True)}
    if other_cells:
        raise UsageError(f"cannot resume {run_dir}: it was run on another cell ({sorted(other_cells)[0]}), this "
                         f"environment is {json.dumps(cell, sort_keys=True)}")


class Run:
    """The cases of one selection, run into `out`: records already finished there are kept (a resumed run),
    the rest run, and the summary is rewritten after every result, so that a run killed outright still has
    one that says it is partial."""

    def __init__(self, out: Path, selection: Selection, finished: Sequence[Record] | None = None,
                 world: LaunchedWorld | None = None):
        self.out, self.selection, self.world = out, selection, world
        self.dir = RunDir(out)
        self.issues = known_issues.load(Path(selection.known_issues))
        self.cases = selection.cases(world.world_size if world is not None else None)
        self.finished = list(finished or ())
        done = {r.case_id for r in self.finished}
        self.remaining = [case for case in self.cases if case.id not in done]
        self.records: list[Record] = list(self.finished)

    @classmethod
    def resume(cls, out: Path, world: LaunchedWorld | None = None) -> Run:
        run_dir = RunDir(out)
        return cls(out, read_plan(run_dir), run_dir.finished_records(), world)

    def execute(self, parallel_worlds: int | None = None,
                on_record: Callable[[Record], None] = lambda record: None) -> list[Record]:
        """Runs what is left and returns every record of the run, the kept ones first."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            # The plan, with the number of cases and no end marker: the run records its end as its last act.
            self.dir.write_plan(self.selection.to_plan(), len(self.cases))
            self.dir.keep_only(self.finished)  # drops a line a killed run left torn
            self.dir.drop_summary()
        except OSError as exc:
            raise UsageError(f"cannot write to output directory {self.out}: {exc.strerror}") from None
        runner = Runner(self.selection.ds_config, timeout_s=self.selection.timeout, repeat=self.selection.repeat,
                        launched=self.world)
        same_cell(self.dir, self.finished, runner.cell)

        def progress(index: int, total: int, record: Record) -> None:
            self.records.append(record)
            self.dir.write_summary(summary.render(self.records, len(self.cases)))
            on_record(record)

        if self.world is not None:
            parallel_worlds = 1  # the launched world is the one world there is
        with self.dir.writer() as writer:
            runner.run(self.remaining, Recorder(self.issues, writer), progress,
                       parallel_worlds or default_parallel_worlds(runner.backend))
        notes = [f"possibly stale known issue {i.name}: it applies to cases that ran here and none met it "
                 f"(expected {' or '.join(i.expected)}; {i.link})"
                 for i in known_issues.stale(self.issues, self.records)]
        self.dir.write_summary(summary.render(self.records, len(self.cases), notes))
        self.dir.mark_finished(len(self.cases), len(self.records))
        return self.records
