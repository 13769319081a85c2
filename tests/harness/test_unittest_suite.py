"""The unittest front end: the catalog's cases as a TestCase class made with `parameterized`, run through the
same session as pytest's, writing a run directory that report, repro and blame read."""

import subprocess
import sys
import unittest

import pytest

from zero3_conformance.errors import UsageError
from zero3_conformance.unittest_suite import conformance_tests, main

from .test_pytest_plugin import UNPAIRED_CONFTEST, assert_a_paired_run

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


UNPAIRED = UNPAIRED_CONFTEST + """
import sys
from zero3_conformance.unittest_suite import main

if __name__ == "__main__":  # ranks start from a server that imports the main module again
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_the_run_directory_has_repeats_blame_and_reads_as_a_run(tmp_path):
    script = tmp_path / "suite.py"
    script.write_text(UNPAIRED)
    out = tmp_path / "records"
    done = subprocess.run([sys.executable, str(script), "--clauses", "A1", "--out", str(out), "-v"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED (failures=1)" in done.stderr
    assert "INTERMITTENT" not in done.stderr
    assert_a_paired_run(out, "unittest", tmp_path)
