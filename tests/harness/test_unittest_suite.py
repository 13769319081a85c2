"""The unittest front end: the catalog's cases as a TestCase class made with `parameterized`, run through the
same session as pytest's, writing a run directory that report, repro and blame read."""

import json
import subprocess
import sys
import unittest

import pytest

from zero3_conformance.cell import COMPLETE
from zero3_conformance.errors import UsageError
from zero3_conformance.report.aggregate import BLAME_INTEGRATION, blame, load_cell
from zero3_conformance.unittest_suite import conformance_tests, main

A1_IDS = ["A1-zero3_flag_follows_stage[reference-none-ws1-fp32]",
          "A1-zero3_flag_follows_stage[transformers-none-ws1-fp32]"]


def test_a_class_of_ones_own_gets_one_test_per_case_named_by_its_id():
    class Mine(conformance_tests(clauses="A1")):
        pass

    names = unittest.TestLoader().getTestCaseNames(Mine)
    assert len(names) == 2
    assert sorted(getattr(Mine, name).__doc__ for name in names) == A1_IDS
    assert all("A1_zero3_flag_follows_stage" in name for name in names)  # unittest's -k finds them


@pytest.mark.parametrize(("selection", "says"), [({"clauses": "Z9"}, "unknown clause 'Z9'"),
                                                  ({"models": "nomodel"}, "nomodel"),
                                                  ({"subjects": "nobody"}, "unknown subject 'nobody'")])
def test_a_selection_naming_nothing_known_is_one_line_and_exit_2(selection, says, capsys):
    with pytest.raises(UsageError, match=says):
        conformance_tests(**selection)
    option, value = next(iter(selection.items()))
    assert main([f"--{option}", value]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("zero3-conformance: error:")
    assert says in err


UNPAIRED = """
import sys
from zero3_conformance.results import FAIL
from zero3_conformance.execution.runner import Attempt, Runner
from zero3_conformance.unittest_suite import main

real_try = Runner._try


def try_with_fault(self, case, fresh):  # an injected fault: the transformers subject fails every try of A1
    attempt = real_try(self, case, fresh)
    if case.subject == "transformers":
        return Attempt(FAIL, "is_deepspeed_zero3_enabled() was False", {}, attempt.seconds, fresh)
    return attempt


Runner._try = try_with_fault
if __name__ == "__main__":  # ranks start from a server that imports the main module again
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_the_run_directory_has_repeats_blame_and_reads_as_a_run(tmp_path):
    from zero3_conformance import cli

    script = tmp_path / "suite.py"
    script.write_text(UNPAIRED)
    out = tmp_path / "records"
    done = subprocess.run([sys.executable, str(script), "--clauses", "A1", "--out", str(out), "-v"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED (failures=1)" in done.stderr
    assert "INTERMITTENT" not in done.stderr
    records = {r["subject"]: r for r in map(json.loads, (out / "results-main.jsonl").read_text().splitlines())}
    assert records["transformers"]["outcomes"] == ["FAIL", "FAIL", "FAIL"]
    assert records["reference"]["outcomes"] == ["PASS", "PASS", "PASS"]  # tried as often, though it passed
    plan = json.loads((out / "run.json").read_text())
    assert plan["selection"]["front_end"] == "unittest"
    assert plan["finished"] == {"planned": 2, "recorded": 2}
    cell = load_cell(out)
    assert cell.status == COMPLETE
    assert [(b["subject"], b["likely_fault"]) for b in blame(cell)] == [("transformers", BLAME_INTEGRATION)]
    assert cli.main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert BLAME_INTEGRATION in (tmp_path / "report" / "report.md").read_text()
    case = records["transformers"]["case_id"]
    assert cli.main(["repro", case, "--from", str(out), "--out", str(tmp_path / "repro")]) == 0
    assert case in (tmp_path / "repro" / "report.md").read_text()
