"""pytest front end: the conformance suite runs the catalog's cases in persistent worlds shared by a
session, the subjects of a case together, tries again a case that did not pass (--z3-repeat N) and the
other subject as often, applies the known-issues file, can write a run directory as the CLI does
(--z3-results DIR: plan, every worker's records, summary, end marker), and can finish an interrupted session
from it (--z3-resume). Under pytest-xdist the first worker asked for a case runs its subjects together and
the others take their records from it, whichever worker the scheduler gives which test."""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import known_issues
from .results import DEFAULT_REPEAT, FAIL, Record
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
_SHARED = pytest.StashKey[Path]()
_SHARED_KEY = "zero3_conformance_shared"  # the directory the controller gives its workers to share cases in
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
    out = config.getoption("--z3-results")
    if config.getoption("--z3-resume") and out is None:
        raise pytest.UsageError("--z3-resume needs --z3-results DIR: the directory whose records it finishes")
    if out is not None:
        from .errors import UsageError
        from .execution.session import start

        try:
            start(RunDir(out), _selection(config), config.getoption("--z3-resume"))
        except UsageError as exc:
            raise pytest.UsageError(str(exc)) from None
    config.stash[_PLANNED] = 0


def _selection(config: Any) -> dict[str, Any]:
    """What the session was asked to check, as the plan records it: pytest's own arguments select the cases."""
    return {"front_end": "pytest", "args": [str(arg) for arg in config.invocation_params.args],
            "known_issues": str(config.getoption("--z3-known-issues")), "repeat": config.getoption("--z3-repeat")}


def _case_of(item: Any) -> Any:
    """The catalog case a conformance test item runs, or None for any other test."""
    callspec = getattr(item, "callspec", None)
    if "conformance_session" not in getattr(item, "fixturenames", ()) or callspec is None:
        return None
    return callspec.params.get("case")


def pytest_collection_finish(session: Any) -> None:
    """The session's conformance cases: what it plans to record (under xdist every worker collects them all)."""
    planned = sum(_case_of(item) is not None for item in session.items)
    if hasattr(session.config, "workerinput"):
        session.config.workeroutput[_PLANNED_KEY] = planned
        return
    session.config.stash[_PLANNED] = planned
    if session.config.getoption("--z3-results") is not None:
        from .execution.session import planned as plan_cases

        plan_cases(RunDir(session.config.getoption("--z3-results")), planned)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:  # pytest-xdist's: a worker is being started
    """Where the session's workers find the cases another one claimed: made for the first worker, given to all."""
    if _SHARED not in node.config.stash:
        node.config.stash[_SHARED] = Path(tempfile.mkdtemp(prefix="zero3-conformance-session-"))
    node.workerinput[_SHARED_KEY] = str(node.config.stash[_SHARED])


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:  # pytest-xdist's: a worker finished
    planned = getattr(node, "workeroutput", {}).get(_PLANNED_KEY, 0)
    node.config.stash[_PLANNED] = max(node.config.stash.get(_PLANNED, 0), planned)


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    """The controlling process's last act: the summary of every worker's records, and the end marker with the
    cases planned and those recorded (a session cut short records fewer, and reads as PARTIAL)."""
    if hasattr(session.config, "workerinput"):
        return
    if _SHARED in session.config.stash:
        shutil.rmtree(session.config.stash[_SHARED], ignore_errors=True)
    out = session.config.getoption("--z3-results")
    if out is None or exitstatus == pytest.ExitCode.USAGE_ERROR:
        return
    from .execution.session import finish

    finish(RunDir(out), session.config.stash.get(_PLANNED, 0))


@pytest.fixture(scope="session")
def conformance_session(request: Any) -> Iterator[Any]:
    """The cases of this process's tests, run as the CLI runs them (execution.session.Session)."""
    from .execution.session import Session

    config = request.config
    cases = [case for item in request.session.items if (case := _case_of(item)) is not None]
    worker = getattr(config, "workerinput", {})
    session = Session(cases, config.getoption("--z3-results"), worker.get("workerid", "main"),
                      config.getoption("--z3-known-issues"), config.getoption("--z3-repeat"),
                      config.getoption("--z3-resume"), Path(worker[_SHARED_KEY]) if _SHARED_KEY in worker else None)
    yield session
    session.close()


def report(record: Record) -> None:
    """Turns a record into the pytest outcome of the same meaning."""
    from .execution.session import FAILED, SKIPPED, XFAILED, XPASSED, framework_outcome

    kind, text = framework_outcome(record)
    if kind == SKIPPED:
        pytest.skip(text)
    elif kind == XFAILED:
        pytest.xfail(text)
    elif kind == XPASSED:
        warnings.warn(text, stacklevel=2)
    elif kind == FAILED:
        pytest.fail(text, pytrace=False)


__all__ = ["FAIL", "conformance_session", "report"]
