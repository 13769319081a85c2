"""Persistent worlds against a fresh world (process group) per check, on the same checks, side by side.

    python benchmarks/worlds.py [--clauses A1,P1,P2,G1] [--models llama,gpt2] [--world-size 2]

Both modes run the same cases through the same Runner; the fresh mode closes the world before every case,
so each check pays for spawning its ranks, importing torch/deepspeed/transformers and joining a process
group, as a harness without persistent worlds would. Prints a table with wall times and the ratio.
"""

from __future__ import annotations

import argparse

from timing import run_timed

from zero3_conformance.catalog import build_cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clauses", default="A1,P1,P2,G1")
    parser.add_argument("--models", default="llama,gpt2")
    parser.add_argument("--world-size", type=int, default=2)
    args = parser.parse_args()
    cases = build_cases(clauses=args.clauses.split(","), models=args.models.split(","), world_sizes=[args.world_size])
    run_timed(cases[:1])  # warm-up outside the timings: the DeepSpeed op's JIT build, the page cache
    persistent = run_timed(cases)
    fresh = run_timed(cases, fresh_world_per_check=True)
    print(f"{len(cases)} checks ({args.clauses}; {args.models}; world size {args.world_size})\n")
    print("| worlds | wall s | s per check | worlds started | of it starting worlds s | not passed |")
    print("|---|---|---|---|---|---|")
    for name, t in (("persistent (one world, many checks)", persistent), ("fresh world per check", fresh)):
        print(f"| {name} | {t['wall']:.1f} | {t['wall'] / t['cases']:.2f} | {t['worlds_started']} | "
              f"{t['world_start']:.1f} | {t['bad']} |")
    print(f"\nfresh / persistent = {fresh['wall'] / persistent['wall']:.1f}x")


if __name__ == "__main__":
    main()
