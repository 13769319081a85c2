"""Every mutant of the reference is caught by the clause meant to catch it, while the reference passes
the same cases: the checks are shown able to fail."""

import pytest

from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG
from zero3_conformance.execution.checkpoints import write_checkpoints
from zero3_conformance.execution.runner import Runner
from zero3_conformance.mutation.mutants import MUTANTS, killing_cases
from zero3_conformance.results import FAIL, PASS, TIMEOUT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("harness-mutants")]
KILLED = (FAIL, TIMEOUT)  # a hang is as much a finding as a wrong value


@pytest.fixture(scope="module")
def runner():
    # A mutant that hangs its world meets the check's own limit; one try each, so a hang costs it once.
    runner = Runner(DEFAULT_ZERO3_CONFIG, repeat=0)
    yield runner
    runner.close()


@pytest.mark.parametrize(("name", "target"),
                         [(name, target) for name in sorted(MUTANTS) for target in MUTANTS[name].kills])
def test_mutant_is_killed_and_reference_passes(runner, name, target):
    mutant_cases = killing_cases(name, target)
    write_checkpoints(mutant_cases)
    assert mutant_cases
    for case in mutant_cases:
        record = runner.run_case(case)
        assert record.status in KILLED, f"{case.id} survived: {record.status} {record.message}"
        assert record.message  # the finding says what was wrong
    runner.pool.close()  # the reference never runs in a world a mutant touched
    for case in killing_cases(name, target, subject="reference"):
        record = runner.run_case(case)
        assert record.status == PASS, f"{case.id}: {record.status} {record.message}"


def test_there_are_at_least_ten_mutants_each_naming_its_killer():
    assert len(MUTANTS) >= 10
    for name, mutant in MUTANTS.items():
        assert mutant.kills, name
        assert mutant.__doc__, name


def test_kill_matrix_verdicts_and_rendering():
    from zero3_conformance.report import kill_matrix

    matrix = {"clauses": ["G1", "P5"], "mutants": {
        "a": {"doc": "A bug.", "declared": ["G1"], "clauses": {"G1": {"verdict": "killed"},
                                                                 "P5": {"verdict": "survived"}}},
        "b": {"doc": "B bug.", "declared": ["P5"], "clauses": {"G1": {"verdict": "not applicable"},
                                                                 "P5": {"verdict": "killed"}}},
    }}
    assert kill_matrix.all_killed(matrix)
    text = kill_matrix.render(matrix)
    assert "2 of 2 mutants killed; every declared kill holds: yes" in text
    assert "| mutant | P5 | G1 | declared |" in text  # clauses in the contract's order
    assert "| `a` | · | ✗ | G1 |" in text
    assert "| `b` | ✗ | — | P5 |" in text
    matrix["mutants"]["b"]["clauses"]["P5"]["verdict"] = "reference fails"
    assert not kill_matrix.all_killed(matrix)
    assert "1 of 2 mutants killed; every declared kill holds: NO" in kill_matrix.render(matrix)


def test_mutate_rejects_unknown_names_with_exit_2(capsys):
    from zero3_conformance.cli import main

    assert main(["mutate", "--mutants", "nonesuch"]) == 2
    assert "unknown mutant 'nonesuch'" in capsys.readouterr().err
    assert main(["mutate", "--clauses", "Z9"]) == 2
    assert "unknown clause 'Z9'" in capsys.readouterr().err
