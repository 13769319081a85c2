"""The pytest front end runs catalog cases and writes the same records as the CLI."""

import json
import tarfile

import pytest

from zero3_conformance.cell import COMPLETE
from zero3_conformance.report.aggregate import load_cell

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.xdist_group("harness-plugin")

SUITE = """
import pytest
from zero3_conformance.catalog import build_cases
from zero3_conformance.pytest_plugin import report

@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in build_cases(clauses=["A1", "A4"])])
def test_contract(case, conformance_session):
    report(conformance_session.run(case))
"""


@pytest.mark.slow
def test_records_and_outcomes(pytester):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--z3-results", "records", "-rxs")
    result.assert_outcomes(passed=3, xfailed=1)  # transformers' A4 finding is a known issue
    result.stdout.fnmatch_lines(["*XFAIL*A4-malformed_config_rejected*transformers*known issue*"])
    records = [json.loads(line) for line in (pytester.path / "records" / "results-main.jsonl").read_text().splitlines()]
    assert sorted((r["clause"], r["subject"], r["status"]) for r in records) == [
        ("A1", "reference", "PASS"), ("A1", "transformers", "PASS"),
        ("A4", "reference", "PASS"), ("A4", "transformers", "XFAIL")]
    # The session's last act: the directory records that it ended, with its cases planned and recorded.
    assert json.loads((pytester.path / "records" / "run.json").read_text())["finished"] == {"planned": 4,
                                                                                          "recorded": 4}
    assert load_cell(pytester.path / "records").status == COMPLETE


@pytest.mark.slow
def test_under_xdist_the_controller_records_the_end_with_every_workers_cases(pytester):
    pytester.makepyfile(test_suite=SUITE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--z3-results", "records", "-n", "2",
                                           "-k", "A1")
    result.assert_outcomes(passed=2)
    assert json.loads((pytester.path / "records" / "run.json").read_text())["finished"] == {"planned": 2,
                                                                                          "recorded": 2}


@pytest.mark.slow
def test_without_known_issues_the_finding_fails(pytester):
    pytester.makepyfile(test_suite=SUITE)
    (pytester.path / "none.toml").write_text("")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--z3-known-issues", "none.toml", "-k", "A4")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAIL A4-malformed_config_rejected[[]transformers*",
                                 "*stage as the string \"3\": the config object accepted it*"])


FLAKY_CONFTEST = """
from zero3_conformance.results import FAIL
from zero3_conformance.execution.runner import Runner
from zero3_conformance.execution.tries import Attempt

real_try = Runner.try_case
tries = []


def try_with_fault(self, case, fresh):  # an injected fault: the subject fails its first and third try
    attempt = real_try(self, case, fresh)
    tries.append(case.id)
    if case.subject == "transformers" and len(tries) in (1, 3):
        return Attempt(FAIL, "is_deepspeed_zero3_enabled() was False", {}, attempt.seconds, fresh)
    return attempt


Runner.try_case = try_with_fault
"""


@pytest.mark.slow
def test_an_intermittent_failure_says_so_first_and_repeats_can_be_turned_off(pytester):
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeconftest(FLAKY_CONFTEST)
    picked = ["-p", "no:cacheprovider", "-k", "A1 and transformers"]
    result = pytester.runpytest_subprocess(*picked)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["INTERMITTENT (FAIL, PASS, FAIL) FAIL A1-*[[]transformers*",
                                 "*outcomes of 3 tries: FAIL, PASS, FAIL (the last in a freshly started world)"])
    once = pytester.runpytest_subprocess(*picked, "--z3-repeat", "0")
    once.assert_outcomes(failed=1)
    assert "INTERMITTENT" not in once.stdout.str()
    assert "outcomes of" not in once.stdout.str()
    bad = pytester.runpytest_subprocess(*picked, "--z3-repeat", "-1")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--z3-repeat must be 0 or more, not -1*"])


@pytest.mark.slow
def test_the_installed_package_runs_the_suite_from_any_directory(tmp_path):
    """`pytest --pyargs zero3_conformance`, from a directory with no checkout in it, runs the catalog's cases
    with pytest's own options (-k, --junitxml)."""
    import subprocess
    import sys
    import xml.etree.ElementTree as ElementTree

    done = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "zero3_conformance", "-p", "no:cacheprovider",
                           "-k", "A1-zero3_flag_follows_stage", "--junitxml", "suite.xml", "-q",
                           "--z3-results", "records"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 passed" in done.stdout
    cell = load_cell(tmp_path / "records")  # a run directory, as `run` writes one
    assert cell.status == COMPLETE
    assert sorted(r.subject for r in cell.records) == ["reference", "transformers"]
    cases = ElementTree.parse(tmp_path / "suite.xml").getroot().iter("testcase")
    assert sorted(case.get("name") for case in cases) == [
        "test_contract[A1-zero3_flag_follows_stage[reference-none-ws1-fp32]]",
        "test_contract[A1-zero3_flag_follows_stage[transformers-none-ws1-fp32]]"]


