"""The default suite's wall time for one cell (the installed environment), broken down: zoo building
(from an empty zoo cache), starting worlds, and checks per clause group.

    python benchmarks/suite.py [--clauses P1,G1] [--models llama] [--world-sizes 1,2,3]

Without options it is the whole of `zero3-conformance run` (about a quarter of an hour on 2 cores).
"""

from __future__ import annotations

import argparse

from timing import run_timed

from zero3_conformance.catalog import build_cases
from zero3_conformance.contract import clause_groups


def _csv(text: str):
    return [part for part in text.split(",") if part] or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clauses", default="")
    parser.add_argument("--models", default="")
    parser.add_argument("--world-sizes", default="")
    args = parser.parse_args()
    sizes = [int(s) for s in _csv(args.world_sizes)] if args.world_sizes else None
    cases = build_cases(clauses=_csv(args.clauses), models=_csv(args.models), world_sizes=sizes)
    t = run_timed(cases, cold_zoo=True)
    print(f"{t['cases']} checks; wall {t['wall']:.0f} s\n")
    print("| part | s | share |")
    print("|---|---|---|")
    rows = [("zoo checkpoints (empty cache)", t["zoo"]), (f"starting {t['worlds_started']} worlds", t["world_start"])]
    rows += [(f"checks {group}", t["groups"][group]) for group in clause_groups() if group in t["groups"]]
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {seconds / t['wall']:.0%} |")
    print(f"| (rest: case setup, records) | {t['wall'] - sum(s for _, s in rows):.1f} | |")


if __name__ == "__main__":
    main()
