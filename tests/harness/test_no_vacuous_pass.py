"""No check PASSes for want of anything to compare: every model-building check of the catalog, run against
(i) a subject whose builds have no parameters and (ii) a correct subject beside baselines that have none, gives
a verdict other than PASS."""

import pytest

from zero3_conformance.catalog import build_cases
from zero3_conformance.checks.registry import load_checks
from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG
from zero3_conformance.execution.checkpoints import write_checkpoints
from zero3_conformance.execution.runner import Runner
from zero3_conformance.results import NOT_RUN, PASS

from . import empty_baseline  # noqa: F401 - registers the subject whose baselines are empty

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("harness-no-vacuous-pass")]

# Checks that build no model: nothing of a model to compare, so nothing this test could take away.
NO_MODEL = {
    "A1": "asks whether the subject's config object registers itself; builds no model",
    "A2": "asks whether ZeRO-3 stays on exactly while the config object lives; builds no model",
    "A3": "compares the subject's config object's answers with DeepSpeed's; builds no model",
    "A4": "asks whether a malformed config is refused; builds no model",
}
# Checks that judge the subject without a baseline built in the rank: an empty one cannot reach their verdict.
NO_IN_PROCESS_BASELINE = {
    "P3": "judges peak memory against a bound, and the build's size against the clean structure",
    "G5": "compares a value the subject writes with what the subject gathers back",
}
SUBJECTS = {"no parameters": ("mutant:no_parameters", {}),
            "empty baseline": ("empty-baseline", NO_IN_PROCESS_BASELINE)}


def _one_case_per_check(subject):
    """Each model-building check's first case at world size 2 (1 where it has no 2), fp32 where it has it."""
    chosen = {}
    for case in build_cases(subjects=[subject], world_sizes=[1, 2]):
        if case.clause in NO_MODEL or case.skip:
            continue
        best = chosen.get(case.check_id)
        rank = (case.world_size != 2, case.dtype != "fp32", case.layout not in (None, "safetensors"))
        if best is None or rank < best[0]:
            chosen[case.check_id] = (rank, case)
    return [case for _, case in chosen.values()]


def test_the_checks_listed_as_building_no_model_take_none():
    checks = load_checks().values()
    assert {check.clause for check in checks if check.families == () and check.clause != "P3"} == set(NO_MODEL)
    assert set(NO_IN_PROCESS_BASELINE) <= {check.clause for check in checks}


@pytest.mark.parametrize("kind", sorted(SUBJECTS))
def test_no_model_building_check_passes_with_nothing_to_compare(kind):
    subject, exempt = SUBJECTS[kind]
    cases = [case for case in _one_case_per_check(subject) if case.clause not in exempt]
    assert len(cases) >= 25, [c.id for c in cases]
    write_checkpoints(cases)
    runner = Runner(DEFAULT_ZERO3_CONFIG, repeat=0)
    try:
        verdicts = {case.check_id: runner.run_case(case) for case in cases}
    finally:
        runner.close()
    not_run = sorted(record.case_id for record in verdicts.values() if record.metrics.get(NOT_RUN))
    assert not not_run, f"{kind}: cases that never ran prove nothing: {not_run}"
    passed = sorted(f"{check}: {record.case_id}" for check, record in verdicts.items() if record.status == PASS)
    assert not passed, f"{kind}: {len(passed)} of {len(verdicts)} checks passed with nothing to compare:\n" + \
        "\n".join(passed)
