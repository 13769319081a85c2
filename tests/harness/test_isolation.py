"""Isolation between checks that share a persistent world: state one case leaks (a ZeRO-3 config object
kept alive) does not decide the next case's result, and the leak is named in the leaking case's record."""

import pytest

from zero3_conformance.catalog import build_cases
from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG
from zero3_conformance.execution.checkpoints import write_checkpoints
from zero3_conformance.execution.runner import Runner
from zero3_conformance.mutation import mutants  # noqa: F401 - registers the mutant:NAME subjects
from zero3_conformance.results import FAIL, PASS

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("harness-isolation")]
_leaked = []


def leak_zero3_config(ctx, payload):
    """Run in every rank: what a careless check would do — keep a stage-3 config object forever."""
    from transformers.integrations import HfDeepSpeedConfig, is_deepspeed_zero3_enabled

    _leaked.append(HfDeepSpeedConfig(payload))
    return is_deepspeed_zero3_enabled()


def test_a_leaked_config_does_not_poison_the_next_check():
    cases = build_cases(subjects=["transformers"], clauses=["P4"], world_sizes=[2], models=["llama"])
    leaky = build_cases(subjects=["mutant:strong_registration"], clauses=["A2"], world_sizes=[1])
    write_checkpoints(cases)
    runner = Runner(DEFAULT_ZERO3_CONFIG, repeat=0)  # every case in the one world, one after another
    try:
        world = runner.pool.get(2)
        outcome = world.run(f"{__name__}:leak_zero3_config", DEFAULT_ZERO3_CONFIG, 60.0)
        assert all(reply.ok and reply.value is True for reply in outcome.replies.values()), outcome
        # P4 builds models after dropping its config and expects them whole: the leak would make them partitioned.
        record = runner.run_case(cases[0])
        assert record.status == PASS, record.message
        assert record.metrics["started_with_zero3_on"] == ["transformers HfDeepSpeedConfig"]
        # A case that leaks is named in its own record, and the one after it starts clean.
        culprit = runner.run_case(leaky[0])
        assert culprit.status == FAIL
        assert culprit.metrics["left_zero3_on"] == ["reference ZeroConfig"]
        after = runner.run_case(build_cases(subjects=["reference"], clauses=["A2"], world_sizes=[1])[0])
        assert after.status == PASS
        assert "started_with_zero3_on" not in after.metrics
    finally:
        runner.close()
