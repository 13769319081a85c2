"""Repeats: a case that neither passes nor skips is tried again, the last time in a fresh world; its record
keeps every outcome; where the subjects differ the one that passed is tried again too; a fault that fails on
some tries only is reported as intermittent and blamed on no one subject."""

import json

import pytest

from zero3_conformance import cli
from zero3_conformance.catalog import build_cases
from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG
from zero3_conformance.execution.runner import Attempt, Runner, prepare_checkpoints
from zero3_conformance.report import write_report
from zero3_conformance.report.aggregate import BLAME_INTEGRATION, NOT_ATTRIBUTED
from zero3_conformance.results import ERROR, FAIL, PASS, SKIP, TIMEOUT, RecordWriter, read_records

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("harness-repeats")]
CASE = build_cases(subjects=["transformers"], clauses=["G1"], models=["llama"], world_sizes=[2])[0]


def scripted(runner, monkeypatch, script):
    """Replaces each try with the next status scripted for its subject; returns the tries made."""
    tries = []

    def fake_try(case, fresh):
        status = script[case.subject][sum(t[0] == case.subject for t in tries)]
        tries.append((case.subject, status, fresh))
        return Attempt(status, "" if status == PASS else f"{status.lower()} on try {len(tries)}", {}, 0.01, fresh)

    monkeypatch.setattr(runner, "_try", fake_try)
    return tries


@pytest.mark.parametrize(("script", "expected"), [
    ([PASS], [(PASS, False)]),
    ([SKIP], [(SKIP, False)]),
    ([FAIL, FAIL, FAIL], [(FAIL, False), (FAIL, False), (FAIL, True)]),  # the last try in a fresh world
    ([FAIL, PASS, FAIL], [(FAIL, False), (PASS, False), (FAIL, True)]),
    ([TIMEOUT, FAIL, FAIL], [(TIMEOUT, False), (FAIL, True)]),  # a TIMEOUT is tried again once at most
    ([FAIL, TIMEOUT, FAIL], [(FAIL, False), (TIMEOUT, False), (FAIL, True)]),
    ([TIMEOUT, TIMEOUT, FAIL], [(TIMEOUT, False), (TIMEOUT, True)]),
])
def test_a_case_that_did_not_pass_is_tried_again(monkeypatch, script, expected):
    runner = Runner(DEFAULT_ZERO3_CONFIG)
    tries = scripted(runner, monkeypatch, {"transformers": script})
    record = runner.run_case(CASE)
    assert [(status, fresh) for _, status, fresh in tries] == expected
    assert record.outcomes == [status for status, _ in expected]
    assert record.intermittent == (len({status for status, _ in expected}) > 1)
    severity = [PASS, SKIP, FAIL, ERROR, TIMEOUT]
    assert record.status == max(record.outcomes, key=severity.index)  # the most severe outcome
    if len(expected) > 1:
        assert record.message.endswith(f"outcomes of {len(expected)} tries: {', '.join(record.outcomes)} "
                                       "(the last in a freshly started world)")


def test_no_repeats_when_asked(monkeypatch):
    runner = Runner(DEFAULT_ZERO3_CONFIG, repeat=0)
    tries = scripted(runner, monkeypatch, {"transformers": [FAIL]})
    assert runner.run_case(CASE).outcomes == [FAIL]
    assert len(tries) == 1


def test_where_the_subjects_differ_the_one_that_passed_is_tried_again(monkeypatch):
    runner = Runner(DEFAULT_ZERO3_CONFIG)
    both = [c for c in build_cases(subjects=["transformers", "reference"], clauses=["G1"], models=["llama"],
                                   world_sizes=[2]) if c.layout == "safetensors"]
    tries = scripted(runner, monkeypatch, {"transformers": [FAIL, FAIL, FAIL], "reference": [PASS, PASS, PASS]})
    records = runner.run_together(both)
    assert [r.outcomes for r in records] == [[FAIL] * 3, [PASS] * 3]
    assert [fresh for subject, _, fresh in tries if subject == "reference"] == [False, False, True]
    tries = scripted(runner, monkeypatch, {"transformers": [PASS], "reference": [PASS]})
    assert [r.outcomes for r in runner.run_together(both)] == [[PASS], [PASS]]
    assert len(tries) == 2


def flaky_on(runner, monkeypatch, subject, failing_tries):
    """An injected fault: the real check runs, and `subject`'s tries numbered in `failing_tries` are turned
    into a FAIL that names a tensor, as a race that hits some tries only would."""
    real_try = runner._try
    count = {"n": 0}

    def try_with_fault(case, fresh):
        attempt = real_try(case, fresh)
        if case.subject != subject:
            return attempt
        count["n"] += 1
        if count["n"] in failing_tries:
            return Attempt(FAIL, "rank 0: model.norm.weight: 64/64 elements differ, max |diff| 4.2e+35", {},
                           attempt.seconds, fresh)
        return attempt

    monkeypatch.setattr(runner, "_try", try_with_fault)


@pytest.mark.parametrize(("failing_tries", "intermittent", "fault"), [
    ({1, 3}, True, f"{NOT_ATTRIBUTED} (intermittent)"),  # fails on some tries only: no one subject blamed
    ({1, 2, 3}, False, BLAME_INTEGRATION),  # fails on every try, the reference passes every try
])
def test_a_fault_that_fails_on_some_tries_only_is_intermittent_in_real_worlds(monkeypatch, tmp_path, failing_tries,
                                                                             intermittent, fault):
    cases = build_cases(subjects=["transformers", "reference"], clauses=["G1"], models=["llama"], world_sizes=[1])
    cases = [c for c in cases if c.layout == "safetensors"]
    prepare_checkpoints(cases)
    runner = Runner(DEFAULT_ZERO3_CONFIG)
    flaky_on(runner, monkeypatch, "transformers", failing_tries)
    with RecordWriter(tmp_path / "run" / "results.jsonl") as writer:
        records = runner.run(cases, writer)
    theirs, ours = sorted(records, key=lambda r: r.subject, reverse=True)
    assert len(theirs.outcomes) == 3
    assert theirs.intermittent == intermittent
    assert ours.outcomes == [PASS] * 3, ours.message  # the reference, tried again because the subjects differed
    (tmp_path / "run" / "summary.md").write_text("done")
    report = write_report([tmp_path / "run"], tmp_path / "report")
    assert [(f["subject"], f["likely_fault"]) for f in report["failures"]] == [("transformers", fault)]


def test_run_records_the_repeat_count_and_resume_keeps_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "--out", str(out), "--clauses", "A1", "--subject", "reference", "--world-sizes", "1",
                     "--repeat", "0", "--quiet"]) == 0
    assert json.loads((out / "run.json").read_text())["selection"]["repeat"] == 0
    plan = json.loads((out / "run.json").read_text())
    del plan["selection"]["repeat"]  # a plan from before repeats: it ran without them, and resumes so
    (out / "run.json").write_text(json.dumps(plan))
    assert cli.main(["run", "--resume", str(out), "--quiet"]) == 0
    assert [r.outcomes for r in read_records(out / "results.jsonl")] == [[PASS]]
    assert cli.main(["run", "--repeat", "-1", "--out", str(tmp_path / "x")]) == 2
    assert "--repeat must be 0 or more, not -1" in capsys.readouterr().err
