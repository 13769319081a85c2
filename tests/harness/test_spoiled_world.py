"""A world whose earlier cases spoiled its builds without ZeRO judges nothing: the case whose baseline differs
from its clean structure runs again in a fresh world, a P4 leftover record says what changed, and names the
subject whose cases alone reproduce it."""

import pytest

from zero3_conformance.catalog import build_cases
from zero3_conformance.cli import main
from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG
from zero3_conformance.execution.checkpoints import write_checkpoints
from zero3_conformance.execution.records import LEFTOVER_CHECK, Recorder
from zero3_conformance.execution.runner import Runner
from zero3_conformance.mutation import mutants  # noqa: F401 - registers the mutant
from zero3_conformance.results import FAIL, PASS, RecordWriter, read_records
from zero3_conformance.rundir import RunDir

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("harness-spoiled-world")]
SPOILER = "mutant:spoils_later_builds"


def _first_case(check, subject):
    return next(case for case in build_cases(subjects=[subject], models=["llama"], clauses=[check], world_sizes=[1])
                if case.layout in (None, "safetensors"))


@pytest.mark.parametrize(("judged", "seen"), [
    ("G4", "the baseline (from_config, without ZeRO) lacks 21 of the 21 parameters"),
    # A baseline that raises where the class builds in a fresh process is not taken for the class's own failure.
    ("G1", "the baseline raised: AttributeError: 'LlamaForCausalLM' object has no attribute 'all_tied_weights_keys'\n"
           "the case's class built here again (without ZeRO, after its baseline raised) lacks 21 of the 21 parameters"),
])
def test_a_spoiled_world_is_recorded_and_its_cases_judged_in_a_fresh_one(tmp_path, capsys, judged, seen):
    # The mutant's case first, then the reference's in the world it ran in.
    cases = [_first_case("G4", SPOILER), _first_case(judged, "reference")]
    write_checkpoints(cases)
    runner = Runner(DEFAULT_ZERO3_CONFIG, repeat=0)
    with RecordWriter(tmp_path / "results.jsonl") as writer:
        runner.run(cases, Recorder((), writer))
    records = {r.case_id: r for r in read_records(tmp_path / "results.jsonl")}
    reference = records[cases[1].id]
    assert reference.status == PASS, reference.message  # judged in a fresh world, against a clean baseline
    assert reference.compared == reference.expected_to_compare
    assert any(reference.compared.values())
    leftovers = [r for r in records.values() if r.case_id.startswith(LEFTOVER_CHECK)]
    assert len(leftovers) == 1
    leftover = leftovers[0]
    assert (leftover.clause, leftover.status, leftover.subject) == ("P4", FAIL, SPOILER)
    assert leftover.metrics["spoiled_after"] == [cases[0].id]
    assert leftover.metrics["reproduced_by"] == [SPOILER]
    assert "LlamaForCausalLM built without ZeRO and with no config alive is not its clean structure" in leftover.message
    assert seen in leftover.message
    assert f"replaying only {SPOILER}'s 1 of them in a fresh world reproduces it" in leftover.message

    RunDir(tmp_path).write_plan(None, len(cases))
    RunDir(tmp_path).mark_finished(len(cases), len(records))
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "report")]) in (0, 1)
    capsys.readouterr()
    text = (tmp_path / "report" / "report.md").read_text()
    assert leftover.case_id == f"P4-leaves_no_leftover[llama-ws1-after-1-cases-before-{cases[1].check_id}-reference]"
    assert f"FAIL {leftover.case_id} — likely fault: subject {SPOILER} (its cases alone, " \
           f"replayed in a fresh world, leave the same change)" in text
