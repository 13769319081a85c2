"""What a check is, how one case of it runs inside a rank, and how the ranks' outcomes become one verdict.

A check is a function of a `Case` that runs in every rank of a world. It records findings with
`case.fail(...)` and carries on, so every rank reaches the same collectives; values every rank must see
identically go through `case.agree(...)` and are compared by the parent.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import hashlib
import time
import traceback
from collections.abc import Iterable, Iterator
from typing import Any, Callable

from ..compat import (
    NotConvertible,
    build_from_config,
    dtype_kwarg,
    torch_load_refusal,
    uninitialized_memory_filled,
)
from ..errors import exception_line
from ..finding_kinds import make as make_finding
from ..finding_kinds import raised_kind
from ..protocol import RankTask
from ..structure import NoStructure, Structure, StructureOracle, differences, tied_groups
from ..worlds.world import RankContext

SEED = 20260101
BUILDS = "builds"  # a case's metric: every model build it made, what it was and its seconds (timed_build)


@dataclasses.dataclass(frozen=True)
class Check:
    clause: str
    name: str
    fn: Callable[[Case], None]
    layouts: tuple[str | None, ...]
    dtypes: tuple[str, ...]
    world_sizes: tuple[int, ...]
    families: tuple[str, ...] | None  # None: every family; (): no model involved
    summary: str
    timeout_s: float | None = None  # a tighter limit than the run's, for checks that can hang

    @property
    def id(self) -> str:
        return f"{self.clause}-{self.name}"


REGISTRY: dict[str, Check] = {}


def check(clause: str, name: str, *, layouts: tuple[str | None, ...] = (None,), dtypes: tuple[str, ...] = ("fp32",),
          world_sizes: tuple[int, ...] = (1, 2, 3), families: tuple[str, ...] | None = None,
          timeout_s: float | None = None) -> Callable:
    def register(fn: Callable[[Case], None]) -> Callable[[Case], None]:
        summary = (fn.__doc__ or "").strip().splitlines()[0]
        entry = Check(clause, name, fn, layouts, dtypes, world_sizes, families, summary, timeout_s)
        if entry.id in REGISTRY:
            raise ValueError(f"check {entry.id} registered twice")
        REGISTRY[entry.id] = entry
        return fn

    return register


class NotApplicable(Exception):
    """The check does not apply to this case (becomes SKIP with this reason)."""


class SubjectRaised(Exception):
    """The subject raised while doing what the clause asks (becomes FAIL carrying that exception), or a build of
    the subject's is unlike its class before the clause looks further; `findings` say what, structured."""

    def __init__(self, message: str, findings: list[dict[str, Any]]):
        super().__init__(message)
        self.findings = findings


class SpoiledProcess(Exception):
    """A build without ZeRO in this process differs from the class's clean structure, after earlier cases ran
    here: whatever they left behind would decide the verdict, so the case is not judged in this process (the
    runner runs it again in a freshly started world, and records what changed)."""

    def __init__(self, model_class: str, found: list[str]):
        super().__init__("\n".join(found))
        self.model_class, self.found = model_class, found


