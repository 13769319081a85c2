"""A case's identity is one value, `CaseKey`: the id is made from it, records carry its fields, and the one
parser of an id gives back the key it was made from."""

import dataclasses

import pytest

from zero3_conformance.casekey import CaseKey
from zero3_conformance.catalog import build_cases
from zero3_conformance.errors import UsageError
from zero3_conformance.results import Record

SWEEP_TYPES = ["vit", "xlm-roberta", "blip-2", "mixtral"]  # hyphens in a type's name; several heads each


@pytest.fixture(scope="module")
def cases():
    return [*build_cases(), *build_cases(architectures=SWEEP_TYPES)]


def test_every_case_id_parses_back_to_its_key(cases):
    assert len(cases) > 500
    assert {c.key.sweep for c in cases} == {True, False}
    for case in cases:
        parsed = CaseKey.parse(case.id)
        assert parsed.id == case.id
        # A zoo family's id names the family, not the class it builds: the head is all the parse cannot give.
        assert parsed == (case.key if case.key.sweep else dataclasses.replace(case.key, head=None)), case.id


def test_subjects_of_one_case_share_the_key_across_subjects(cases):
    llama = [c for c in cases if c.model == "llama" and c.clause == "G1" and c.layout == "sharded"
             and c.world_size == 2 and c.dtype == "fp32"]
    assert sorted(c.subject for c in llama) == ["reference", "transformers"]
    assert llama[0].key != llama[1].key
    assert llama[0].key.across_subjects() == llama[1].key.across_subjects()
    assert llama[0].key.with_subject(llama[1].subject) == llama[1].key


@pytest.mark.parametrize("text", ["", "G1", "G1-gathered_equals_checkpoint", "G1-x[reference-llama-ws2]",
                                  "G1-x[reference-llama-ws2-fp64]", "G1-x[reference-llama-wsN-fp32]",
                                  "P4-leaves_no_leftover[llama-ws2-after-3-cases-before-G1-x-transformers]"])
def test_text_that_is_not_a_case_id_is_one_line(text):
    with pytest.raises(ValueError, match="is not a case id") as raised:
        CaseKey.parse(text)
    assert "\n" not in str(raised.value)


def test_a_record_carries_the_key_it_was_made_from(cases, make_record):
    case = next(c for c in cases if c.key.sweep and c.layout)
    key = case.key
    record = make_record("PASS", clause=key.clause, check=key.check, subject=key.subject, model=key.model,
                         head=key.head, layout=key.layout, world_size=key.world_size, dtype=key.dtype,
                         variant=key.variant, sweep=key.sweep, case_id=case.id)
    assert record.key == key
    read = Record.from_dict(dataclasses.asdict(record))
    assert read.key == key


def test_a_record_from_before_sweep_was_recorded_gets_it_from_its_id(cases, make_record):
    sweep = next(c for c in cases if c.key.sweep)
    zoo = next(c for c in cases if not c.key.sweep and c.family is not None)
    for case in (sweep, zoo):
        data = dataclasses.asdict(make_record("PASS", model=case.model, head=case.head, case_id=case.id))
        del data["sweep"]
        assert Record.from_dict(data).sweep is case.key.sweep


def test_a_selection_is_kept_in_the_plan_as_typed_and_read_back_the_same():
    from zero3_conformance.execution.selection import Selection

    chosen = Selection.parse(subjects="reference", models="llama, bert", clauses="A1,G1", world_sizes="1,2",
                             repeat=0)
    assert chosen.models == ("llama", "bert")
    assert chosen.world_sizes == (1, 2)
    plan = chosen.to_plan()
    assert plan["models"] == "llama,bert"
    assert Selection.from_plan(plan, "run.json") == chosen
    older = {key: value for key, value in plan.items() if key not in ("repeat", "architectures", "variants")}
    assert Selection.from_plan(older, "run.json").repeat == 0  # what a plan from before `repeat` meant
    with pytest.raises(UsageError, match=r"run\.json is not a run plan"):
        Selection.from_plan({"models": "llama"}, "run.json")
    with pytest.raises(UsageError, match="invalid world sizes 'two'"):
        Selection.parse(world_sizes="two")
    assert sorted(c.id for c in chosen.cases()) == sorted(
        c.id for c in build_cases(["reference"], ["llama", "bert"], ["A1", "G1"], [1, 2]))
