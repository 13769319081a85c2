"""How a run schedules its cases: one world per world size, several worlds at once, every record written."""

import threading
import time

import pytest

from zero3_conformance.catalog import build_cases
from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG
from zero3_conformance.execution.records import Recorder
from zero3_conformance.execution.runner import Runner
from zero3_conformance.execution.tries import Attempt
from zero3_conformance.results import PASS, RecordWriter, read_records


def _cases():
    cases = build_cases(subjects=["reference"], models=["gpt2", "llama"], clauses=["P1"], world_sizes=[1, 2, 3])
    assert {c.world_size for c in cases} == {1, 2, 3}
    return cases


def _runner_recording(monkeypatch, fail_on=None):
    """A Runner whose cases only sleep and note when and on which thread they ran."""
    runner = Runner(DEFAULT_ZERO3_CONFIG)
    ran = []

    def fake_try(case, fresh):
        started = time.monotonic()
        time.sleep(0.05)
        if case.world_size == fail_on:
            raise RuntimeError(f"broke in world size {case.world_size}")
        ran.append((case.world_size, threading.current_thread().name, started, time.monotonic()))
        return Attempt(PASS, "", {}, 0.05, fresh)

    monkeypatch.setattr(runner, "try_case", fake_try)
    return runner, ran


@pytest.mark.slow
def test_two_worlds_run_at_once_largest_first_and_every_record_is_written(monkeypatch, tmp_path):
    runner, ran = _runner_recording(monkeypatch)
    cases = _cases()
    seen = []
    with RecordWriter(tmp_path / "results.jsonl") as writer:
        records = runner.run(cases, Recorder((), writer), lambda i, n, r: seen.append((i, n)), parallel_worlds=2)
    assert sorted(r.case_id for r in read_records(tmp_path / "results.jsonl")) == sorted(c.id for c in cases)
    assert len(records) == len(cases)
    assert seen == [(i, len(cases)) for i in range(1, len(cases) + 1)]
    by_size = {size: [r for r in ran if r[0] == size] for size in (1, 2, 3)}
    assert len({r[1] for r in by_size[3]}) == 1  # one world size stays on one thread, i.e. one world
    # The largest world sizes start first, side by side; the smallest follows on whichever thread frees up.
    assert by_size[3][0][2] < by_size[2][-1][3]
    assert by_size[2][0][2] < by_size[3][-1][3]
    assert by_size[1][0][2] >= min(by_size[3][-1][3], by_size[2][-1][3]) - 0.01


@pytest.mark.slow
def test_one_world_at_a_time_when_asked(monkeypatch, tmp_path):
    runner, ran = _runner_recording(monkeypatch)
    with RecordWriter(tmp_path / "results.jsonl") as writer:
        runner.run(_cases(), Recorder((), writer), parallel_worlds=1)
    for earlier, later in zip(ran, ran[1:]):
        assert later[2] >= earlier[3]  # never two cases at once
    assert [r[0] for r in ran] == sorted((r[0] for r in ran), reverse=True)


@pytest.mark.slow
def test_an_error_in_one_world_size_stops_the_run(monkeypatch, tmp_path):
    runner, _ = _runner_recording(monkeypatch, fail_on=2)
    with RecordWriter(tmp_path / "results.jsonl") as writer, pytest.raises(RuntimeError, match="world size 2"):
        runner.run(_cases(), Recorder((), writer), parallel_worlds=2)
