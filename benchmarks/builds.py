"""Where a run's time goes between building models and checking them, per clause, and how many of its builds
another case of the same subject, model, layout, world size, dtype and variant made too (what sharing builds
between clauses could save). Reads a run directory written with per-build timings (metrics `builds`).

    python benchmarks/builds.py RUN_DIR [RUN_DIR...]

Per clause: cases, builds, seconds in builds (rank 0's), the rest of the cases' time (assertions, world round
trips, tries), and the builds that repeat one made earlier in the run by another case (shareable). Exit 2 where
a directory holds no records with build timings.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from zero3_conformance.contract import clause_key
from zero3_conformance.results import Record
from zero3_conformance.rundir import RunDir

BUILDS = "builds"  # checks.base.BUILDS: a record's metric, every build with its seconds


def _build_identity(record: Record, build: str) -> tuple[object, ...]:
    """What decides a build's result besides the build's own description: the case's subject and model, with
    its checkpoint layout, world size, dtype and configuration variant."""
    return (record.subject, record.model, record.head, record.layout, record.world_size, record.dtype,
            record.variant, build)


def table(records: list[Record]) -> tuple[list[str], dict[str, float]]:
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    seen: set[tuple[object, ...]] = set()
    for record in records:
        builds = record.metrics.get(BUILDS) or []
        row = rows[record.clause]
        row["cases"] += 1
        row["seconds"] += record.duration_s
        for build in builds:
            row["builds"] += 1
            row["build_s"] += build["seconds"]
            identity = _build_identity(record, build["build"])
            if identity in seen:
                row["shareable"] += 1
                row["shareable_s"] += build["seconds"]
            seen.add(identity)
    total: dict[str, float] = defaultdict(float)
    lines = ["| clause | cases | builds | s in builds | s otherwise | shareable builds | s in them |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for clause in sorted(rows, key=clause_key):
        row = rows[clause]
        for field, value in row.items():
            total[field] += value
        lines.append(f"| {clause} | {row['cases']:.0f} | {row['builds']:.0f} | {row['build_s']:.1f} | "
                     f"{row['seconds'] - row['build_s']:.1f} | {row['shareable']:.0f} | {row['shareable_s']:.1f} |")
    lines.append(f"| all | {total['cases']:.0f} | {total['builds']:.0f} | {total['build_s']:.1f} | "
                 f"{total['seconds'] - total['build_s']:.1f} | {total['shareable']:.0f} | {total['shareable_s']:.1f} |")
    return lines, dict(total)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    records = [record for run_dir in args.run_dirs for record in RunDir(run_dir).records()]
    if not any(record.metrics.get(BUILDS) for record in records):
        print(f"builds: no records with build timings in {', '.join(map(str, args.run_dirs))} (runs made before "
              "records carried them, or nothing built)", file=sys.stderr)
        return 2
    lines, total = table(records)
    print("\n".join(lines))
    print(f"\n{total['builds']:.0f} builds in {total['cases']:.0f} cases; {total['build_s']:.0f} s of "
          f"{total['seconds']:.0f} s summed case time in builds; {total['shareable']:.0f} builds "
          f"({total['shareable_s']:.0f} s) repeat one another case made")
    return 0


if __name__ == "__main__":
    sys.exit(main())
