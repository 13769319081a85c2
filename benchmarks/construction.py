"""Construction cost of a model of over 500 MB: the reference subject against transformers against the
non-ZeRO baseline, time and peak memory per rank, with from_config and from_pretrained.

    python benchmarks/construction.py [--world-sizes 1,2]

Each figure comes from the probe P3 uses (zero3_conformance.memory: a process per rank, apart from the
world's ranks, that imports once and measures builds one after another): the anonymous memory the
rank allocated while building, and the build's seconds. The bound P3 applies is
printed beside them: model / world + largest module + slack.
"""

from __future__ import annotations

import argparse
from typing import Any

from zero3_conformance.checks.partition import MEMORY_SLACK_MB, _model_sizes
from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG
from zero3_conformance.memory.client import probe_everywhere
from zero3_conformance.worlds.world import WorldPool
from zero3_conformance.zoo import _MEMORY_LLAMA, MEMORY_WARMUP_FAMILY, Family, _kw, ensure_checkpoint

# llama-shaped, 615 MiB in fp32: 10 layers of 12.8 M parameters and two 16.4 M embeddings.
BENCH_FAMILY = Family("llama-bench-615mb", "LlamaConfig", _kw(
    hidden_size=1024, intermediate_size=2816, num_hidden_layers=10, num_attention_heads=16, num_key_value_heads=16,
    vocab_size=16000, **_MEMORY_LLAMA), "AutoModelForCausalLM", "AutoModelForCausalLM", tied=False)
SUBJECTS = ("reference", "transformers")
BUILDS = ("from_config", "from_pretrained")


def probe_task(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Runs in every rank of a world: one subject's build, measured everywhere, plus the baseline's."""
    everyone, baseline = probe_everywhere(ctx.rank, ctx.world_size, ctx.backend, payload["subject"], payload["build"],
                                          DEFAULT_ZERO3_CONFIG, BENCH_FAMILY, MEMORY_WARMUP_FAMILY)
    return {"everyone": everyone, "baseline": baseline}


def _joined(values: list, digits: int = 0) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world-sizes", default="1,2")
    args = parser.parse_args()
    ensure_checkpoint(BENCH_FAMILY, "safetensors")
    ensure_checkpoint(MEMORY_WARMUP_FAMILY, "safetensors")
    model_mb, largest_mb = _model_sizes(BENCH_FAMILY)
    print(f"model {model_mb:.0f} MB in fp32, largest module {largest_mb:.0f} MB\n")
    print("| build | world | subject | allocated MB per rank | bound MB | seconds per rank |")
    print("|---|---|---|---|---|---|")
    pool = WorldPool()
    try:
        for size in (int(s) for s in args.world_sizes.split(",")):
            bound = model_mb / size + largest_mb + MEMORY_SLACK_MB
            for build in BUILDS:
                baseline: dict[str, Any] = {}
                for subject in SUBJECTS:
                    outcome = pool.get(size).run(f"{__name__}:probe_task", {"subject": subject, "build": build}, 900.0)
                    replies = [outcome.replies[r] for r in sorted(outcome.replies)]
                    if outcome.timed_out or not all(r.ok for r in replies):
                        raise SystemExit(f"{subject} {build} at world size {size} failed: {outcome}")
                    everyone = replies[0].value["everyone"]
                    if any("error" in f or "raised" in f for f in everyone):
                        raise SystemExit(f"{subject} {build} at world size {size}: {everyone}")
                    baseline = replies[0].value["baseline"] or baseline
                    print(f"| {build} | {size} | {subject} | {_joined([f['peak_anon_mb'] for f in everyone])} | "
                          f"{bound:.0f} | {_joined([f['seconds'] for f in everyone], 1)} |", flush=True)
                print(f"| {build} | {size} | baseline (no ZeRO) | {baseline['peak_anon_mb']:.0f} | — | "
                      f"{baseline['seconds']:.1f} |", flush=True)
    finally:
        pool.close()


if __name__ == "__main__":
    main()
