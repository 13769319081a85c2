"""Which checks run for which subjects, models, layouts, world sizes and dtypes: the cases of a run.

The CLI and the pytest suite both take their cases from here, so they run identical checks.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional, Sequence

from .errors import UsageError
from .mutants import MUTANTS
from .registry import load_checks
from .subjects import SUBJECTS
from .zoo import FAMILIES, Family, detect_layout

DEFAULT_WORLD_SIZES = (1, 2, 3)


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    check_id: str
    clause: str
    check: str
    subject: str
    family: Optional[Family]
    layout: Optional[str]
    world_size: int
    dtype: str
    timeout_s: Optional[float] = None  # the check's own limit, if tighter than the run's

    @property
    def model(self) -> str:
        return self.family.name if self.family else "none"

    @property
    def id(self) -> str:
        parts = [self.subject, self.model] + ([self.layout] if self.layout else []) + \
                [f"ws{self.world_size}", self.dtype]
        return f"{self.check_id}[{'-'.join(parts)}]"

    def payload(self, ds_config: dict[str, Any], checkpoint: Optional[str]) -> dict[str, Any]:
        return {"check": self.check_id, "subject": self.subject,
                "family": dataclasses.asdict(self.family) if self.family else None,
                "layout": self.layout, "dtype": self.dtype, "ds_config": ds_config, "checkpoint": checkpoint}


def _choose(kind: str, wanted: Optional[Sequence[str]], known: Iterable[str]) -> list[str]:
    known = list(known)
    if not wanted:
        return known
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise UsageError(f"unknown {kind} {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return [k for k in known if k in wanted]


def build_cases(subjects: Optional[Sequence[str]] = None, models: Optional[Sequence[str]] = None,
                clauses: Optional[Sequence[str]] = None, world_sizes: Optional[Sequence[int]] = None,
                user_model: Optional[Family] = None) -> list[CaseSpec]:
    registry = load_checks()
    # Mutants (broken variants of the reference, for the harness's self-tests) only run when named.
    known_subjects = [*SUBJECTS, *(f"mutant:{m}" for m in MUTANTS)]
    chosen_subjects = _choose("subject", subjects, known_subjects) if subjects else list(SUBJECTS)
    all_clauses = sorted({c.clause for c in registry.values()}, key=lambda c: (c[0], int(c[1:])))
    chosen_clauses = set(_choose("clause", clauses, all_clauses))
    if user_model is not None:
        families = [user_model]
    else:
        families = [FAMILIES[n] for n in _choose("model", models, FAMILIES)]
    sizes = tuple(world_sizes) if world_sizes else DEFAULT_WORLD_SIZES
    bad = [n for n in sizes if not 1 <= n <= 8]
    if bad:
        raise UsageError(f"invalid world size {bad[0]}: must be between 1 and 8")
    cases = []
    for entry in registry.values():
        if entry.clause not in chosen_clauses:
            continue
        if entry.families == ():
            targets: list[Optional[Family]] = [None]
        elif user_model is not None:
            targets = [user_model]
        else:
            targets = [f for f in families if entry.families is None or f.name in entry.families]
        for family in targets:
            layouts: Sequence[Optional[str]] = entry.layouts
            if user_model is not None and entry.layouts != (None,):
                layouts = [detect_layout(user_model.source_dir)]  # a user's checkpoint has one layout
            for subject in chosen_subjects:
                for layout in layouts:
                    for world_size in entry.world_sizes:
                        if world_size not in sizes:
                            continue
                        for dtype in entry.dtypes:
                            cases.append(CaseSpec(entry.id, entry.clause, entry.name, subject, family, layout,
                                                  world_size, dtype, entry.timeout_s))
    return cases
