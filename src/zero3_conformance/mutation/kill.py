"""`zero3-conformance mutate`: every mutant of the reference against every clause — the kill matrix.

A mutant is killed by a clause when one of the clause's cases FAILs, times out or crashes for the mutant
while the reference PASSes the same case (checked for every killing case, so a clause the reference
itself cannot pass here kills nothing). P3 builds a 263 MB model per case, so it runs
only for the mutants that name it as their killer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from ..checks.registry import load_checks
from ..contract import clause_key
from ..execution.runner import Runner
from ..report.kill_matrix import render
from ..results import CRASH, FAIL, PASS, TIMEOUT, write_whole
from .mutants import MUTANTS, killing_cases

KILLING = (FAIL, TIMEOUT, CRASH)
COSTLY = ("P3",)


def _targets(name: str, clauses: Sequence[str]) -> list[str]:
    declared = MUTANTS[name].kills
    wanted = [c for c in clauses if c not in COSTLY]
    return wanted + [t for t in declared if t.split("-")[0] in COSTLY and t.split("-")[0] in clauses]


def kill_matrix(runner: Runner, names: Sequence[str], clauses: Sequence[str] | None = None,
                progress: Callable[[str, str, dict], None] = lambda *a: None) -> dict[str, Any]:
    """{"mutants": {name: {"declared": [...], "clauses": {target: outcome}}}}; an outcome has `verdict`
    (killed / survived / not applicable / reference fails), the statuses seen and the killing cases."""
    clauses = sorted(clauses or {c.clause for c in load_checks().values()}, key=clause_key)
    matrix: dict[str, Any] = {"clauses": clauses, "mutants": {}}
    for name in names:
        row: dict[str, Any] = {}
        for target in _targets(name, clauses):
            cases = killing_cases(name, target)
            if not cases:
                row[target] = {"verdict": "not applicable", "statuses": {}, "by": []}
                progress(name, target, row[target])
                continue
            runner.checkpoints.prepare(cases)
            records = [runner.run_case(case) for case in cases]
            runner.pool.close()  # a mutant may change its worlds' processes for good: no other subject runs there
            killers = [r for r in records if r.status in KILLING]
            outcome: dict[str, Any] = {"statuses": _count(r.status for r in records),
                                       "by": [r.case_id for r in killers], "verdict": "survived"}
            if killers:
                killer_ids = {r.key.with_subject("reference").id for r in killers}
                reference = [runner.run_case(c) for c in killing_cases(name, target, subject="reference")
                             if c.id in killer_ids]
                failing = [r.case_id for r in reference if r.status != PASS]
                outcome["verdict"] = "reference fails" if failing else "killed"
                if failing:
                    outcome["reference_failing"] = failing
                outcome["message"] = killers[0].message[:600]
            row[target] = outcome
            progress(name, target, outcome)
        matrix["mutants"][name] = {"doc": " ".join((MUTANTS[name].__doc__ or "").split()),
                                   "declared": list(MUTANTS[name].kills), "clauses": row}
    return matrix


def _count(statuses: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def write(out: Path, matrix: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_whole(out / "kill-matrix.json", json.dumps(matrix, indent=2, sort_keys=True) + "\n")
    write_whole(out / "kill-matrix.md", render(matrix))