class Findings:
    """What a check records on its rank (findings, values every rank must agree on, metrics), the objects it
    keeps alive until the case ends, and the builds it compares: the baseline's and the subject's. A subclass
    gives rank, world_size, device (where collectives put tensors), subject, layout, dtype, ds_config,
    checkpoint_path, model_class() and model_config(); a reproducer's stand-in for the case shares all the rest."""

    def __init__(self) -> None:
        self.findings: list[str] = []
        self.found: list[dict[str, Any]] = []  # the findings, structured (finding_kinds), in the same order
        self.agreed: dict[str, str] = {}
        self.metrics: dict[str, Any] = {}
        # Baseline models live until the case ends: freed, their memory could be handed to a subject's
        # uninitialized tensor, which would then hold exactly the baseline's values and pass.
        self._kept: list[Any] = []
        self._closers: list[Callable[[], Any]] = []
        # The config objects of the subject's ZeRO-3 builds: ZeRO-3 stays on while they live (the contract's
        # A2), so the case holds them, until end_zero3() or the case's end, never a local a rename could drop.
        self._zero3_configs: list[Any] = []
        self._subject_built = False  # the subject's ZeRO-3 config was made in this case (_zero3_on)
        # What the clause compared, per kind (parameters, buffers, checkpoint tensors, ...), and how many of each
        # it was expected to (from the clean structure, for what the clause covers): record fields.
        self.compared: dict[str, int] = {}
        self.expected_to_compare: dict[str, int] = {}

    @contextlib.contextmanager
    def timed_build(self, build: str) -> Iterator[None]:
        """Times one model build (`build` says which: side, class, way, dtype, options) into metrics["builds"]:
        what the case spends building rather than asserting, and which of its builds another case makes too."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.metrics.setdefault(BUILDS, []).append({"build": build,
                                                        "seconds": round(time.perf_counter() - started, 3)})

    def on_close(self, closer: Callable[[], Any]) -> None:
        """Runs `closer` when the case ends, whatever its outcome (e.g. destroying an engine)."""
        self._closers.append(closer)

    def close(self) -> None:
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:  # noqa: BLE001 - the case's verdict is already decided
                pass
        self._closers.clear()
        self._kept.clear()
        self._zero3_configs.clear()

    def fail(self, message: str, kind: str, tensor: str = "", expected: Any = "", observed: Any = "") -> None:
        """Records a finding: the message a maintainer reads, and its kind and fields a known issue matches."""
        self.findings.append(message)
        self.found.append(make_finding(kind, tensor, expected, observed, self.rank))

    def expect(self, condition: bool, message: str, kind: str, tensor: str = "", expected: Any = "",
               observed: Any = "") -> bool:
        if not condition:
            self.fail(message, kind, tensor, expected, observed)
        return bool(condition)

    def count(self, kind: str, compared: Iterable[str], expected: Iterable[str],
              reasons: dict[str, str] | None = None) -> None:
        """Records that the clause compared `compared` of the `expected` tensors (or keys, groups) of one kind. An
        expected one left out is listed in the metrics with its reason (`reasons`), or, with none, is a finding:
        comparing less than the class has is not agreeing."""
        done, wanted, reasons = set(compared), set(expected), reasons or {}
        self.compared[kind] = self.compared.get(kind, 0) + len(done & wanted)
        self.expected_to_compare[kind] = self.expected_to_compare.get(kind, 0) + len(wanted)
        skipped = sorted(wanted - done)
        for name in skipped:
            if name in reasons:
                self.metrics.setdefault("not_compared", {}).setdefault(reasons[name], []).append(name)
        unexplained = [name for name in skipped if name not in reasons]
        if unexplained:
            self.fail(f"compared {len(done & wanted)} of the {len(wanted)} {kind} expected (rank {self.rank}); not "
                      f"compared, for no stated reason: {', '.join(unexplained[:8])}"
                      f"{' ...' if len(unexplained) > 8 else ''}", "compared_less", ", ".join(unexplained[:8]),
                      f"{len(wanted)} {kind}", f"{len(done & wanted)} compared")

    def agree(self, key: str, value: Any) -> None:
        """Every rank must record the same value under `key` (tensors are compared by content)."""
        self.agreed[key] = describe_value(value)

    @contextlib.contextmanager
    def subject_call(self, what: str) -> Iterator[None]:
        try:
            yield
        except (NotApplicable, SubjectRaised):
            raise
        except NotConvertible as exc:
            raise NotApplicable(f"{self.subject.name} cannot load this checkpoint: {exc}") from None
        except Exception as exc:  # any exception from the subject is the finding
            tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]).strip()
            raised = f"{type(exc).__name__}: {exc}"
            finding = make_finding(raised_kind(f"{what}: {raised}"), "", f"{what} without an exception", raised,
                                   self.rank)
            raise SubjectRaised(f"{self.subject.name} raised during {what}: {raised}\n{tail}", [finding]) from exc

    @contextlib.contextmanager
    def baseline_call(self, what: str) -> Iterator[None]:
        """The same call without ZeRO: where it raises, the subject has nothing to be compared with (SKIP
        saying so; every rank raises alike, so none is left waiting in a collective)."""
        try:
            yield
        except (NotApplicable, SubjectRaised):
            raise
        except Exception as exc:  # noqa: BLE001 - the baseline's own failure is not the subject's
            raise NotApplicable(f"without ZeRO, {what} raises: {exception_line(exc)}") from None

    def keep(self, obj: Any) -> Any:
        """Keeps `obj` alive until the case ends (a config object, a baseline model)."""
        self._kept.append(obj)
        return obj

    # --- what a build is judged against (Case compares builds with the class's clean structure) --------
    def baseline_agrees(self, model: Any, what: str, dtypes: bool, options: dict[str, Any] | None = None) -> None:
        """Where the case has a clean structure (Case), a baseline unlike it is not judged against."""

    def baseline_raised(self, error: str) -> None:
        """Where the case has a clean structure (Case), a baseline that raises in a process unlike a fresh one is
        not taken for the class's own failure."""

    def _subject_agrees(self, model: Any, what: str, options: dict[str, Any] | None = None) -> None:
        """Where the case has a clean structure (Case), a subject's build unlike it FAILs."""

    def clean_parameters(self) -> dict[str, tuple[int, ...]]:
        """name -> shape of every parameter of the case's class, built in this process on the meta device before
        any ZeRO-3 build in it (a reproducer's own process); Case answers from the clean structure."""
        import torch

        with torch.device("meta"):
            model = build_from_config(self.model_class(), self.model_config())
        return {name: tuple(p.shape) for name, p in model.named_parameters()}

    def clean_names(self, kind: str, fallback: Iterable[str]) -> set[str]:
        """The names of one kind ("parameters", "state dict", "tied groups") a clause covers: `fallback` (the
        baseline's) here; Case answers from the clean structure."""
        return set(fallback)

    # --- the baseline's and the subject's builds (a subclass gives model_class, model_config) ------
    def seed(self, offset: int = 0) -> None:
        import torch

        torch.manual_seed(SEED + offset)

    def baseline_from_config(self, seed_offset: int = 0, dtype: Any = None) -> Any:
        """The case's model built with no ZeRO config alive (the baseline)."""
        self.seed(seed_offset)
        cls, config = self.model_class(), self.model_config()
        try:
            with self.timed_build(f"baseline {cls.__name__}.from_config dtype={dtype} seed+{seed_offset}"), \
                    uninitialized_memory_filled():
                model = build_from_config(cls, config, dtype)
        except Exception as exc:  # noqa: BLE001 - without ZeRO there is no contract to check
            self.baseline_raised(exception_line(exc))
            raise NotApplicable(f"{cls.__name__} does not build from this config even without ZeRO: "
                                f"{exception_line(exc)}") from None
        self.baseline_agrees(model, "from_config", dtypes=dtype is None)
        return self.keep(model)

    def require_loadable_layout(self) -> None:
        """A layout the installed transformers refuses to read here cannot be checked: neither baseline
        nor subject can load it (SKIP with transformers' own reason)."""
        if self.layout == "bin":
            self.require_bin_loading("the checkpoint is a .bin file")

    def require_bin_loading(self, why: str) -> None:
        """SKIP (saying `why` the check needs it) where transformers refuses to read .bin checkpoints."""
        import torch
        import transformers

        refusal = torch_load_refusal()
        if refusal:
            raise NotApplicable(f"transformers {transformers.__version__} reads no .bin checkpoint with torch "
                                f"{torch.__version__} ({why}): {refusal}")

    def baseline_from_pretrained(self, dtype: Any = None) -> tuple[Any, dict[str, Any]]:
        self.require_loadable_layout()
        self.seed()
        cls = self.model_class()
        try:
            with self.timed_build(f"baseline {cls.__name__}.from_pretrained({self.layout}) dtype={dtype}"), \
                    uninitialized_memory_filled():
                model, info = cls.from_pretrained(self.checkpoint_path, output_loading_info=True,
                                                  trust_remote_code=False, **dtype_kwarg(dtype))
        except Exception as exc:  # noqa: BLE001 - without ZeRO there is no contract to check
            self.baseline_raised(exception_line(exc))
            raise NotApplicable(f"{cls.__name__} does not load this checkpoint even without ZeRO: "
                                f"{exception_line(exc)}") from None
        # A checkpoint's own dtype may differ from the config's default: only from_config's dtypes are known.
        self.baseline_agrees(model, "from_pretrained", dtypes=False)
        self.note_kernelized("baseline", model)
        return self.keep(model), info

    def note_kernelized(self, build: str, model: Any) -> None:
        """Records whether from_pretrained kernelized `model` (transformers >= 5.25 swaps layers' forwards for
        the `kernels` package's by default): builds that differ there differ in more than ZeRO-3."""
        if hasattr(type(model), "use_kernels"):
            self.metrics.setdefault("kernelized", {})[build] = bool(model.use_kernels)

    def _zero3_on(self, ds_config: dict[str, Any]) -> None:
        """The subject's config object for `ds_config`, held by the case: ZeRO-3 is on until end_zero3()."""
        self._subject_built = True
        with self.subject_call("config construction"):
            self._zero3_configs.append(self.subject.make_config(ds_config))

    def end_zero3(self) -> None:
        """Drops the config objects of this case's ZeRO-3 builds: ZeRO-3 is off from here (a build without
        ZeRO, or the next build's own config). The models built under them stay what they are."""
        self._zero3_configs.clear()
        gc.collect()

    def zero3_from_config(self, dtype: Any = None) -> Any:
        """The model the subject builds under its stage-3 config; the config stays alive until end_zero3()
        or the case's end. `dtype` as the baseline it is compared with was given it: the builds differ in
        ZeRO-3 only."""
        self._zero3_on(self.ds_config)
        self.seed()
        cls = self.model_class()
        with self.timed_build(f"zero3 {cls.__name__}.from_config dtype={dtype}"), self.subject_call("from_config"):
            model = self.subject.from_config(cls, self.model_config(), dtype)
        self._subject_agrees(model, "from_config")
        return model

    def zero3_from_pretrained(self, model_class: Any = None, path: Any = None,
                              ds_config: dict[str, Any] | None = None, what: str = "", dtype: Any = None,
                              **options: Any) -> tuple[Any, dict[str, Any]]:
        """(model, loading report) from the subject under its stage-3 config, which stays alive until
        end_zero3() or the case's end: the case's class, checkpoint and config unless given; `dtype` as the
        baseline's; `options` are from_pretrained's, `what` names them in findings."""
        self.require_loadable_layout()
        self._zero3_on(self.ds_config if ds_config is None else ds_config)
        self.seed()
        cls = model_class or self.model_class()
        build = (f"zero3 {cls.__name__}.from_pretrained({what or self.layout}) dtype={dtype}"
                 + (f" path={path}" if path else "") + (" config=own" if ds_config is not None else ""))
        with self.timed_build(build), self.subject_call(f"from_pretrained({what or self.layout})"):
            model, report = self.subject.from_pretrained(cls, str(path or self.checkpoint_path), dtype, **options)
        self._subject_agrees(model, f"from_pretrained({what or self.layout})", options)
        self.note_kernelized("subject", model)
        return model, report


