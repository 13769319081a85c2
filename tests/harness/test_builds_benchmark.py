"""benchmarks/builds.py: a run's time in builds vs the rest, per clause, and the builds another case made too."""

from harness.scripts import benchmark_script
from zero3_conformance.checks.base import BUILDS
from zero3_conformance.results import write_records

builds = benchmark_script("builds")


def test_builds_are_summed_per_clause_and_repeats_counted(tmp_path, make_record, capsys):
    assert builds.BUILDS == BUILDS
    zero3 = {"build": "zero3 LlamaForCausalLM.from_pretrained(safetensors) dtype=None", "seconds": 2.0}
    baseline = {"build": "baseline LlamaForCausalLM.from_pretrained(safetensors) dtype=None", "seconds": 1.0}
    records = [make_record(clause="G1", case_id="g1", duration_s=5.0, metrics={BUILDS: [baseline, zero3]}),
               make_record(clause="G7", case_id="g7", duration_s=4.0, metrics={BUILDS: [baseline, zero3]}),
               make_record(clause="G7", case_id="g7-other", world_size=2, duration_s=4.0,
                           metrics={BUILDS: [zero3]}),  # another world size: its own build
               make_record(clause="A1", case_id="a1", duration_s=1.0)]
    (tmp_path / "run").mkdir()
    write_records(tmp_path / "run" / "results.jsonl", records)
    assert builds.main([str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "| G1 | 1 | 2 | 3.0 | 2.0 | 0 | 0.0 |" in out
    assert "| G7 | 2 | 3 | 5.0 | 3.0 | 2 | 3.0 |" in out  # G1's two builds again, at world size 3 only
    assert "| all | 4 | 5 | 8.0 | 6.0 | 2 | 3.0 |" in out
    empty = tmp_path / "old"
    empty.mkdir()
    write_records(empty / "results.jsonl", [make_record(case_id="x")])
    assert builds.main([str(empty)]) == 2
    assert "no records with build timings" in capsys.readouterr().err
