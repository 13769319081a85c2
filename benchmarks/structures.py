"""What the clean structures cost a run: every class a selection builds, derived once in the structure process.

    python benchmarks/structures.py [--architectures TYPES|all]

builds the catalog's cases for the zoo (default) or for the sweep of the types given, and derives the clean
structure of every distinct (class, config) they build through one StructureOracle, as a run does: prints how
many classes, how long the process took to start and answer the first, the rest per class, the total, and
how many were built on the meta device, on the CPU, or not at all.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from zero3_conformance.catalog import build_cases, chosen_architectures
from zero3_conformance.structure import NoStructure, StructureOracle, family_key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", default="", help="comma-separated model types, or `all` (default: the zoo)")
    args = parser.parse_args()
    started = time.monotonic()
    if args.architectures:
        cases = build_cases(architectures=chosen_architectures(args.architectures.split(",")),
                            subjects=["reference"])
    else:
        cases = build_cases(subjects=["reference"])
    families = {family_key(c.family): c.family for c in cases if c.family is not None and not c.skip}
    catalog_s = time.monotonic() - started
    oracle = StructureOracle()
    kinds: Counter = Counter()
    first_s = None
    started = time.monotonic()
    try:
        for family in families.values():
            structure = oracle.get(family)
            kinds["none" if isinstance(structure, NoStructure) else structure.built_on.split(" ")[0]] += 1
            if first_s is None:
                first_s = time.monotonic() - started
    finally:
        oracle.close()
    total = time.monotonic() - started
    rest = (total - (first_s or 0.0)) / max(len(families) - 1, 1)
    print(f"{len(cases)} cases (catalog built in {catalog_s:.1f} s), {len(families)} distinct classes")
    print(f"clean structures: {total:.1f} s in all; the first (process start and imports) {first_s or 0:.1f} s, "
          f"then {rest * 1000:.0f} ms per class")
    print("built: " + ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items())))


if __name__ == "__main__":
    main()
