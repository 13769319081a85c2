"""Cases asked for one at a time (a test framework's items), run as the CLI runs them.

A test framework hands over one case per test; the contract's tries are per case across subjects: where one
subject did not pass, the other is tried as often, so that blame compares like with like. A `Session` knows
every case its process collected, so that the first of a case's subjects to be asked for runs them all
together (`Runner.run_together`), and the others' tests are answered from those records. Every record goes
to the session's result file in the run directory; the process that ends the session writes the summary
and the end marker. The pytest plugin and the unittest front end are its two users.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

from .. import known_issues
from ..casekey import CaseKey
from ..catalog import CaseSpec
from ..dsconfig import DEFAULT_ZERO3_CONFIG
from ..errors import UsageError
from ..report import summary
from ..results import DEFAULT_REPEAT, PASS, SKIP, XFAIL, XPASS, Record, RecordWriter, read_records, write_whole
from ..rundir import RunDir
from .plan import same_cell
from .records import Recorder
from .runner import Runner


class Session:
    def __init__(self, cases: Iterable[CaseSpec], out: Path | None = None, worker: str = "main",
                 issues: Path = known_issues.DEFAULT_FILE, repeat: int = DEFAULT_REPEAT, resume: bool = False,
                 shared: Path | None = None):
        """`cases`: every case this process may be asked for (the subjects of one case are run together);
        `out`: the run directory, this process writing its `worker`'s result file; with `resume`, a case
        the directory has a record of is answered from it. `shared`: a directory every process of the session
        sees (pytest-xdist's workers), where the first to be asked for a case claims it and publishes its
        subjects' records for the others: which worker gets which test is the scheduler's choice."""
        triage = known_issues.load(issues)  # a bad file is a usage error before anything starts
        self.runner = Runner(DEFAULT_ZERO3_CONFIG, repeat=repeat)
        self.by_case: dict[CaseKey, list[CaseSpec]] = {}
        for case in cases:
            self.by_case.setdefault(case.key.across_subjects(), []).append(case)
        self.run_dir = RunDir(out) if out is not None else None
        self.shared = shared
        self.records: dict[str, Record] = {}
        if resume and self.run_dir is not None:
            # Every worker's file: under xdist a case may land on another worker than the one that ran it.
            self.records = {r.case_id: r for r in self.run_dir.finished_records()}
        self.writer: RecordWriter | None = self.run_dir.writer(worker) if self.run_dir is not None else None
        self.recorder = Recorder(triage, self.writer)

    def run(self, case: CaseSpec) -> Record:
        """The record of `case`: run now with the subjects of its case that are still to run, or already run
        (here, or by another process of the session)."""
        if case.id in self.records:
            return self.records[case.id]
        key = case.key.across_subjects()
        together = [c for c in self.by_case.get(key, [case]) if c.id not in self.records]
        together = together if case in together else [case]
        published, mine = self._claim(key)
        if mine or published is None:
            self._run(together, published)
        else:
            self._wait_for(together, published)
        return self.records[case.id]

    def _run(self, together: list[CaseSpec], published: Path | None) -> None:
        finished = [self.recorder.write(record) for record in self.runner.run_together(together)]
        for record in [*finished, *map(self.recorder.write, self.runner.take_leftovers())]:  # and a spoiled world's
            self.records.setdefault(record.case_id, record)
        if published is not None:  # for the processes of the session that wait on this case
            write_whole(published, "".join(r.to_json() + "\n" for r in finished))

    def _claim(self, key: CaseKey) -> tuple[Path | None, bool]:
        """Where the case's records are published for the processes of the session, and whether this process
        claimed the case (the first to ask for it runs it); (None, True) where this process is alone."""
        if self.shared is None:
            return None, True
        claim = self.shared / hashlib.sha256(key.id.encode()).hexdigest()[:32]
        try:
            os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            mine = True
        except FileExistsError:
            mine = False
        return claim.with_suffix(".records"), mine

    def _wait_for(self, together: list[CaseSpec], published: Path) -> None:
        """The records another process publishes for the case it claimed; where none come within as long as
        every try of every subject could take, this process runs the case itself."""
        deadline = time.monotonic() + self.runner.timeout_s * (self.runner.repeat + 1) * len(together) + 60
        while not published.is_file():
            if time.monotonic() > deadline:
                self._run(together, None)
                return
            time.sleep(0.5)
        for record in read_records(published):
            self.records.setdefault(record.case_id, record)

    def close(self) -> None:
        self.runner.close()
        if self.writer is not None:
            self.writer.close()


# How a test framework reports a record (framework_outcome).
PASSED, SKIPPED, XFAILED, XPASSED, FAILED = "passed", "skipped", "xfailed", "xpassed", "failed"


def framework_outcome(record: Record) -> tuple[str, str]:
    """The test outcome of the same meaning as a record, and what the test says: a failure names the case, its
    outcomes where they differed, and an expectation it did not meet."""
    if record.status == PASS:
        return PASSED, ""
    if record.status == SKIP:
        return SKIPPED, record.message
    if record.status == XFAIL:
        return XFAILED, f"{known_issues.note(record)}\n{record.message}"
    if record.status == XPASS:
        return XPASSED, f"XPASS {record.case_id}: {known_issues.note(record)}"
    intermittent = f"INTERMITTENT ({', '.join(record.outcomes)}) " if record.intermittent else ""
    unmet = f"\n{known_issues.note(record)}" if record.expected else ""
    return FAILED, f"{intermittent}{record.status} {record.case_id}\n{record.message}{unmet}"


def start(run_dir: RunDir, selection: dict[str, object], resume: bool) -> None:
    """Before any case runs, in the process that ends the session: the plan (what was asked, by the front end's
    own options), and for a resumed session only the records whose case ran, all of this cell."""
    from ..cell import describe_cell, local_device

    if resume:
        same_cell(run_dir, run_dir.finished_records(), describe_cell(*local_device()))
    try:
        if resume:
            run_dir.keep_only_finished()
        else:  # as `run --out DIR` does: a directory's earlier records are replaced, not added to
            run_dir.clear_records()
        run_dir.write_plan(selection, None)
    except OSError as exc:
        raise UsageError(f"cannot write to the results directory {run_dir}: {exc.strerror}") from None


def planned(run_dir: RunDir, cases: int) -> None:
    """Once the cases are counted: the plan says how many."""
    plan = run_dir.read_plan() or {}
    run_dir.write_plan(plan.get("selection"), cases)


def finish(run_dir: RunDir, planned: int) -> None:
    """The session's last act: the summary of every record the directory holds, and the end marker."""
    records = run_dir.records()
    run_dir.write_summary(summary.render(records, planned))
    run_dir.mark_finished(planned, len({record.case_id for record in records}))
