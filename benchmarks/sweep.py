"""The architecture sweep's cost: seconds per type and per clause, and the whole sweep.

    python benchmarks/sweep.py RUN_DIR [--wall SECONDS]

reads a run directory of `zero3-conformance run --architectures ...` (the run's wall time, when given, from
`time`) and prints, from the records' durations (every try of a case, both subjects): the summed check
time per clause, per type (median, 90th percentile, the slowest five) and in all, and what share of it went
to cases that did not pass at once (their repeats, each ending in a freshly started world).
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from zero3_conformance.contract import clause_key
from zero3_conformance.results import PASS, SKIP
from zero3_conformance.rundir import RunDir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--wall", type=float, default=None, help="the run's wall time in seconds")
    args = parser.parse_args()
    records = [r for r in RunDir(args.run_dir).records() if r.sweep]
    per_clause: dict[str, float] = defaultdict(float)
    per_type: dict[str, float] = defaultdict(float)
    retried = 0.0
    for r in records:
        per_clause[r.clause] += r.duration_s
        per_type[r.model] += r.duration_s
        if r.outcomes[0] not in (PASS, SKIP):
            retried += r.duration_s
    total = sum(per_clause.values())
    built = [t for t in per_type if any(r.model == t and r.status != SKIP for r in records)]
    print(f"{len(records)} records, {len(per_type)} types ({len(built)} built), summed check time {total:.0f} s"
          + (f", wall {args.wall:.0f} s ({args.wall / max(len(per_type), 1):.1f} s per type)" if args.wall else ""))
    print(f"cases that did not pass at once (and their repeats): {retried:.0f} s, {100 * retried / total:.0f}%")
    print("\n| clause | seconds | share |\n|---|---|---|")
    for clause in sorted(per_clause, key=clause_key):
        print(f"| {clause} | {per_clause[clause]:.0f} | {100 * per_clause[clause] / total:.0f}% |")
    seconds = sorted(per_type[t] for t in built)
    if seconds:
        p90 = seconds[int(0.9 * (len(seconds) - 1))]
        print(f"\nper built type: median {statistics.median(seconds):.1f} s, 90th percentile {p90:.1f} s")
        slowest = sorted(built, key=per_type.get, reverse=True)[:5]
        print("slowest: " + ", ".join(f"{t} {per_type[t]:.0f} s" for t in slowest))


if __name__ == "__main__":
    main()
