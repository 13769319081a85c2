"""How the wall time grows with world size (1-4) and with the number of model families.

    python benchmarks/scaling.py [--clauses P1,P2,G1]

Same clauses throughout: once per world size for llama, then at world size 2 for 1, 2, 4 and 6 families.
"""

from __future__ import annotations

import argparse

from timing import run_timed

from zero3_conformance.catalog import build_cases
from zero3_conformance.zoo import FAMILIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clauses", default="P1,P2,G1")
    args = parser.parse_args()
    clauses = args.clauses.split(",")
    run_timed(build_cases(clauses=clauses[:1], models=["llama"], world_sizes=[1])[:1])  # JIT build, page cache
    print(f"clauses {args.clauses}\n")
    print("| world size | families | checks | wall s | starting worlds s | s per check |")
    print("|---|---|---|---|---|---|")
    families = list(FAMILIES)
    runs = [(size, ["llama"]) for size in (1, 2, 3, 4)] + [(2, families[:n]) for n in (2, 4, len(families))]
    for size, models in runs:
        t = run_timed(build_cases(clauses=clauses, models=models, world_sizes=[size]))
        print(f"| {size} | {len(models)} | {t['cases']} | {t['wall']:.1f} | {t['world_start']:.1f} | "
              f"{t['wall'] / max(t['cases'], 1):.2f} |")


if __name__ == "__main__":
    main()