@pytest.mark.slow
def test_an_interrupted_session_resumes_from_its_records(pytester):
    """--z3-resume: a case the results directory already has a record of is reported from that record and
    not run again; the others run and are written beside the kept ones."""
    pytester.makepyfile(test_suite=SUITE)
    first = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--z3-results", "records", "-k", "A1")
    first.assert_outcomes(passed=2)
    records = pytester.path / "records" / "results-main.jsonl"
    kept = [json.loads(line) for line in records.read_text().splitlines()]
    for record in kept:  # marked, so that a record the resumed session reports can be told from a rerun
        record["message"] = "kept from the interrupted session"
    never_ran = {**kept[0], "clause": "A4", "check": "malformed_config_rejected", "subject": "reference",
                 "case_id": "A4-malformed_config_rejected[reference-none-ws1-fp32]", "status": "ERROR",
                 "metrics": {"not_run": True}}  # its world broke before it: the resumed session runs it
    records.write_text("".join(json.dumps(r) + "\n" for r in [*kept, never_ran]) + '{"torn')

    resumed = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--z3-results", "records", "--z3-resume",
                                            "-rA")
    resumed.assert_outcomes(passed=3, xfailed=1)
    lines = [json.loads(line) for line in records.read_text().splitlines()]
    assert sorted((r["clause"], r["subject"]) for r in lines) == [
        ("A1", "reference"), ("A1", "transformers"), ("A4", "reference"), ("A4", "transformers")]
    assert [r["message"] for r in lines if r["clause"] == "A1"] == ["kept from the interrupted session"] * 2
    assert [r["status"] for r in lines if r["clause"] == "A4" and r["subject"] == "reference"] == ["PASS"]

    for record in kept:
        record["cell"] = {**record["cell"], "torch": "0.0.1"}
    records.write_text("".join(json.dumps(r) + "\n" for r in kept))
    other = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--z3-results", "records", "--z3-resume")
    assert other.ret == pytest.ExitCode.USAGE_ERROR
    other.stderr.fnmatch_lines(["*cannot resume records: it was run on another cell*0.0.1*"])
    alone = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--z3-resume")
    assert alone.ret == pytest.ExitCode.USAGE_ERROR
    alone.stderr.fnmatch_lines(["*--z3-resume needs --z3-results DIR*"])


UNPAIRED_CONFTEST = """
from zero3_conformance.results import FAIL
from zero3_conformance.execution.runner import Runner
from zero3_conformance.execution.tries import Attempt

real_try = Runner.try_case


def try_with_fault(self, case, fresh):  # an injected fault: the transformers subject fails every try of A1
    attempt = real_try(self, case, fresh)
    if case.subject == "transformers":
        return Attempt(FAIL, "is_deepspeed_zero3_enabled() was False", {}, attempt.seconds, fresh)
    return attempt


Runner.try_case = try_with_fault
"""


@pytest.mark.slow
@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_a_cases_subjects_are_tried_together_and_the_directory_reads_as_a_run(pytester, workers, tmp_path):
    """Blame pairing under pytest: where one subject fails, the subject that passed is tried as often (under
    xdist, by whichever worker is first asked for the case, the other taking its record); the results
    directory then reads as a CLI run's does: its plan, summary and end, `report`'s blame, `repro`'s case."""
    pytester.makepyfile(test_suite=SUITE)
    pytester.makeconftest(UNPAIRED_CONFTEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--z3-results", "records", "-k", "A1",
                                           *workers)
    result.assert_outcomes(passed=1, failed=1)
    assert_a_paired_run(pytester.path / "records", "pytest", tmp_path)


def assert_a_paired_run(out, front_end, tmp_path):
    """`out`, the run directory of A1 on both subjects where transformers failed every try, holds what a CLI
    run would: the reference tried as often, its plan and end, its summary; blame, report and repro read it."""
    from zero3_conformance import cli
    from zero3_conformance.report.aggregate import BLAME_INTEGRATION, blame
    from zero3_conformance.rundir import RunDir

    records = {r.subject: r for r in RunDir(out).records()}
    assert records["transformers"].outcomes == ["FAIL", "FAIL", "FAIL"]
    assert records["reference"].outcomes == ["PASS", "PASS", "PASS"]  # tried as often, though it passed
    plan = json.loads((out / "run.json").read_text())
    assert plan["selection"]["front_end"] == front_end
    assert plan["finished"] == {"planned": 2, "recorded": 2}
    assert "A1-zero3_flag_follows_stage" in (out / "summary.md").read_text()
    cell = load_cell(out)
    assert cell.status == COMPLETE
    assert [(b["subject"], b["likely_fault"]) for b in blame(cell)] == [("transformers", BLAME_INTEGRATION)]
    assert cli.main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert BLAME_INTEGRATION in (tmp_path / "report" / "report.md").read_text()
    case = records["transformers"].case_id
    assert cli.main(["repro", case, "--from", str(out), "--out", str(tmp_path / "repro")]) == 0
    assert case in (tmp_path / "repro" / "report.md").read_text()
    archive = tmp_path / "runs.tar.xz"  # findings reads the directory's records, and keeps them
    assert cli.main(["findings", "--from", str(out), "--out", str(tmp_path / "findings"), "--save-archive",
                     str(archive)]) == 0
    with tarfile.open(archive) as tar:
        kept = sorted(name.split("/", 1)[1] for name in tar.getnames())
    assert kept == sorted([RunDir.PLAN, *(path.name for path in RunDir(out).result_files())])
