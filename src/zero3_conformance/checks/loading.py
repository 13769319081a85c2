"""G8 — loading options behave as without ZeRO.

Each check gives transformers' own from_pretrained options to the subject under ZeRO-3 and to transformers
without ZeRO, on checkpoints derived from the case's own, and compares what the two calls give: the loading
report, every gathered tensor (what was loaded bit for bit, in the dtype the config's precision gives it; what
was initialized instead by the init's statistics) and the config attributes the options set. Where the call
without ZeRO raises, the subject must raise too. Every baseline is loaded before the first ZeRO-3 config object
exists.

Derived checkpoints are written by every rank into its own scratch directory, byte for byte the same on
each, so ranks on different nodes need no shared files.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..architectures import base_class, foreign_config_reason, head_classes, labelled_head, loss_head
from ..compat import build_from_config, concrete_class, dtype_kwarg, uninitialized_memory_filled
from ..dsconfig import precision, torch_dtype, with_dtype
from ..errors import exception_line
from ..finding_kinds import Found
from ..reference.checkpoint import CheckpointReader, with_variant
from ..zoo import auto_class, seeded_checkpoint_model
from .base import Case, NotApplicable, SubjectRaised, check
from .gathered import baseline_matches_file, compare_all, gathered_state, initialized_keys, report_differences
from .tensors import exact_mismatch, full_parameters, init_mismatch

# The variant and .bin copies hold the default file's values moved by this much: exactly representable in
# every floating dtype, so a loader that reads the wrong file is off by it everywhere.
SHIFT = 0.125
VARIANT = "conformance"
LEGACY_PREFIX = "legacy."
EXTRA_LABELS = 2  # a label head loaded with this many more labels than its checkpoint has


@dataclasses.dataclass
class Load:
    """One from_pretrained call, made without ZeRO and then by the subject under ZeRO-3."""
    what: str  # the options as the finding names them
    model_class: Any
    path: Path
    options: dict[str, Any]
    ds_config: dict[str, Any] | None = None  # the case's own unless the options need another precision
    reader: CheckpointReader | None = None  # the file the options select, to see the baseline read it
    baseline: Any = None
    expected: dict[str, Any] | None = None  # the baseline's loading report
    tensors: dict[str, Any] | None = None  # the baseline's tensors as ZeRO-3 holds them (_as_partitioned)
    baseline_error: str = ""
    # tensors the file gives two keys for, each with the reason it is not compared (_loading_onto_one)
    ambiguous: dict[str, str] = dataclasses.field(default_factory=dict)


def _scratch(case: Case) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"zero3-conformance-g8-rank{case.rank}-"))
    case.on_close(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


def _original_tensors(case: Case) -> dict[str, Any]:
    reader = CheckpointReader(Path(case.checkpoint_path))
    return {key: reader.get(key).clone() for key in reader.keys()}


def _shifted(tensors: dict[str, Any], by: float) -> dict[str, Any]:
    return {k: t + by if t.is_floating_point() else t for k, t in tensors.items()}


def _derived_checkpoint(case: Case, name: str, files: dict[str, dict[str, Any]],
                        config_changes: dict[str, Any] | None = None) -> Path:
    """The case's checkpoint directory (config and any other files) with its weights replaced by `files`
    (file name -> tensors), and `config_changes` written into config.json."""
    import json

    import torch
    from safetensors.torch import save_file

    target = _scratch(case) / name
    shutil.copytree(case.checkpoint_path, target,
                    ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.index.json"))
    if config_changes:
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, **config_changes}, indent=2))
    for file_name, tensors in files.items():
        contiguous = {k: t.contiguous() for k, t in tensors.items()}
        if file_name.endswith(".bin"):
            torch.save(contiguous, target / file_name)
        else:
            save_file(contiguous, str(target / file_name), metadata={"format": "pt"})
    return target


def _saved_checkpoint(case: Case, name: str, class_name: str, config: Any) -> Path:
    """A checkpoint of another class of the case's type, written as the harness writes every checkpoint."""
    return _saved(case, name, class_name, config)[0]


