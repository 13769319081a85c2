"""Blame never rests on a coin toss: one subject is named only when the difference held on every try of both;
intermittent cases are shown apart; the report counts per cell what is known upstream, new or intermittent."""

import dataclasses
import json

import pytest

from zero3_conformance import cli
from zero3_conformance.report import write_report
from zero3_conformance.report.aggregate import (
    BLAME_INTEGRATION,
    BLAME_REFERENCE,
    BLAME_STACK,
    NOT_ATTRIBUTED,
    likely_fault,
)
from zero3_conformance.results import CRASH, ERROR, FAIL, PASS, REPRODUCED_BY, TIMEOUT, most_severe

from .test_matrix_report import _record, _run_dir

F, P = FAIL, PASS


def pair(transformers, reference):
    """The two subjects' records of one case, from their outcomes."""
    def record(subject, outcomes):
        return _record("G1", subject, most_severe(outcomes), "gathered 1.97e-31", outcomes=outcomes)

    return record("transformers", transformers), record("reference", reference)


@pytest.mark.parametrize(("transformers", "reference", "fault"), [
    ([F, F, F], [P, P, P], BLAME_INTEGRATION),
    ([P, P, P], [F, F, F], BLAME_REFERENCE),
    ([F, F, F], [F, F, F], BLAME_STACK),
    ([ERROR, ERROR, ERROR], [P, P, P], BLAME_INTEGRATION),
    ([F, P, F], [P, P, P], f"{NOT_ATTRIBUTED} (intermittent)"),  # lost the toss: no one subject blamed
    ([F, F, F], [P, F, P], f"{BLAME_STACK} (intermittent)"),  # both failed at least once
    ([F, P, F], [P, F, P], f"{BLAME_STACK} (intermittent)"),
    ([P, P, P], [F, P, P], f"{NOT_ATTRIBUTED} (intermittent)"),
    ([TIMEOUT, P], [P, P, P], f"{NOT_ATTRIBUTED} (intermittent)"),
    ([F], [P], f"{NOT_ATTRIBUTED} (one try: run with --repeat 1 or more)"),  # a single try is a coin toss
    ([CRASH], [CRASH], BLAME_STACK),
])
def test_one_subject_is_blamed_only_when_the_difference_held_on_every_try(transformers, reference, fault):
    theirs, ours = pair(transformers, reference)
    failing = theirs if theirs.status not in (PASS,) else ours
    assert likely_fault(failing, [ours if failing is theirs else theirs]) == fault


def test_report_shows_intermittent_cases_apart_and_counts_them(tmp_path):
    run_dir = _run_dir(tmp_path / "cell", [*pair([F, P, F], [P, P, P]), *pair([F, F, F], [P, P, P])[:1],
                                           _record("G1", "reference", PASS, check="d")])
    report = write_report([run_dir], tmp_path / "r")
    flaky = [f for f in report["failures"] if f["intermittent"]]
    assert [f["outcomes"] for f in flaky] == [[F, P, F]]
    assert report["cells"][0]["triage"]["intermittent"] == 1
    assert report["cells"][0]["intermittent"] == {"G1": 1}
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "## Intermittent failures (outcomes differ between tries)" in markdown
    assert "### INTERMITTENT FAIL (FAIL, PASS, FAIL) G1-c[transformers-llama-ws2-fp32] — likely fault: not " \
           "attributed (intermittent)" in markdown
    html = (tmp_path / "r" / "report.html").read_text()
    assert "INTERMITTENT (FAIL, PASS, FAIL) FAIL" in html
    assert "~1" in html


KNOWN = """
[[issue]]
clause = "G1"
subject = "transformers"
check = "c"
expected = ["PASS", "FAIL"]
reason = "gathered tensors hold uninitialized memory"
link = "https://github.com/deepspeedai/DeepSpeed/pull/8539"

[[issue]]
clause = "N1"
subject = "transformers"
upstream = false
reason = "logits differ"
short_name = "blame-logits"
tensor = "logits"
expected_value = "the baseline's logits"
observed_value = "logits off by 1e-3"
seen_in = "transformers 5.24.0"
not_seen_in = "none checked"
at_fault = "transformers 5.24.0: modeling_utils.py: f"
disposition = "file"
link = "https://github.com/huggingface/transformers/issues"

[[issue]]
clause = "S1"
subject = "transformers"
reason = "tie lost"
link = "https://github.com/huggingface/transformers/issues/2"
"""


