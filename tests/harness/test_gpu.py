"""The CUDA path: NCCL worlds with one rank per GPU, checks on the device, the allocator's memory peak.
The tests that need a GPU skip without one, saying so; the same code runs over gloo in every other test."""

import pytest

from zero3_conformance.catalog import build_cases
from zero3_conformance.cell import local_device, visible_gpus
from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG
from zero3_conformance.execution.checkpoints import write_checkpoints
from zero3_conformance.execution.runner import Runner
from zero3_conformance.report import summary
from zero3_conformance.results import PASS, SKIP

pytestmark = pytest.mark.xdist_group("harness-gpu")
needs_gpu = pytest.mark.skipif(visible_gpus() == 0, reason="no CUDA GPU visible: the NCCL path needs one")


def test_a_world_larger_than_the_gpus_is_skipped_with_the_reason():
    runner = Runner(DEFAULT_ZERO3_CONFIG, backend="nccl")  # no world starts for a skipped case
    size = visible_gpus() + 1
    case = build_cases(subjects=["reference"], clauses=["P1"], world_sizes=[size], models=["llama"])[0]
    record = runner.run_case(case)
    runner.close()
    assert record.status == SKIP
    assert f"world size {size} needs {size} GPUs (one rank per GPU); {size - 1} visible" in record.message


def test_the_memory_table_shows_the_gpu_peak_when_there_is_one(make_record):
    metrics = {"model_mb": 263.0, "largest_module_mb": 23.0, "bound_mb": 203.0, "peak_mb_by_rank": [300, 90],
               "peak_anon_mb_by_rank": [60, 58], "baseline_peak_anon_mb": 263.0, "cuda_peak_mb_by_rank": [150, 149]}
    text = summary.render([make_record(clause="P3", check="from_config_peak_memory", metrics=metrics, world_size=2)], 1)
    assert "GPU allocator peak per rank (judged)" in text
    assert "| 150 / 149 |" in text
    cpu_only = {k: v for k, v in metrics.items() if k != "cuda_peak_mb_by_rank"}
    text = summary.render([make_record(clause="P3", check="from_config_peak_memory", metrics=cpu_only,
                                       world_size=2)], 1)
    assert "GPU allocator" not in text


@needs_gpu
def test_nccl_worlds_build_and_check_models_on_the_gpus():
    assert local_device()[0] == "nccl"
    size = min(2, visible_gpus())
    cases = build_cases(subjects=["reference", "transformers"], clauses=["P1", "G1", "N1"], world_sizes=[size],
                        models=["llama"])
    write_checkpoints(cases)
    runner = Runner(DEFAULT_ZERO3_CONFIG)
    try:
        records = [runner.run_case(case) for case in cases]
    finally:
        runner.close()
    assert {r.cell["backend"] for r in records} == {"nccl"}
    failed = [f"{r.case_id}: {r.status} {r.message}" for r in records if r.status != PASS]
    assert not failed, failed


@needs_gpu
def test_peak_memory_at_construction_is_judged_on_the_cuda_allocator():
    cases = build_cases(subjects=["reference"], clauses=["P3"], world_sizes=[1])
    cases = [c for c in cases if c.check == "from_config_peak_memory"]
    write_checkpoints(cases)
    runner = Runner(DEFAULT_ZERO3_CONFIG)
    try:
        record = runner.run_case(cases[0])
    finally:
        runner.close()
    assert record.status == PASS, record.message
    assert record.metrics["judged_on"] == "cuda_peak_mb"
    assert record.metrics["cuda_peak_mb_by_rank"][0] > 0