def _saved(case: Case, name: str, class_name: str, config: Any) -> tuple[Path, Any]:
    """_saved_checkpoint, and the model it was written from."""

    target = _scratch(case) / name
    try:
        model = seeded_checkpoint_model(class_name, config)
    except Exception as exc:  # noqa: BLE001 - a class that does not build without ZeRO has nothing to compare
        raise NotApplicable(f"{class_name} does not build without ZeRO: {exception_line(exc)}") from None
    # transformers writes only on rank 0 of an initialized process group; each rank writes its own copy here.
    model.should_save_on_this_rank = lambda is_main_process: True
    try:
        model.save_pretrained(target)
    except Exception as exc:  # noqa: BLE001 - a class that cannot be saved without ZeRO has nothing to compare
        raise NotApplicable(f"a {class_name} checkpoint cannot be written without ZeRO: {exception_line(exc)}") \
            from None
    if not (target / "config.json").is_file():
        raise RuntimeError(f"save_pretrained wrote no checkpoint to {target} on rank {case.rank}")
    saved_type = json.loads((target / "config.json").read_text()).get("model_type")
    if saved_type != config.model_type:  # another class loading it would be built from that config's defaults
        raise NotApplicable(f"a {class_name} checkpoint holds a {saved_type} config, not the type's "
                            f"{config.model_type} one: another class loading it is built at that config's "
                            f"default (full) size, not tiny")
    return target, model


def _loading_onto_one(head: Any) -> dict[str, str]:
    """The base model's tensors that two keys of `head`'s checkpoint load onto: the base model's prefix is stripped
    from its keys (the documented base_model_prefix rule), so a head-level key named like one of the base model's
    (PixioBackbone's own layernorm beside pixio.layernorm) lands on the same tensor. Which of the two wins is no
    promise of from_pretrained's (without ZeRO the first, under ZeRO-3 the last): no value to compare with."""
    prefix = getattr(head, "base_model_prefix", "")
    if not prefix:
        return {}
    keys = set(head.state_dict())
    reason = f"two keys of the checkpoint load onto it ({prefix}.NAME and NAME): which one wins is not specified"
    return {key[len(prefix) + 1:]: reason
            for key in sorted(keys) if key.startswith(prefix + ".") and key[len(prefix) + 1:] in keys}


def _load_baselines(case: Case, loads: list[Load]) -> None:
    """Every call without ZeRO, first; a baseline that does not read the file its options select leaves
    nothing faithful to compare with (SKIP saying so)."""
    for load in loads:
        case.seed()
        try:
            with uninitialized_memory_filled():
                load.baseline, load.expected = load.model_class.from_pretrained(
                    str(load.path), output_loading_info=True, trust_remote_code=False, **load.options)
        except Exception as exc:  # noqa: BLE001 - an error without ZeRO is the behaviour to match
            load.baseline_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            continue
        case.keep(load.baseline)
        case.baseline_agrees(load.baseline, f"from_pretrained with {load.what}", dtypes=False, options=load.options)
        load.tensors = _as_partitioned(load.baseline, load.ds_config or case.ds_config)
        if load.reader is not None:
            initialized = initialized_keys(load.expected)
            expected = {k: v for k, v in full_parameters(load.baseline).items() if k not in initialized}
            try:
                baseline_matches_file(load.reader, expected, load.baseline)
            except NotApplicable as exc:
                raise NotApplicable(f"with {load.what}: {exc}") from None


def _check_subject(case: Case, load: Load) -> None:
    def subject_load() -> tuple[Any, dict[str, Any]]:
        return case.zero3_from_pretrained(load.model_class, load.path, load.ds_config, load.what, **load.options)

    if load.baseline_error:
        try:
            subject_load()
        except (SubjectRaised, NotApplicable):  # the subject does not load either: what the call without ZeRO does
            return
        case.fail(f"{load.what}: without ZeRO from_pretrained raises ({load.baseline_error}); under ZeRO-3 it loads "
                  f"(rank {case.rank})", "loading_report_differs", load.what, load.baseline_error, "loaded")
        return
    model, got = subject_load()
    for problem in report_differences(load.expected, got):
        case.fail(f"{load.what}: {problem}", *problem.fields)
    for key in load.options:
        if hasattr(load.baseline.config, key):
            want, have = getattr(load.baseline.config, key), getattr(model.config, key, None)
            case.expect(want == have, f"{load.what}: config.{key} expected {want!r} (without ZeRO), got {have!r}",
                        "loading_report_differs", f"config.{key}", want, have)
    initialized = initialized_keys(load.expected)

    def compare(key: str, want: Any, have: Any) -> Found | None:
        problem = init_mismatch(key, want, have, False) if key in initialized else exact_mismatch(key, want, have)
        return problem and problem.reworded(f"{load.what}: {problem}")

    compared = {key: tensor for key, tensor in load.tensors.items() if key not in load.ambiguous}
    compare_all(case, compared, gathered_state(model), compare, "tensors differ", "tensors loaded with options",
                should=set(load.tensors), reasons=load.ambiguous)
    del model
    case.end_zero3()  # before the next load's config is made