def test_report_triages_old_runs_again_with_another_known_issues_file(tmp_path, capsys):
    run_dir = _run_dir(tmp_path / "cell", [*pair([F, P, F], [P, P, P]),
                                           _record("N1", "transformers", FAIL, "logits differ"),
                                           _record("N1", "reference", PASS),
                                           _record("S1", "transformers", PASS), _record("S1", "reference", PASS)])
    (tmp_path / "k.toml").write_text(KNOWN)
    assert cli.main(["report", str(run_dir), "--out", str(tmp_path / "r"), "--known-issues",
                     str(tmp_path / "k.toml")]) == 0
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["failures"] == []
    assert report["cells"][0]["triage"] == {"known upstream": 1, "new finding": 1, "intermittent": 1, "unexpected": 0}
    assert [s["entry"] for s in report["cells"][0]["stale"]] == ["k.toml #3 (S1 transformers)"]
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "## Known findings (XFAIL), by entry" in markdown
    assert "deepspeedai/DeepSpeed/pull/8539" in markdown
    assert "## Known issues possibly stale" in markdown
    assert "--known-issues" in markdown.split("regenerate with")[1]
    # Only known findings failed: not a failing cell, and not one where every clause held either.
    assert "| known findings only |" in markdown
    assert report["supported"]["deepspeed"] == {"0.19.8": "0/1 cells every clause held, 1 known findings only"}
    # The run's own records are untouched: the report without the file shows the failures again.
    assert cli.main(["report", str(run_dir), "--out", str(tmp_path / "r2")]) == 0
    assert len(json.loads((tmp_path / "r2" / "report.json").read_text())["failures"]) == 2


def test_no_one_subject_is_blamed_in_a_cell_where_the_reference_itself_was_intermittent(tmp_path):
    steady = pair([F, F, F], [P, P, P])
    other = [_record("N1", "transformers", PASS, outcomes=[P]),
             _record("N1", "reference", FAIL, "logits 4.2e+35", outcomes=[F, P, P])]
    clean = write_report([_run_dir(tmp_path / "clean", [*steady])], tmp_path / "r1")
    assert [f["likely_fault"] for f in clean["failures"]] == [BLAME_INTEGRATION]
    racy = write_report([_run_dir(tmp_path / "racy", [*steady, *other])], tmp_path / "r2")
    faults = {f["case"]: f["likely_fault"] for f in racy["failures"]}
    assert faults["G1-c[transformers-llama-ws2-fp32]"].startswith(
        f"{NOT_ATTRIBUTED} (would be {BLAME_INTEGRATION}, but the reference itself was intermittent on 1 case")


def test_blame_pairs_a_case_with_the_same_case_of_the_other_subject_variant_included(tmp_path):
    """Under hpZ the reference passes on every try and transformers fails on every one, beside plain cases
    failing for both: the hpZ failure is the transformers integration's, not deepspeed/torch's."""
    def record(subject, status, variant):
        suffix = "" if variant == "plain" else f"-{variant}"
        return dataclasses.replace(_record("G1", subject, status, "gathered 1.97e-31"), variant=variant,
                                   case_id=f"G1-c[{subject}-llama-ws2-fp32{suffix}]")

    run_dir = _run_dir(tmp_path / "cell", [record("transformers", FAIL, "plain"), record("reference", FAIL, "plain"),
                                           record("transformers", FAIL, "hpz"), record("reference", PASS, "hpz")])
    faults = {f["case"]: f["likely_fault"] for f in write_report([run_dir], tmp_path / "r")["failures"]}
    assert faults == {"G1-c[reference-llama-ws2-fp32]": BLAME_STACK,
                      "G1-c[transformers-llama-ws2-fp32]": BLAME_STACK,
                      "G1-c[transformers-llama-ws2-fp32-hpz]": BLAME_INTEGRATION}


def _leftover(subject, reproduced_by):
    return dataclasses.replace(_record("P4", subject, FAIL, "Qwen2ForSequenceClassification ... lacks 27 of the 27",
                                       check="leaves_no_leftover"),
                               metrics={REPRODUCED_BY: reproduced_by})


def test_a_class_both_subjects_spoil_blames_the_stack_not_the_subject_whose_world_it_was():
    """Each spoiled world ran one subject's cases, so each leftover record names that subject; a class that both
    subjects' cases leave changed (in worlds of their own) is the stack's fault (a DeepSpeed unpatch bug)."""
    theirs, ours = _leftover("transformers", ["transformers"]), _leftover("reference", ["reference"])
    assert likely_fault(theirs, []).startswith(BLAME_INTEGRATION)
    assert likely_fault(theirs, [ours]).startswith(BLAME_STACK)
    assert likely_fault(ours, [theirs]).startswith(BLAME_STACK)
    assert likely_fault(_leftover("transformers", []), []).startswith(NOT_ATTRIBUTED)
