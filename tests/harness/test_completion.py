"""A run is finished only when it says so: `run` writes an end marker into run.json as its last act, and
every reader of run directories (report, findings, repro, known-issues draft) calls a directory without one
PARTIAL and never passed. summary.md, rewritten after every record, is no evidence either way."""

import json

import pytest

from zero3_conformance import cli, known_issues
from zero3_conformance.catalog import build_cases
from zero3_conformance.report import write_report
from zero3_conformance.report.aggregate import load_cell
from zero3_conformance.report.summary import render as render_summary
from zero3_conformance.results import FAIL, PASS, Record, RecordWriter
from zero3_conformance.rundir import RunDir

from .test_matrix_report import _record

PLANNED = 896  # the default run's cases


def _killed_run(path, records, planned=PLANNED, legacy=False):
    """A run directory as `run` leaves it when killed after `records`: its plan, the records, and the summary it
    rewrites after every record. `legacy`: as a harness from before the end marker left it (no case count in
    its plan)."""
    path.mkdir(parents=True)
    if legacy:
        (path / "run.json").write_text(json.dumps({"schema": 1, "selection": {}}))
    else:
        RunDir(path).write_plan({}, planned)
    with RecordWriter(path / "results.jsonl") as writer:
        for record in records:
            writer.write(record)
    RunDir(path).write_summary(render_summary(records, planned))
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["marker-era", "before-the-marker"])
def test_a_run_cut_after_its_first_record_is_partial_and_not_passed(tmp_path, legacy):
    run_dir = _killed_run(tmp_path / "run", [_record("A1", "transformers", PASS)], legacy=legacy)
    report = write_report([run_dir], tmp_path / "report")
    cell = report["cells"][0]
    assert cell["status"] == "PARTIAL"
    assert cell["message"].startswith(f"PARTIAL: 1 of {PLANNED} recorded")
    assert ("completion not recorded" in cell["message"]) is legacy
    assert cell["passed"] is False
    assert cell["clean"] is False
    assert f"PARTIAL: 1 of {PLANNED} recorded" in (tmp_path / "report" / "report.md").read_text()


def test_a_run_that_recorded_its_end_with_every_case_is_complete(tmp_path):
    records = [_record("A1", "transformers", PASS), _record("A1", "reference", PASS)]
    run_dir = _killed_run(tmp_path / "run", records, planned=2)
    assert load_cell(run_dir).status == "PARTIAL"  # every record, but no end: it may still be running
    RunDir(run_dir).mark_finished(planned=2, recorded=2)
    cell = write_report([run_dir], tmp_path / "report")["cells"][0]
    assert (cell["status"], cell["message"], cell["passed"]) == ("COMPLETE", "", True)
    # An end marker does not make up for records lost since: the file is what counts.
    (run_dir / "results.jsonl").write_text((run_dir / "results.jsonl").read_text().splitlines()[0] + "\n")
    assert load_cell(run_dir).message == "PARTIAL: 1 of 2 recorded"


def test_a_run_from_before_the_marker_is_judged_by_its_count_and_says_so(tmp_path):
    records = [_record("A1", "transformers", PASS), _record("A1", "reference", PASS)]
    cell = load_cell(_killed_run(tmp_path / "run", records, planned=2, legacy=True))
    assert (cell.status, cell.message) == ("COMPLETE", "completion not recorded: 2 of 2 recorded")
    (tmp_path / "bare").mkdir()
    with RecordWriter(tmp_path / "bare" / "results.jsonl") as writer:
        writer.write(records[0])
    cell = load_cell(tmp_path / "bare")  # neither plan nor summary: nothing to count against
    assert cell.status == "PARTIAL"
    assert cell.message == "PARTIAL: 1 recorded, completion not recorded and no plan to count against"


def test_findings_repro_and_the_draft_say_a_run_is_partial(tmp_path, capsys):
    spec = next(c for c in build_cases(subjects=["transformers"], clauses=["G1"], world_sizes=[2],
                                       architectures=["marian"]))
    evidence = "transformers raised during from_pretrained(safetensors): ValueError: not enough values to unpack " \
               "(expected 2, got 1)"
    record = Record(clause=spec.clause, check=spec.check, subject=spec.subject, model=spec.model,
                    layout=spec.layout, world_size=spec.world_size, dtype=spec.dtype, status=FAIL,
                    message=f"rank 0,1: {evidence}", duration_s=1.0, head=spec.head, case_id=spec.id,
                    cell=_record("A1", "transformers", PASS).cell, outcomes=[FAIL] * 3)
    run_dir = _killed_run(tmp_path / "run", [record])
    partial = f"PARTIAL: 1 of {PLANNED} recorded"

    assert cli.main(["findings", "--from", str(run_dir), "--out", str(tmp_path / "findings")]) == 0
    assert f"{run_dir}: {partial}" in capsys.readouterr().out
    assert partial in (tmp_path / "findings" / "README.md").read_text()

    assert cli.main(["repro", spec.id, "--from", str(run_dir), "--out", str(tmp_path / "repro")]) == 0
    assert f"{run_dir}: {partial}" in capsys.readouterr().out
    assert partial in (tmp_path / "repro" / "report.md").read_text()

    draft = tmp_path / "draft.toml"
    assert cli.main(["known-issues", "draft", str(run_dir), "--out", str(draft),
                     "--known-issues", str(known_issues.DEFAULT_FILE)]) == 0
    assert f"{run_dir}: {partial}" in capsys.readouterr().out
    assert f"# {run_dir}: {partial}" in draft.read_text()
