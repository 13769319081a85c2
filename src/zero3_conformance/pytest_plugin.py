"""pytest front end: the conformance suite runs the catalog's cases in persistent worlds shared by a
session, tries again a case that did not pass (--z3-repeat N), applies the known-issues file, can write
the same records as the CLI (--z3-results DIR), and can finish an interrupted session from them
(--z3-resume)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import known_issues
from .results import DEFAULT_REPEAT, FAIL, PASS, SKIP, XFAIL, XPASS, Record
from .rundir import RunDir


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("zero3-conformance")
    group.addoption("--z3-results", type=Path, default=None,
                    help="also write every conformance record to DIR (a run directory, its records in "
                         f"{RunDir.WORKER_RESULTS.format(worker='<worker>')})")
    group.addoption("--z3-known-issues", type=Path, default=known_issues.DEFAULT_FILE,
                    help="known-issues file that turns matching FAILs into XFAILs")
    group.addoption("--z3-repeat", type=int, default=DEFAULT_REPEAT, metavar="N",
                    help=f"further tries of a case that neither passes nor skips, the last in a fresh world "
                         f"(default {DEFAULT_REPEAT}; 0: none)")
    group.addoption("--z3-resume", action="store_true",
                    help="with --z3-results DIR: a case DIR already has a record of is reported from it, not run "
                         "again (an interrupted session finishes where it stopped)")


_PLANNED = pytest.StashKey[int]()
_PLANNED_KEY = "zero3_conformance_planned"  # a worker's count of the cases it collected, sent to the controller
MARKERS = ("conformance: a check of a subject against the ZeRO-3 contract",
           "slow: starts worlds of processes or builds real models (seconds to minutes each)")


def pytest_configure(config: Any) -> None:
    for marker in MARKERS:  # wherever the suite runs from, not only in this repository
        config.addinivalue_line("markers", marker)
    if config.getoption("--z3-repeat") < 0:
        raise pytest.UsageError(f"--z3-repeat must be 0 or more, not {config.getoption('--z3-repeat')}")
    if hasattr(config, "workerinput"):
        return
    # Once, in the controlling process, before workers start.
    if config.getoption("--z3-resume"):
        _resume_from(config.getoption("--z3-results"))
    if config.getoption("--z3-results") is not None:
        RunDir(config.getoption("--z3-results")).clear_end()  # this session ends it anew, or it stays unfinished
    config.stash[_PLANNED] = 0


def pytest_collection_finish(session: Any) -> None:
    """The session's conformance cases: what it plans to record (under xdist every worker collects them all)."""
    planned = sum("conformance_session" in getattr(item, "fixturenames", ()) for item in session.items)
    if hasattr(session.config, "workerinput"):
        session.config.workeroutput[_PLANNED_KEY] = planned
    else:
        session.config.stash[_PLANNED] = planned


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:  # pytest-xdist's: a worker finished
    planned = getattr(node, "workeroutput", {}).get(_PLANNED_KEY, 0)
    node.config.stash[_PLANNED] = max(node.config.stash.get(_PLANNED, 0), planned)


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """The controlling process's last act: the results directory records that the session ended, with the cases
    it planned and those recorded there (a session cut short records fewer, and reads as PARTIAL)."""
    out = session.config.getoption("--z3-results")
    if out is None or hasattr(session.config, "workerinput") or exitstatus == pytest.ExitCode.USAGE_ERROR:
        return
    recorded = len({record.case_id for record in RunDir(out).records()})
    RunDir(out).mark_finished(session.config.stash.get(_PLANNED, 0), recorded)


def _resume_from(out: Path | None) -> None:
    """Before any case runs: a usage error where --z3-resume has nothing of this cell to finish; then each
    worker's file keeps only the records whose case ran (a torn last line and the `not_run` ones go, as
    `run --resume` does), so that a case run again has one record."""
    from .cell import describe_cell, local_device
    from .errors import UsageError
    from .execution.plan import same_cell

    if out is None:
        raise pytest.UsageError("--z3-resume needs --z3-results DIR: the directory whose records it finishes")
    run_dir = RunDir(out)
    try:
        same_cell(run_dir, run_dir.finished_records(), describe_cell(*local_device()))
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    run_dir.keep_only_finished()


class ConformanceSession:
    def __init__(self, config: Any):
        from .dsconfig import DEFAULT_ZERO3_CONFIG
        from .execution.runner import Runner

        issues = known_issues.load(config.getoption("--z3-known-issues"))
        self.runner = Runner(DEFAULT_ZERO3_CONFIG, known_issues=issues, repeat=config.getoption("--z3-repeat"))
        out: Path | None = config.getoption("--z3-results")
        self.kept: dict[str, Record] = {}
        if config.getoption("--z3-resume") and out is not None:
            # Every worker's file: under xdist a case may land on another worker than the one that ran it.
            self.kept = {r.case_id: r for r in RunDir(out).finished_records()}
        worker = getattr(config, "workerinput", {}).get("workerid", "main")
        self.writer = RunDir(out).writer(worker) if out else None

    def run(self, case: Any) -> Record:
        if case.id in self.kept:
            return self.kept[case.id]  # finished by the session this one resumes: its record stands
        record = self.runner.run_case(case)
        leftovers = self.runner.take_leftovers()  # a spoiled world's record, beside the case's
        if self.writer:
            for written in [record, *leftovers]:
                self.writer.write(written)
        return record

    def close(self) -> None:
        self.runner.close()
        if self.writer:
            self.writer.close()


@pytest.fixture(scope="session")
def conformance_session(request: Any) -> Iterator[ConformanceSession]:
    session = ConformanceSession(request.config)
    yield session
    session.close()


def report(record: Record) -> None:
    """Turns a record into the pytest outcome of the same meaning."""
    if record.status == PASS:
        return
    if record.status == SKIP:
        pytest.skip(record.message)
    if record.status == XFAIL:
        pytest.xfail(f"{known_issues.note(record)}\n{record.message}")
    if record.status == XPASS:
        warnings.warn(f"XPASS {record.case_id}: {known_issues.note(record)}", stacklevel=2)
        return
    intermittent = f"INTERMITTENT ({', '.join(record.outcomes)}) " if record.intermittent else ""
    unmet = f"\n{known_issues.note(record)}" if record.expected else ""
    pytest.fail(f"{intermittent}{record.status} {record.case_id}\n{record.message}{unmet}", pytrace=False)


__all__ = ["FAIL", "conformance_session", "report"]
