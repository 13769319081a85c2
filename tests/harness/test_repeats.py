"""Repeats in real worlds: a fault that fails on some tries only is reported as intermittent and blamed on no one
subject; a run's plan keeps its repeat count. The policy itself, scripted: test_tries.py."""

import json

import pytest

from zero3_conformance import cli
from zero3_conformance.catalog import build_cases
from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG
from zero3_conformance.execution.checkpoints import write_checkpoints
from zero3_conformance.execution.records import Recorder
from zero3_conformance.execution.runner import Runner
from zero3_conformance.execution.tries import Attempt
from zero3_conformance.report import write_report
from zero3_conformance.report.aggregate import BLAME_INTEGRATION, NOT_ATTRIBUTED
from zero3_conformance.results import FAIL, PASS, RecordWriter, read_records

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("harness-repeats")]
def flaky_on(runner, monkeypatch, subject, failing_tries):
    """An injected fault: the real check runs, and `subject`'s tries numbered in `failing_tries` are turned
    into a FAIL that names a tensor, as a race that hits some tries only would."""
    real_try = runner.try_case
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

    monkeypatch.setattr(runner, "try_case", try_with_fault)


@pytest.mark.parametrize(("failing_tries", "intermittent", "fault"), [
    ({1, 3}, True, f"{NOT_ATTRIBUTED} (intermittent)"),  # fails on some tries only: no one subject blamed
    ({1, 2, 3}, False, BLAME_INTEGRATION),  # fails on every try, the reference passes every try
])
def test_a_fault_that_fails_on_some_tries_only_is_intermittent_in_real_worlds(monkeypatch, tmp_path, failing_tries,
                                                                             intermittent, fault):
    cases = build_cases(subjects=["transformers", "reference"], clauses=["G1"], models=["llama"], world_sizes=[1])
    cases = [c for c in cases if c.layout == "safetensors"]
    write_checkpoints(cases)
    runner = Runner(DEFAULT_ZERO3_CONFIG)
    flaky_on(runner, monkeypatch, "transformers", failing_tries)
    with RecordWriter(tmp_path / "run" / "results.jsonl") as writer:
        records = runner.run(cases, Recorder((), writer))
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
