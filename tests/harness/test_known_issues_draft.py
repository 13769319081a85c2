"""`known-issues draft` writes entries from runs' unexpected results: version ranges open until a newer release is
seen passing, narrowed where others passed, an empty link the harness refuses until someone fills it."""

import json

import pytest

from zero3_conformance import cli, finding_kinds, known_issues
from zero3_conformance.errors import UsageError, read_toml_file
from zero3_conformance.report.draft import draft
from zero3_conformance.results import FAIL, PASS

from .test_matrix_report import CELL, _record, _run_dir

pytestmark = pytest.mark.xdist_group("harness-draft")


def cell(torch, transformers):
    return {**CELL, "torch": torch, "transformers": transformers}


def record(status, cell, layout="sharded", outcomes=None):
    r = _record("G1", "transformers", status, "[G1-c[transformers-llama-ws2-fp32] on gloo, world size 2] rank 0: "
                "model.norm.weight: 64/64 elements differ",
                cell=cell, outcomes=outcomes)
    r.layout = layout
    if status == FAIL:
        r.findings = [finding_kinds.make("values_differ", "model.norm.weight", "equal", "64/64 elements differ", 0)]
    return r


def test_ranges_start_at_the_oldest_failing_release_and_end_where_a_newer_one_passed(tmp_path):
    runs = [
        _run_dir(tmp_path / "a", [record(FAIL, cell("2.12.1", "4.57.6")), record(PASS, cell("2.12.1", "4.57.6"),
                                                                                  layout="bin")]),
        _run_dir(tmp_path / "b", [record(FAIL, cell("2.14.1", "4.57.6"), outcomes=[FAIL, PASS, FAIL])]),
        _run_dir(tmp_path / "c", [record(PASS, cell("2.13.0+cpu", "5.24.0"))]),
    ]
    text = draft(runs)
    (tmp_path / "d.toml").write_text(text)
    (drafted,) = read_toml_file(tmp_path / "d.toml", "draft")["issue"]
    # transformers 5.24.0 passed with a torch no older than the failing ones: the finding ends before it.
    assert drafted["versions"]["transformers"] == ">=4.57.6,<5.24.0"
    # No newer torch passed: open above, not closed at the last release someone ran.
    assert drafted["versions"]["torch"] == ">=2.12.1"
    assert drafted["layout"] == "sharded"  # bin ran in a failing cell and passed there
    assert drafted["match"] == {"kind": "values_differ"}  # what the failures recorded
    assert drafted["expected"] == [PASS, FAIL]  # intermittent in one cell: PASS is among its outcomes
    assert drafted["reason"].startswith("rank 0: model.norm.weight: 64/64 elements differ (seen in 2 of 3 cells")
    assert drafted["link"] == ""
    assert "# passing on every try: " in text
    assert "CHECK" not in text


def test_a_passing_cell_inside_the_range_is_named(tmp_path):
    runs = [_run_dir(tmp_path / "a", [record(FAIL, cell("2.12.1", "4.57.6"))]),
            _run_dir(tmp_path / "b", [record(PASS, cell("2.13.0+cpu", "4.57.6"))]),  # a local build: inside
            _run_dir(tmp_path / "c", [record(FAIL, cell("2.14.1", "4.57.6"))])]
    assert "# CHECK: passes on every try inside this range in py3.11.7-torch2.13.0+cpu" in draft(runs)


@pytest.mark.slow
def test_draft_of_a_real_run_once_its_links_are_filled_turns_the_fails_into_xfails(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["run", "--out", str(run), "--subject", "reference,mutant:perturbed_load", "--clauses", "G1",
                     "--models", "llama", "--world-sizes", "1", "--repeat", "0", "--quiet"]) == 1
    assert cli.main(["known-issues", "draft", str(run), "--out", str(tmp_path / "draft.toml")]) == 0
    assert "1 draft entries" in capsys.readouterr().out
    with pytest.raises(UsageError, match=r"issue #1 \(G1 mutant:perturbed_load\): field 'link' is required"):
        known_issues.load(tmp_path / "draft.toml")  # refused until triaged
    filled = tmp_path / "filled.toml"
    filled.write_text((tmp_path / "draft.toml").read_text().replace('link = ""',
                                                                   'link = "https://github.com/o/r/issues/7"'))
    assert cli.main(["report", str(run), "--out", str(tmp_path / "r"), "--known-issues", str(filled)]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["failures"] == []
    assert report["cells"][0]["clauses"]["G1"] == {"PASS": 3, "XFAIL": 3}
    assert cli.main(["known-issues", "draft", str(run), "--out", str(tmp_path / "again.toml"), "--known-issues",
                     str(filled)]) == 0
    assert "[[issue]]" not in (tmp_path / "again.toml").read_text()  # nothing left to triage


def test_a_newer_release_passing_beside_an_older_other_library_does_not_close_the_range(tmp_path):
    """transformers 5.24.0 passed only with a torch older than every failing one: the newer transformers is not
    what told them apart, so the range stays open (and the draft says to look at the passing cell)."""
    runs = [_run_dir(tmp_path / "a", [record(FAIL, cell("2.14.1", "4.57.6"))]),
            _run_dir(tmp_path / "b", [record(PASS, cell("2.12.1", "5.24.0"))])]
    (tmp_path / "d.toml").write_text(draft(runs))
    (drafted,) = read_toml_file(tmp_path / "d.toml", "draft")["issue"]
    assert drafted["versions"] == {"torch": ">=2.14.1", "deepspeed": ">=0.19.8", "transformers": ">=4.57.6",
                                   "accelerate": ">=1.15.0"}
    assert "# passing on every try: " in (tmp_path / "d.toml").read_text()
