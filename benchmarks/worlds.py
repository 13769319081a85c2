"""Persistent worlds against a fresh world (process group) per check, on the same checks, side by side.

    python benchmarks/worlds.py [--clauses A1,P1,P2,G1] [--models llama,gpt2] [--world-size 2]

All modes run the same cases through the same Runner; the fresh modes close the world before every case.
With spawned ranks each check pays for starting its processes, importing torch/deepspeed/transformers and
joining a process group, as a harness without persistent worlds would (a launcher per check). With ranks
forked from the preloaded server (what the harness does on CPU) a fresh world skips the imports but
still starts processes, joins a process group and pays every first use again. Prints a table with wall
times and the ratios.
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
    forked = run_timed(cases, fresh_world_per_check=True)
    spawned = run_timed(cases, fresh_world_per_check=True, start_method="spawn")
    print(f"{len(cases)} checks ({args.clauses}; {args.models}; world size {args.world_size})\n")
    print("| worlds | wall s | s per check | worlds started | of it starting worlds s | not passed | / persistent |")
    print("|---|---|---|---|---|---|---|")
    for name, t in (("persistent (one world, many checks)", persistent),
                    ("fresh world per check, ranks spawned", spawned),
                    ("fresh world per check, ranks forked from the preloaded server", forked)):
        print(f"| {name} | {t['wall']:.1f} | {t['wall'] / t['cases']:.2f} | {t['worlds_started']} | "
              f"{t['world_start']:.1f} | {t['bad']} | {t['wall'] / persistent['wall']:.1f}x |")


if __name__ == "__main__":
    main()