def _as_partitioned(baseline: Any, ds_config: dict[str, Any]) -> dict[str, Any]:
    """The baseline's tensors in the dtypes ZeRO-3 gives them under a precision in the config (P5): every floating
    parameter takes it, those the model keeps in float32 without ZeRO (_keep_in_fp32_modules) too, since ZeRO-3
    partitions and trains them in one dtype; an integer buffer keeps the dtype its module registers, which the
    float32 upcast of a kept module changes without ZeRO (a batch norm's num_batches_tracked). Rounding a value
    into that dtype is exact and the same on both sides, so loaded tensors still compare bit for bit."""
    expected = full_parameters(baseline)
    trained_in = precision(ds_config)
    if trained_in == "fp32":
        return expected
    dtype = torch_dtype(trained_in)
    parameters = dict(baseline.named_parameters())
    registered = _registered_dtypes(baseline)
    for name, tensor in expected.items():
        if not tensor.is_floating_point():
            continue
        if name in parameters:
            expected[name] = tensor.to(dtype)
        elif name in registered and not registered[name].is_floating_point:
            expected[name] = tensor.to(registered[name])
    return expected


def _registered_dtypes(model: Any) -> dict[str, Any]:
    """Each state-dict tensor's dtype as the model's class registers it: the class built on the meta device."""
    import copy

    import torch

    try:
        with torch.device("meta"):
            fresh = build_from_config(type(model), copy.deepcopy(model.config))
    except Exception:  # noqa: BLE001 - without it integer buffers are compared as the baseline holds them
        return {}
    return {name: tensor.dtype for name, tensor in fresh.state_dict().items()}


def _run(case: Case, loads: list[Load]) -> None:
    _load_baselines(case, loads)
    for load in loads:
        _check_subject(case, load)
    case.metrics["loads"] = [load.what for load in loads]


@check("G8", "dtype_options_load_like_baseline", layouts=("safetensors",), world_sizes=(2,))
def dtype_options_load_like_baseline(case: Case) -> None:
    """dtype="auto" on a bfloat16 checkpoint, and an explicit bfloat16 on a float32 one, load as without ZeRO
    (the ZeRO config's precision is bf16, agreeing with the dtype asked for)."""
    import torch

    bf16 = with_dtype(case.ds_config, "bf16")
    stored = {k: t.to(torch.bfloat16) if t.is_floating_point() else t for k, t in _original_tensors(case).items()}
    halved = _derived_checkpoint(case, "bf16", {"model.safetensors": stored},
                                 {"dtype": "bfloat16", "torch_dtype": "bfloat16"})
    cls = case.model_class()
    original = Path(case.checkpoint_path)
    _run(case, [Load("dtype='auto' on a bfloat16 checkpoint", cls, halved, dtype_kwarg("auto"), bf16,
                     reader=CheckpointReader(halved)),
                Load("dtype=torch.bfloat16 on a float32 checkpoint", cls, original, dtype_kwarg(torch.bfloat16), bf16,
                     reader=CheckpointReader(original))])


@check("G8", "label_options_load_like_baseline", layouts=("safetensors",), world_sizes=(2,))
def label_options_load_like_baseline(case: Case) -> None:
    """A label head loaded with more labels (with and without ignore_mismatched_sizes) and with relabelled
    id2label behaves as without ZeRO: the same mismatched keys, re-initialized heads, errors and config."""

    config = case.model_config()
    head = labelled_head(config.model_type)
    if head is None:
        raise NotApplicable(f"{config.model_type} has no head sized by its number of labels")
    labels = config.num_labels
    checkpoint = _saved_checkpoint(case, "labels", head, config)
    cls = auto_class(head)
    more = labels + EXTRA_LABELS
    renamed = {i: f"conformance_{i}" for i in range(labels)}
    _run(case, [Load(f"num_labels={more}, ignore_mismatched_sizes=True on a {labels}-label checkpoint", cls,
                     checkpoint, {"num_labels": more, "ignore_mismatched_sizes": True}),
                Load(f"num_labels={more} on a {labels}-label checkpoint", cls, checkpoint, {"num_labels": more}),
                Load(f"id2label={renamed}", cls, checkpoint, {"id2label": renamed})])


