import re
from pathlib import Path

import pytest

from zero3_conformance import contract
from zero3_conformance.catalog import build_cases
from zero3_conformance.checks.registry import load_checks
from zero3_conformance.contract import clause_ids
from zero3_conformance.errors import UsageError
from zero3_conformance.zoo import FAMILIES

CONTRACT = Path(__file__).resolve().parents[2] / "CONTRACT.md"


def contract_clauses() -> set[str]:
    return set(clause_ids())


def test_the_contract_at_the_top_of_the_checkout_is_the_one_the_package_ships():
    assert CONTRACT.resolve() == contract.CONTRACT.resolve()


def test_every_check_names_a_contract_clause_and_says_what_it_checks():
    clauses = contract_clauses()
    for check in load_checks().values():
        assert check.clause in clauses, check.id
        assert check.summary, f"{check.id} has no docstring"


def test_the_contract_alone_decides_the_order_of_clauses():
    ids = clause_ids()
    assert sorted(reversed(ids), key=contract.clause_key) == ids
    assert contract.clause_groups() == "APGNSE"
    assert sorted(["Z9", "G1", "A5"], key=contract.clause_key) == ["A5", "G1", "Z9"]  # unknown IDs last


def test_every_clause_of_the_contract_has_a_check():
    covered = {c.clause for c in load_checks().values()}
    # E1 (provenance) is a property of every record, checked by the result-format tests, not a check of its own.
    assert contract_clauses() - {"E1"} <= covered
    assert {"G8", "N4", "S2"} <= contract_clauses()  # the parse finds clauses of every section


def test_default_catalog_spans_subjects_families_world_sizes():
    cases = build_cases()
    assert {c.subject for c in cases} == {"transformers", "reference"}
    assert {c.model for c in cases} >= set(FAMILIES)
    assert {c.world_size for c in cases} == {1, 2, 3}
    assert {c.world_size for c in cases if c.clause == "P3"} == {1, 2, 3}
    # Larger worlds when asked (a GPU runner): P3 measures its bound at any size.
    assert {c.world_size for c in build_cases(world_sizes=[4, 8])} == {4, 8}
    assert {c.layout for c in cases if c.clause == "P2"} == {"safetensors", "sharded", "bin"}
    assert len(FAMILIES) >= 6


def test_case_ids_read_like_the_clause_and_are_unique():
    cases = build_cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids))
    assert "G1-gathered_equals_checkpoint[reference-llama-sharded-ws3-fp32]" in ids
    assert all(re.match(r"^[APGNSE]\d-[a-z0-9_]+\[[a-z0-9_.-]+\]$", i) for i in ids)


def test_filters():
    cases = build_cases(subjects=["reference"], models=["gpt2"], clauses=["G2"], world_sizes=[2])
    assert cases
    assert all((c.subject, c.model, c.clause, c.world_size) == ("reference", "gpt2", "G2", 2)
                         for c in cases)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(models=["gpt5"]), "unknown model 'gpt5'"),
    (dict(clauses=["Z9"]), "unknown clause 'Z9'"),
    (dict(subjects=["mine"]), "unknown subject 'mine'"),
    (dict(world_sizes=[0]), "invalid world size 0"),
])
def test_unknown_names_are_usage_errors(kwargs, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        build_cases(**kwargs)


def test_a_family_the_installed_transformers_lacks_is_a_skip_naming_the_release_that_introduced_it():
    from zero3_conformance.zoo import Family, FamilyUnavailable

    future = Family("future", "NoSuchConfigYet", (), "AutoModel", "AutoModel", tied=False, since="99.0.0")
    with pytest.raises(FamilyUnavailable, match=r"has no NoSuchConfigYet \(it arrived in transformers 99.0.0\)"):
        future.make_config()