class Case(Findings):
    """One check applied to one (subject, model, layout, world size, dtype), as seen from one rank."""

    def __init__(self, ctx: RankContext, task: RankTask):
        from ..subjects import get_subject
        from ..zoo import Family

        super().__init__()
        self.ctx = ctx
        self.rank, self.world_size = ctx.rank, ctx.world_size
        self.subject_name: str = task.subject
        self.subject_module: str = task.subject_module  # the module that registers the subject
        self.subject = get_subject(self.subject_name, self.subject_module)
        self.family: Family | None = Family(**task.family) if task.family else None
        self.layout: str | None = task.layout
        self.dtype: str = task.dtype
        self.ds_config: dict[str, Any] = task.ds_config
        self.checkpoint_path: str | None = self._checkpoint_here(task.checkpoint)
        self.device = ctx.device
        found = task.structure
        # The class's clean structure (structure.py), where the case builds a family's model; None where it
        # builds none.
        self.structure: Structure | NoStructure | None = None if found is None else \
            NoStructure(found["error"]) if "error" in found else Structure.from_dict(found)
        self.earlier_cases = 0  # how many cases this process ran before this one (execute sets it)

    def _checkpoint_here(self, path: str | None) -> str | None:
        """The case's checkpoint on this rank's node. The run wrote it on every node before its first case
        (execution/checkpoints.py): a launched world's node may share no files with rank 0's and has its own
        copy, the same wherever it is written. A user's checkpoint is the path given, on every node."""
        if path is None or self.family is None or not self.layout or self.family.source_dir:
            return path
        from ..zoo import checkpoint_dir

        here = checkpoint_dir(self.family, self.layout)
        if not (here / "config.json").is_file():
            raise RuntimeError(f"the {self.layout} checkpoint of {self.family.name} is not on this rank's node "
                               f"({here}): a run writes every node's checkpoints before its first case")
        return str(here)

    # --- models ---------------------------------------------------------------------------------
    def model_class(self) -> Any:
        from ..zoo import auto_class

        return auto_class(self.require_family().auto_class)

    def require_family(self) -> Any:
        if self.family is None:
            raise RuntimeError("this check needs a model family")
        return self.family

    def model_config(self) -> Any:
        from ..zoo import FamilyUnavailable

        try:
            return self.require_family().make_config()
        except FamilyUnavailable as exc:
            raise NotApplicable(str(exc)) from None

    # --- the builds compared with the clean structure, before any clause's assertions -------------
    def clean_structure(self, family: Any = None) -> Structure:
        """The clean structure of `family`'s class (the case's where not given: the runner sent it); one the
        case was not sent is derived in a process of this process's own. A class that has none (it builds in
        no fresh process) is an ERROR naming it, never a verdict."""
        found = self.structure if family is None else None
        if found is None:
            found = _oracle().get(family or self.require_family())
        if isinstance(found, NoStructure):
            raise RuntimeError(f"no clean structure to judge builds against: {found}")
        return found

    def baseline_agrees(self, model: Any, what: str, dtypes: bool, options: dict[str, Any] | None = None) -> None:
        """A baseline unlike the clean structure is no baseline: after this case's own ZeRO-3 build, it is the
        subject's leftover (FAIL); after earlier cases, the process is spoiled (not judged here); in a process
        that ran nothing before, the harness cannot reproduce the class here (SKIP saying so)."""
        if self.structure is None or not self.builds_case_structure(model, options):
            return
        structure = self.clean_structure()
        found = differences(structure, model, f"the baseline ({what}, without ZeRO)", dtypes, partitioned=False)
        tied = tied_groups(model)
        if tuple(tied) != structure.tied:
            found.append(f"the baseline ({what}, without ZeRO) ties {tied}, its clean structure {list(structure.tied)}")
        if not found:
            return
        self._not_fresh(structure, found)
        raise NotApplicable(f"in a process that ran no case before, {structure.model_class} built without ZeRO is "
                            f"not its clean structure ({structure.built_on} build in a fresh process): "
                            f"{'; '.join(found)}; nothing faithful to compare with")

    def _not_fresh(self, structure: Structure, found: list[str]) -> None:
        """A build without ZeRO unlike the clean structure (`found`), after this case's own ZeRO-3 build: the
        subject's leftover (FAIL); after earlier cases: a spoiled process (not judged here)."""
        if self._subject_built:
            raise SubjectRaised(f"after {self.subject.name}'s ZeRO-3 build in this case, a build without ZeRO is "
                                f"not what {structure.model_class} builds in a fresh process:\n" + "\n".join(found),
                                [make_finding("leftover", structure.model_class,
                                              "the class's clean structure, built without ZeRO", "; ".join(found),
                                              self.rank)])
        if self.earlier_cases:
            raise SpoiledProcess(structure.model_class, found)

    def baseline_raised(self, error: str) -> None:
        """A baseline that raises after ZeRO-3 builds in this process (the case's own or earlier cases') is the
        class's own failure only if the class still builds here as in a fresh process: it is built again here
        without ZeRO, on the device its clean structure was built on, and compared with it."""
        if not isinstance(self.structure, Structure) or not (self.earlier_cases or self._subject_built):
            return
        import torch

        structure = self.clean_structure()
        what = "the case's class built here again (without ZeRO, after its baseline raised)"
        try:
            with torch.device("meta") if structure.built_on.startswith("meta") else contextlib.nullcontext():
                probe = build_from_config(self.model_class(), self.model_config())
            found = differences(structure, probe, what, dtypes=False, partitioned=False)
        except Exception as exc:  # noqa: BLE001 - it built in a fresh process: raising here is the difference
            found = [f"{what} raises: {exception_line(exc)}"]
        if found:
            self._not_fresh(structure, [f"the baseline raised: {error}", *found])

    def builds_case_structure(self, model: Any, options: dict[str, Any] | None) -> bool:
        """Whether `model` is the case's class built from the case's config: loading options that set the
        config (num_labels, ...) make another structure; a dtype changes no name or shape."""
        changed = [key for key in options or {} if key not in ("dtype", "torch_dtype") and hasattr(model.config, key)]
        return isinstance(self.structure, NoStructure) or (
            type(model).__name__ == self.structure.model_class and not changed)

    def _subject_agrees(self, model: Any, what: str, options: dict[str, Any] | None = None) -> None:
        """The subject's build has every parameter and persistent buffer of the clean structure, of its shape
        (partitioned: its ds_shape), and nothing else (FAIL otherwise, before the clause looks further)."""
        if self.structure is None or not self.builds_case_structure(model, options):
            return
        found = differences(self.clean_structure(), model, f"{self.subject.name}'s ZeRO-3 model ({what})", dtypes=False,
                            partitioned=True)
        if found:
            raise SubjectRaised("\n".join(found), [make_finding(*d.fields, rank=self.rank) for d in found])

    def clean_parameters(self) -> dict[str, tuple[int, ...]]:
        return {name: shape for name, (shape, _) in self.clean_structure().parameters.items()}

    def clean_names(self, kind: str, fallback: Iterable[str]) -> set[str]:
        """The names of one kind the clean structure has ("parameters", "state dict", "tied groups"), where the
        case has one; `fallback` (the baseline's) elsewhere."""
        if not isinstance(self.structure, Structure):
            return set(fallback)
        structure = self.structure
        return set(structure.parameters) if kind == "parameters" else set(map(str, structure.tied)) \
            if kind == "tied groups" else structure.state_dict_keys()


_structures: list[StructureOracle] = []  # this process's own oracle, for structures no case was sent


def _oracle() -> StructureOracle:
    if not _structures:
        _structures.append(StructureOracle())
    return _structures[0]


def describe_value(value: Any) -> str:
    try:
        import torch

        if isinstance(value, torch.Tensor):
            data = value.detach().cpu().contiguous().reshape(-1)  # 0-dim tensors cannot be viewed as bytes
            digest = hashlib.sha1(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"").hexdigest()[:12]
            total = float(data.double().sum()) if data.numel() else 0.0
            return f"tensor{tuple(value.shape)} {data.dtype} sum={total:.9g} sha1={digest}"
    except ImportError:
        pass
    return repr(value)


# The user's config's own optimizer, scheduler and global batch size give way to the check's: one sample per step.
NEUTRALIZED = ("optimizer", "scheduler", "train_batch_size")


def engine_config(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The config for an engine a check builds around a model: one micro-batch of one, no optimizer of its own."""
    config = {key: value for key, value in copy.deepcopy(ds_config).items() if key not in NEUTRALIZED}
    config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    return config


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)
