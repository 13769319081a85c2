"""Every mutant of the reference is caught by the clause meant to catch it, while the reference passes
the same cases: the checks are shown able to fail."""

import pytest

from zero3_conformance.catalog import build_cases
from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG
from zero3_conformance.mutants import MUTANTS
from zero3_conformance.results import FAIL, PASS, TIMEOUT
from zero3_conformance.runner import Runner, prepare_checkpoints

pytestmark = pytest.mark.xdist_group("harness-mutants")
KILLED = (FAIL, TIMEOUT)  # a hang is as much a finding as a wrong value


@pytest.fixture(scope="module")
def runner():
    runner = Runner(DEFAULT_ZERO3_CONFIG)  # a mutant that hangs its world meets the check's own limit
    yield runner
    runner.close()


def killing_cases(subject, mutant, target):
    """Every case of the target (a clause, or one check of it) at the largest world size up to 2."""
    clause = target.split("-")[0]
    cases = build_cases(subjects=[subject], clauses=[clause], world_sizes=[1, 2], models=[mutant.family])
    cases = [c for c in cases if target in (clause, c.check_id)]
    cases = [c for c in cases if c.world_size == max(x.world_size for x in cases) and c.dtype == "fp32"]
    cases = [c for c in cases if c.layout in (None, "sharded", "safetensors")]
    prepare_checkpoints(cases)
    return cases


@pytest.mark.parametrize("name, target", [(name, target) for name in sorted(MUTANTS) for target in MUTANTS[name].kills])
def test_mutant_is_killed_and_reference_passes(runner, name, target):
    mutant = MUTANTS[name]
    mutant_cases = killing_cases(f"mutant:{name}", mutant, target)
    assert mutant_cases
    for case in mutant_cases:
        record = runner.run_case(case)
        assert record.status in KILLED, f"{case.id} survived: {record.status} {record.message}"
        assert record.message  # the finding says what was wrong
    for case in killing_cases("reference", mutant, target):
        record = runner.run_case(case)
        assert record.status == PASS, f"{case.id}: {record.status} {record.message}"
