"""Which checks run for which subjects, models, layouts, world sizes and dtypes: the cases of a run.

The CLI and the pytest suite both take their cases from here, so they run identical checks.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from .casekey import CaseKey
from .checks.registry import load_checks
from .contract import clause_key
from .dsconfig import PLAIN, VARIANTS
from .errors import UsageError
from .protocol import RankTask
from .subjects import DEFAULT_SUBJECTS, SUBJECTS
from .zoo import FAMILIES, Family, detect_layout, sweep_family

DEFAULT_WORLD_SIZES = (1, 2, 3)
# The architecture sweep checks each of a type's classes for the clauses about that class: construction and
# loading on the base class; the loading report and a construction that leaves no trace on every class; a
# base checkpoint's missing weights in every head; every head's values loaded from a checkpoint of its own
# (tensors the base class lacks are compared nowhere else); ties, numerics and saving on the head with a loss.
SWEEP_ROLES = {"base": ("P1", "P2", "P5", "G1", "G4", "G6", "G8"), "every class": ("P4", "G7"), "heads": ("G3",),
               "own checkpoint": ("G1",), "loss head": ("G2", "N1", "N2", "N3", "N4", "S1", "S2")}
# Layouts are the zoo's concern (its families load each of them); the sweep's is the architecture.
SWEEP_LAYOUTS = ("safetensors",)
SWEEP_WORLD_SIZES = (2,)
MAX_WORLD_SIZE = 8  # of a world the harness starts on this machine
ALL_ARCHITECTURES = "all"


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    check_id: str
    clause: str
    check: str
    subject: str
    family: Family | None
    layout: str | None
    world_size: int
    dtype: str
    timeout_s: float | None = None  # the check's own limit, if tighter than the run's
    skip: str = ""  # why the case cannot run here (a type that does not build tiny): SKIP without a world
    variant: str = PLAIN  # the ZeRO-3 configuration variant (dsconfig.VARIANTS)

    @property
    def model(self) -> str:
        return self.family.name if self.family else "none"

    @property
    def head(self) -> str | None:
        """The class the case builds (a family's one class; for a sweep type, one of its heads)."""
        return self.family.auto_class if self.family else None

    @property
    def label(self) -> str:
        """The class the case builds, as its id names it (a family, or a sweep type with its head)."""
        return self.family.label if self.family else "none"

    @property
    def key(self) -> CaseKey:
        return CaseKey(self.clause, self.check, self.subject, self.model, self.head, self.layout, self.world_size,
                       self.dtype, self.variant, sweep=bool(self.family and self.family.model_type))

    @property
    def id(self) -> str:
        return self.key.id

    def task(self, ds_config: dict[str, Any], checkpoint: str | None,
             structure: dict[str, Any] | None = None) -> RankTask:
        # The module that registers the subject: a rank imports it to find the subject by name.
        return RankTask(check=self.check_id, subject=self.subject, subject_module=SUBJECTS[self.subject].__module__,
                        family=dataclasses.asdict(self.family) if self.family else None, layout=self.layout,
                        dtype=self.dtype, ds_config=ds_config, checkpoint=checkpoint, variant=self.variant,
                        structure=structure)


def _choose(kind: str, wanted: Sequence[str] | None, known: Iterable[str]) -> list[str]:
    known = list(known)
    if not wanted:
        return known
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise UsageError(f"unknown {kind} {', '.join(map(repr, unknown))}; known: {', '.join(known)}")
    return [k for k in known if k in wanted]


@dataclasses.dataclass(frozen=True)
class SweepTarget:
    """One class of a sweep type, with the clauses it is checked for; `skip` where the type does not build."""
    family: Family
    clauses: frozenset[str]
    skip: str = ""


def sweep_targets(types: Sequence[str]) -> list[SweepTarget]:
    """Each type's classes and their clauses (SWEEP_ROLES). A type that does not build tiny keeps its base
    class's cases, every one a SKIP that says why, so no type disappears from a run."""
    from .architectures import base_class, foreign_config_reason, head_classes, loss_head, survey

    targets = []
    for surveyed in survey(types):
        model_type = surveyed.model_type
        base, loss = base_class(model_type), loss_head(model_type)
        if not surveyed.built:
            clauses = frozenset(SWEEP_ROLES["base"] + SWEEP_ROLES["every class"])
            targets.append(SweepTarget(sweep_family(model_type, base), clauses, f"{model_type}: {surveyed.reason}"))
            continue
        heads = head_classes(model_type)
        if loss is None:  # the numerics and saving clauses show up as SKIPs saying why, not as nothing
            targets.append(SweepTarget(sweep_family(model_type, base), frozenset(SWEEP_ROLES["loss head"]),
                                       f"{model_type}: none of its classes ({', '.join(heads)}) is a head the "
                                       f"harness makes a loss for (causal / seq2seq / masked / multimodal LM, "
                                       f"sequence, image or audio classification)"))
        for head in heads:
            roles = ["every class", "base" if head == base else "heads"]
            clauses = frozenset(clause for role in roles for clause in SWEEP_ROLES[role])
            foreign = foreign_config_reason(model_type, head)
            skip = f"{model_type}: {foreign}" if foreign else ""
            targets.append(SweepTarget(sweep_family(model_type, head), clauses, skip))
            if head == base:
                continue
            # From a checkpoint of the head itself: every weight loaded, none left to its init.
            own = SWEEP_ROLES["own checkpoint"] + (SWEEP_ROLES["loss head"] if head == loss else ())
            targets.append(SweepTarget(sweep_family(model_type, head, checkpoint_class=head), frozenset(own), skip))
        if loss == base:  # a type whose base class is its loss head (rare): no head target carries the clauses
            targets.append(SweepTarget(sweep_family(model_type, loss, checkpoint_class=loss),
                                       frozenset(SWEEP_ROLES["loss head"])))
    return targets


def chosen_architectures(wanted: Sequence[str]) -> list[str]:
    """The model types named (or every one, for `all`), each known to the installed transformers."""
    import transformers

    from .architectures import model_types

    known = model_types()
    if list(wanted) == [ALL_ARCHITECTURES]:
        return known
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise UsageError(f"unknown model type {', '.join(map(repr, unknown))}: transformers {transformers.__version__} "
                         f"has no AutoModel class for it (`zero3-conformance architectures` lists the "
                         f"{len(known)} it has)")
    return list(dict.fromkeys(wanted))


def build_cases(subjects: Sequence[str] | None = None, models: Sequence[str] | None = None,
                clauses: Sequence[str] | None = None, world_sizes: Sequence[int] | None = None,
                user_model: Family | None = None, architectures: Sequence[str] | None = None,
                launched_size: int | None = None, variants: Sequence[str] | None = None) -> list[CaseSpec]:
    """The cases of a selection, once per ZeRO-3 configuration variant (default: the plain one);
    `launched_size`: every case at the size of the launched world it runs in."""
    registry = load_checks()
    chosen_subjects = _choose("subject", subjects, SUBJECTS) if subjects else list(DEFAULT_SUBJECTS)
    all_clauses = sorted({c.clause for c in registry.values()}, key=clause_key)
    chosen_clauses = set(_choose("clause", clauses, all_clauses))
    if user_model is not None:
        families = [user_model]
    elif architectures and not models:
        families = []  # the sweep alone; the zoo joins it when --models names families too
    else:
        families = [FAMILIES[n] for n in _choose("model", models, FAMILIES)]
    bad = [n for n in world_sizes or () if not 1 <= n <= MAX_WORLD_SIZE]
    if bad:
        raise UsageError(f"invalid world size {bad[0]}: must be between 1 and {MAX_WORLD_SIZE}")
    sizes = (launched_size,) if launched_size else tuple(world_sizes or ())
    cases = _zoo_cases(registry, chosen_subjects, chosen_clauses, families, sizes, user_model)
    if architectures:
        sweep = sweep_targets(chosen_architectures(architectures))
        cases += _sweep_cases(registry, chosen_subjects, chosen_clauses, sweep, sizes)
    chosen_variants = _choose("variant", variants, VARIANTS) if variants else [PLAIN]
    return [dataclasses.replace(case, variant=variant) for variant in chosen_variants for case in cases]


def _world_sizes(entry: Any, asked: tuple[int, ...], default: tuple[int, ...]) -> list[tuple[int, str]]:
    """(world size, why it cannot run there or "") for a check. A check's own sizes are its default; sizes
    asked for (or a launched world's) run every check that can run at that size: one whose smallest size is 2
    compares ranks with each other. Where none asked for can, one SKIP says so."""
    if not asked:
        return [(size, "") for size in entry.world_sizes if size in default]
    smallest = min(entry.world_sizes)
    fitting = [(size, "") for size in asked if size >= smallest]
    return fitting or [(min(asked), f"{entry.id} needs a world of at least {smallest} ranks")]


def _sweep_cases(registry: dict[str, Any], subjects: list[str], clauses: set[str], targets: list[SweepTarget],
                 sizes: tuple[int, ...]) -> list[CaseSpec]:
    cases = []
    for target in targets:  # one type's cases together: its modules imported once, its results in one place
        for entry in registry.values():
            if entry.clause not in clauses or entry.clause not in target.clauses or entry.families == ():
                continue
            layouts = [layout for layout in entry.layouts if layout is None or layout in SWEEP_LAYOUTS]
            for subject, layout, (world_size, unfit), dtype in itertools.product(
                    subjects, layouts, _world_sizes(entry, sizes, SWEEP_WORLD_SIZES), entry.dtypes):
                cases.append(CaseSpec(entry.id, entry.clause, entry.name, subject, target.family, layout,
                                      world_size, dtype, entry.timeout_s, target.skip or unfit))
    return cases


def _zoo_cases(registry: dict[str, Any], chosen_subjects: list[str], chosen_clauses: set[str],
               families: list[Family], sizes: tuple[int, ...], user_model: Family | None) -> list[CaseSpec]:
    cases = []
    for entry in registry.values():
        if entry.clause not in chosen_clauses:
            continue
        if entry.families == ():
            if not families and user_model is None:
                continue  # a sweep alone runs the checks about models only
            targets: list[Family | None] = [None]
        elif user_model is not None:
            targets = [user_model]
        else:
            targets = [f for f in families if entry.families is None or f.name in entry.families]
        for family in targets:
            layouts: Sequence[str | None] = entry.layouts
            if user_model is not None and entry.layouts != (None,):
                layouts = [detect_layout(user_model.source_dir)]  # a user's checkpoint has one layout
            for subject in chosen_subjects:
                for layout in layouts:
                    for world_size, unfit in _world_sizes(entry, sizes, DEFAULT_WORLD_SIZES):
                        for dtype in entry.dtypes:
                            cases.append(CaseSpec(entry.id, entry.clause, entry.name, subject, family, layout,
                                                  world_size, dtype, entry.timeout_s, unfit))
    return cases
