"""`findings`: each new finding of the known-issues file in a folder of its own, from the runs that saw it."""

import pytest

from zero3_conformance import cli, known_issues
from zero3_conformance.catalog import build_cases
from zero3_conformance.errors import UsageError
from zero3_conformance.repro import findings

from .test_repro import _run_dir

SEEN = "init-reads-partitioned-shape"  # a new finding of the shipped file, seen here on marian's G1
EVIDENCE = "transformers raised during from_pretrained(safetensors): ValueError: not enough values to unpack " \
           "(expected 2, got 1)"


def _marian_run(tmp_path):
    spec = next(c for c in build_cases(subjects=["transformers", "reference"], clauses=["G1"], world_sizes=[2],
                                       architectures=["marian"]) if c.subject == "transformers")
    return spec, _run_dir(tmp_path, [spec], status="FAIL", message=f"[{spec.id} on gloo, world size 2] rank 0,1: "
                                                                    f"{EVIDENCE}")


def test_a_seen_finding_gets_its_cases_and_keeps_its_own_reproducer(tmp_path):
    spec, run_dir = _marian_run(tmp_path)
    out = tmp_path / "findings"
    (out / "stale-finding").mkdir(parents=True)
    (out / "stale-finding" / "README.md").write_text("written by an earlier call")
    (out / "notes").mkdir()  # not written by the command: left alone
    (out / SEEN).mkdir()
    (out / SEEN / "repro.py").write_text("print('FINDING ABSENT')\n" * 3)  # written by hand: kept
    (out / SEEN / "report.md").write_text("an earlier call's")  # the command's: regenerated, here removed
    written = {w.short_name: w for w in findings.write_all([run_dir], out, known_issues.load())}
    new = {i.short_name for i in known_issues.load() if not i.upstream}
    assert set(written) == new
    assert written[SEEN].sightings == 1
    assert written[SEEN].reproducer == "script, 3 lines"
    readme = (out / SEEN / "README.md").read_text()
    for expected in (f"`{spec.id}` | FAIL", "transformers 5.24.0, deepspeed 0.19.8, torch 2.13.0; gloo, world size 2",
                     "**observed value:**", "**report to:** https://github.com/huggingface/transformers/issues",
                     "`repro.py`, 3 lines", "prints one last line, `FINDING REPRODUCED: …`"):
        assert expected in readme, expected
    assert (out / SEEN / "repro.py").read_text().count("FINDING ABSENT") == 3
    assert not (out / SEEN / "report.md").exists()
    assert all(written[name].sightings == 0 for name in new - {SEEN})
    assert "Not seen in the runs" in (out / "adamw-steps-parameters-without-gradient" / "README.md").read_text()
    assert "None written yet." in (out / "adamw-steps-parameters-without-gradient" / "README.md").read_text()
    assert not (out / "stale-finding").exists()
    assert (out / "notes").is_dir()
    assert f"| [{SEEN}]({SEEN}/README.md) | 1 | script, 3 lines |" in (out / "README.md").read_text()


def test_a_case_that_passed_or_a_known_upstream_entry_makes_no_finding(tmp_path):
    spec, _ = _marian_run(tmp_path)
    passed = _run_dir(tmp_path / "passed", [spec])
    written = {w.short_name: w for w in findings.write_all([passed], tmp_path / "out", known_issues.load())}
    assert written[SEEN].sightings == 0


def test_a_short_name_is_required_of_a_new_finding_and_shaped_for_a_folder(tmp_path):
    entry = """[[issue]]
clause = "G1"
subject = "transformers"
upstream = false
reason = "r"
link = "https://github.com/huggingface/transformers/issues"
tensor = "t"
expected_value = "e"
observed_value = "o"
seen_in = "s"
not_seen_in = "n"
"""
    path = tmp_path / "issues.toml"
    path.write_text(entry)
    with pytest.raises(UsageError, match="field 'short_name' is required"):
        known_issues.load(path)
    path.write_text(entry + 'short_name = "Not A Folder"\n')
    with pytest.raises(UsageError, match="must be lower-case words joined by '-'"):
        known_issues.load(path)


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert cli.main(["findings", "--from", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zero3-conformance: error:")
    assert "is not a run directory" in err
    assert "\n" not in err
