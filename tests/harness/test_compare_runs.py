"""benchmarks/compare_runs.py: two runs' verdicts case by case; any difference in status, raw status or entry is
listed and exits 1, an intermittent entry's own statuses excepted."""

from harness.scripts import benchmark_script
from zero3_conformance.results import FAIL, PASS, XFAIL, write_records

compare_runs = benchmark_script("compare_runs")

ENTRY = {"entry": "known_issues.toml #3 (G1 reference)", "expected": [FAIL], "met": True}
FLAKY = {"entry": "known_issues.toml #4 (G1 reference)", "expected": [PASS, FAIL], "met": True}


def _run(tmp_path, name, records):
    directory = tmp_path / name
    directory.mkdir()
    write_records(directory / "results.jsonl", records)
    return directory


def test_the_same_verdicts_exit_0(tmp_path, make_record, capsys):
    records = [make_record(case_id="a"), make_record(XFAIL, case_id="b", raw_status=FAIL, expected=ENTRY)]
    assert compare_runs.main([str(_run(tmp_path, "old", records)), str(_run(tmp_path, "new", records))]) == 0
    assert "same verdicts: 2 cases" in capsys.readouterr().out


def test_every_difference_is_listed_and_exits_1(tmp_path, make_record, capsys):
    old = _run(tmp_path, "old", [make_record(case_id="a"), make_record(case_id="gone"),
                                 make_record(XFAIL, case_id="b", raw_status=FAIL, expected=ENTRY)])
    new = _run(tmp_path, "new", [make_record(FAIL, case_id="a"), make_record(case_id="added"),
                                 make_record(FAIL, case_id="b")])
    assert compare_runs.main([str(old), str(new)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "gone: only in the old run (PASS)" in out
    assert "added: only in the new run (PASS)" in out
    assert "a: status PASS -> FAIL" in out
    assert "a: raw_status PASS -> FAIL" in out
    assert "b: status XFAIL -> FAIL" in out
    assert "b: entry known_issues.toml #3 (G1 reference) -> none" in out


def test_an_intermittent_entry_may_differ_within_its_statuses_only(tmp_path, make_record):
    old = _run(tmp_path, "old", [make_record(case_id="a", expected=FLAKY)])
    flipped = _run(tmp_path, "flipped", [make_record(XFAIL, case_id="a", raw_status=FAIL, expected=FLAKY)])
    assert compare_runs.main([str(old), str(flipped)]) == 0
    other_entry = _run(tmp_path, "other", [make_record(XFAIL, case_id="a", raw_status=FAIL, expected=ENTRY)])
    assert compare_runs.main([str(old), str(other_entry)]) == 1  # a steady fault's entry: a verdict that changed
    # Two races (or a race and a fault it looks like) whose entries both expect either outcome: which one an
    # outcome meets is the race's, as the outcome is.
    race = {**FLAKY, "entry": "known_issues.toml another-race (G1 reference)"}
    other_race = _run(tmp_path, "race", [make_record(XFAIL, case_id="a", raw_status=FAIL, expected=race)])
    assert compare_runs.main([str(old), str(other_race)]) == 0


def test_a_directory_without_records_is_one_line_and_exit_2(tmp_path, make_record, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert compare_runs.main([str(empty), str(_run(tmp_path, "new", [make_record(case_id="a")]))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "no result records there" in err[0]


def test_runs_named_their_entries_otherwise_compare_once_triaged_against_one_file(tmp_path, make_record, capsys):
    """A run made before entries had ids named them by position: against one file both name the same entry."""
    issues = tmp_path / "k.toml"
    issues.write_text('[[issue]]\nid = "wrong-values"\nclause = "G1"\nsubject = "reference"\nreason = "r"\n'
                      'link = "https://github.com/o/r/issues/1"\n')
    by_position = make_record(XFAIL, case_id="a", raw_status=FAIL, expected=ENTRY)
    by_id = make_record(XFAIL, case_id="a", raw_status=FAIL,
                        expected={**ENTRY, "entry": "k.toml wrong-values (G1 reference)"})
    old, new = _run(tmp_path, "old", [by_position]), _run(tmp_path, "new", [by_id])
    assert compare_runs.main([str(old), str(new)]) == 1
    assert compare_runs.main([str(old), str(new), "--known-issues", str(issues)]) == 0
    (tmp_path / "bad.toml").write_text("[[issue]]\nclause = 'G1'\n")
    capsys.readouterr()
    assert compare_runs.main([str(old), str(new), "--known-issues", str(tmp_path / "bad.toml")]) == 2
    assert "field 'subject' is required" in capsys.readouterr().err