@check("G8", "key_mapping_loads_like_baseline", layouts=("safetensors",), world_sizes=(2,))
def key_mapping_loads_like_baseline(case: Case) -> None:
    """key_mapping renames a checkpoint's keys as without ZeRO (every key stored under a legacy prefix)."""
    legacy = {LEGACY_PREFIX + k: t for k, t in _original_tensors(case).items()}
    path = _derived_checkpoint(case, "legacy", {"model.safetensors": legacy})
    mapping = {"^" + LEGACY_PREFIX.replace(".", r"\."): ""}
    load = Load(f"key_mapping={mapping}", case.model_class(), path, {"key_mapping": mapping},
                reader=CheckpointReader(path, key_mapping=mapping))
    _load_baselines(case, [load])
    unapplied = key_mapping_unapplied(load)
    if unapplied:
        raise NotApplicable(f"transformers without ZeRO does not load this checkpoint through key_mapping "
                            f"({unapplied}): nothing faithful to compare ZeRO-3 with")
    _check_subject(case, load)


def key_mapping_unapplied(load: Load) -> str:
    """Why the load without ZeRO did not read the checkpoint through its key_mapping ('' when it did): it
    raised, reported the stored names unexpected, or reported missing names the mapping produces (transformers
    before 5 decides a base model's prefix from the stored names, before renaming them)."""
    if load.baseline_error:
        return f"it raises {load.baseline_error}"
    if load.expected is None:
        return ""
    legacy = sorted(str(k) for k in load.expected["unexpected_keys"] if str(k).startswith(LEGACY_PREFIX))
    if legacy:
        return f"{len(legacy)} stored names reported unexpected, e.g. {legacy[0]}"
    mapped = set(load.reader.keys()) if load.reader is not None else set()
    missing = sorted(str(k) for k in load.expected["missing_keys"] if str(k) in mapped)
    if missing:
        return f"{len(missing)} renamed names the checkpoint holds reported missing, e.g. {missing[0]}"
    return ""


def _file_choice(case: Case, name: str, file_name: str, options: dict[str, Any], what: str) -> None:
    """A directory holding the default safetensors file and `file_name` (the same tensors moved by SHIFT):
    the options (`variant`, `use_safetensors`, which the reader takes too) must select `file_name`, as they
    do without ZeRO."""
    original = _original_tensors(case)
    path = _derived_checkpoint(case, name, {"model.safetensors": original, file_name: _shifted(original, SHIFT)})
    _run(case, [Load(what, case.model_class(), path, options, reader=CheckpointReader(path, **options))])


@check("G8", "variant_loads_like_baseline", layouts=("safetensors",), world_sizes=(2,))
def variant_loads_like_baseline(case: Case) -> None:
    """variant= reads the variant's file, not the default one beside it, as without ZeRO."""
    file_name = with_variant("model.safetensors", VARIANT)
    _file_choice(case, "variant", file_name, {"variant": VARIANT},
                 f"variant={VARIANT!r} beside a default model.safetensors")


@check("G8", "use_safetensors_false_loads_like_baseline", layouts=("safetensors",), world_sizes=(2,))
def use_safetensors_false_loads_like_baseline(case: Case) -> None:
    """use_safetensors=False reads pytorch_model.bin, not the safetensors file beside it, as without ZeRO."""
    case.require_bin_loading("use_safetensors=False reads pytorch_model.bin")
    _file_choice(case, "bin", "pytorch_model.bin", {"use_safetensors": False},
                 "use_safetensors=False beside a model.safetensors")


def _a_head(case: Case, config: Any, base: str) -> str | None:
    """The case's own class where it is a head, else the type's trained head, else its first head: one built
    from the type's own config (a head with a config class of its own, e.g. a text-only head of a multimodal
    type, is not, as the sweep does not build it from this config either)."""

    own = concrete_class(case.model_class(), config).__name__
    if own != base:
        return own
    model_type = config.model_type
    heads = [h for h in head_classes(model_type) if h != base and not foreign_config_reason(model_type, h)]
    trained = loss_head(model_type)
    return trained if trained in heads else heads[0] if heads else None


@check("G8", "base_and_head_checkpoints_cross_load", layouts=("safetensors",), world_sizes=(2,))
def base_and_head_checkpoints_cross_load(case: Case) -> None:
    """A base model's checkpoint loaded into a head class, and a head's checkpoint into the base class, give
    the loading report and weights they give without ZeRO."""

    config = case.model_config()
    base = base_class(config.model_type)
    head = _a_head(case, config, base)
    if head is None:
        raise NotApplicable(f"{config.model_type} has no class but its base model {base}")
    base_checkpoint = _saved_checkpoint(case, "base", base, config)
    head_checkpoint, head_model = _saved(case, "head", head, config)
    _run(case, [Load(f"a {base} checkpoint into {head}", auto_class(head), base_checkpoint, {},
                     reader=CheckpointReader(base_checkpoint)),
                Load(f"a {head} checkpoint into {base}", auto_class(base), head_checkpoint, {},
                     reader=CheckpointReader(head_checkpoint), ambiguous=_loading_onto_one(head_model))])

