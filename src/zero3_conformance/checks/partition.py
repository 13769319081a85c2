"""P — models are partitioned at construction, dtypes follow the config, and nothing leaks afterwards."""

from __future__ import annotations

import gc
from typing import Any

from ..casekey import LAYOUTS
from ..dsconfig import partition_group_size, torch_dtype, with_stage
from ..finding_kinds import make as make_finding
from ..finding_kinds import raised_kind
from ..memory.probe import MB
from .base import Case, SubjectRaised, ceil_div, check, engine_config
from .tensors import identical, undefined

SHOWN = 8  # names listed per kind of mismatch


def verify_partitioned(case: Case, model: Any, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every parameter is a ZeRO-3 parameter holding its ceil(numel/group) shard, the group being the ranks
    that share its shards (the world, or a MiCS group), and the shards of a group's ranks reassemble to the
    gathered tensor."""
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    params = list(model.named_parameters())
    _same_names(case, {name for name, _ in params}, shapes, "the ZeRO-3 model")
    group = partition_group_size(case.ds_config, case.world_size)
    first = case.rank // group * group  # the first rank of this rank's group (MiCS groups are consecutive ranks)
    for name, param in params:
        where = f"{name} (rank {case.rank})"
        if not case.expect(hasattr(param, "ds_id"), f"{where}: not a ZeRO-3 parameter (no ds_id); local shape "
                                                    f"{tuple(param.shape)}, expected partitioned at construction",
                           "not_partitioned", name, "a ZeRO-3 parameter", f"local shape {tuple(param.shape)}"):
            continue
        case.expect(param.ds_status == ZeroParamStatus.NOT_AVAILABLE,
                    f"{where}: ds_status expected NOT_AVAILABLE, got {param.ds_status}", "partition_wrong", name,
                    "ds_status NOT_AVAILABLE", f"ds_status {param.ds_status}")
        case.expect(param.numel() == 0, f"{where}: local tensor expected empty, holds {param.numel()} elements",
                    "not_partitioned", name, "an empty local tensor", f"{param.numel()} elements")
        expected_shape = shapes.get(name)
        case.expect(tuple(param.ds_shape) == expected_shape,
                    f"{where}: ds_shape expected {expected_shape} (baseline), got {tuple(param.ds_shape)}",
                    "partition_wrong", name, f"ds_shape {expected_shape}", f"ds_shape {tuple(param.ds_shape)}")
        shard = ceil_div(int(param.ds_numel), group)
        case.expect(param.ds_tensor.numel() == shard,
                    f"{where}: shard expected ceil({param.ds_numel}/{group}) = {shard} elements (a partition group "
                    f"of {group} ranks), got {param.ds_tensor.numel()}", "partition_wrong", name,
                    f"a shard of {shard} elements", f"{param.ds_tensor.numel()} elements")
    zero_params = [(n, p) for n, p in params if hasattr(p, "ds_id")]
    # Every rank takes part in the same collectives, whatever it found above.
    for name, param in zero_params:
        local = param.ds_tensor.detach().reshape(-1).float().clone()
        pieces = [torch.zeros_like(local) for _ in range(case.world_size)]
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(case.world_size)]
        dist.all_gather(sizes, torch.tensor([local.numel()]))
        if len({int(s) for s in sizes}) != 1:
            case.fail(f"{name}: ranks hold shards of different sizes {[int(s) for s in sizes]}", "partition_wrong",
                      name, "shards of one size", [int(s) for s in sizes])
            continue
        dist.all_gather(pieces, local)
        reassembled = torch.cat(pieces[first:first + group])[: int(param.ds_numel)]
        with deepspeed.zero.GatheredParameters([param]):
            gathered = param.detach().reshape(-1).float().clone()
        if reassembled.numel() != gathered.numel():
            case.fail(f"{name}: the shards of ranks {first}..{first + group - 1} (its partition group of {group}) "
                      f"hold {reassembled.numel()} of the gathered tensor's {gathered.numel()} elements",
                      "partition_wrong", name, f"{gathered.numel()} elements", f"{reassembled.numel()} elements")
        elif not identical(reassembled, gathered):
            case.fail(f"{name}: the ranks' shards concatenated do not equal the gathered tensor "
                      f"(max |diff| {float((reassembled - gathered).abs().max()):.3g})", "partition_wrong", name,
                      "the gathered tensor", "other values")
    case.count("parameters", [name for name, _ in zero_params], case.clean_names("parameters", shapes),
               {name: "not a ZeRO-3 parameter (a finding)" for name, param in params if not hasattr(param, "ds_id")})
    _converted_at_initialize(case, model, [name for name, param in params if not hasattr(param, "ds_id")])


def _converted_at_initialize(case: Case, model: Any, whole: list[str]) -> None:
    """Parameters zero.Init left whole (found above) are, by DeepSpeed's design, converted by deepspeed.initialize:
    each must then be a ZeRO-3 parameter, gathered to one value on every rank (rank 0's, which DeepSpeed
    broadcasts). The not-partitioned finding stands either way (every rank holds them whole until then)."""
    import deepspeed
    import torch
    import torch.distributed as dist

    held = torch.tensor([len(whole)])
    dist.all_reduce(held, op=dist.ReduceOp.MAX)  # every rank builds the engine, or none does
    if not int(held.item()):
        return
    with case.subject_call("deepspeed.initialize around the built model"):
        engine, *_ = deepspeed.initialize(model=model, config=engine_config(case.ds_config))
    case.on_close(getattr(engine, "destroy", lambda: None))
    converted = []
    for name, param in model.named_parameters():  # one gather per converted parameter, in the same order
        if name not in whole:
            continue
        if case.expect(hasattr(param, "ds_id"), f"{name} (rank {case.rank}): not a ZeRO-3 parameter after "
                       f"deepspeed.initialize either; local shape {tuple(param.shape)}", "not_converted_at_initialize",
                       name, "a ZeRO-3 parameter after deepspeed.initialize", f"local shape {tuple(param.shape)}"):
            converted.append(name)
            with deepspeed.zero.GatheredParameters([param]):
                case.agree(f"{name} after deepspeed.initialize", param.detach().clone())
    case.metrics["converted_at_initialize"] = converted


def baseline_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


@check("P1", "from_config_partitioned")
def from_config_partitioned(case: Case) -> None:
    """from_config under a stage-3 config returns a model whose every parameter is already partitioned."""
    shapes = baseline_shapes(case.baseline_from_config())
    model = case.zero3_from_config()
    verify_partitioned(case, model, shapes)
    case.metrics["parameters"] = len(shapes)


@check("P2", "from_pretrained_partitioned", layouts=LAYOUTS)
def from_pretrained_partitioned(case: Case) -> None:
    """from_pretrained under a stage-3 config returns a partitioned model, for every checkpoint layout."""
    baseline, _ = case.baseline_from_pretrained()
    shapes = baseline_shapes(baseline)
    model, _ = case.zero3_from_pretrained()
    verify_partitioned(case, model, shapes)


def _ordinary(case: Case, model: Any, shapes: dict[str, tuple[int, ...]], when: str) -> None:
    for name, param in model.named_parameters():
        case.expect(not hasattr(param, "ds_id"), f"{when}: {name} is a ZeRO-3 parameter; expected an ordinary one",
                    "leftover", name, "an ordinary parameter", "a ZeRO-3 parameter")
        case.expect(tuple(param.shape) == shapes.get(name),
                    f"{when}: {name} has shape {tuple(param.shape)}, expected {shapes.get(name)}", "leftover", name,
                    shapes.get(name), tuple(param.shape))
    names = {name for name, _ in model.named_parameters()}
    _same_names(case, names, shapes, when)
    case.count("parameters", names, shapes, {name: "missing (a finding)" for name in set(shapes) - names})


def _same_names(case: Case, names: set[str], shapes: dict[str, tuple[int, ...]], what: str) -> None:
    """The model's parameter names are the baseline's, both ways: a model that lost parameters (or has none)
    must not pass for want of anything to check."""
    missing, extra = sorted(set(shapes) - names), sorted(names - set(shapes))
    case.expect(not missing, f"{what}: {len(missing)} of the baseline's {len(shapes)} parameters are missing: "
                             f"{', '.join(missing[:SHOWN])}", "parameters_missing", ", ".join(missing[:SHOWN]),
                f"{len(shapes)} parameters", f"{len(shapes) - len(missing)}")
    case.expect(not extra, f"{what}: {len(extra)} parameters the baseline lacks: {', '.join(extra[:SHOWN])}",
                "parameters_extra", ", ".join(extra[:SHOWN]), f"{len(shapes)} parameters", f"{len(extra)} more")


@check("P4", "construction_leaves_no_trace", world_sizes=(1, 2))
def construction_leaves_no_trace(case: Case) -> None:
    """After a ZeRO-3 build, models built with the config gone or at stage < 3 are complete and ordinary,
    and a second ZeRO-3 build in the same process is partitioned again."""
    import torch

    # The clean structure, never a build in this process: one an earlier case spoiled would agree with a
    # subject that leaves the same spoil.
    shapes = case.clean_parameters()
    model = case.zero3_from_config()
    del model
    case.end_zero3()
    linear = torch.nn.Linear(3, 5)
    case.expect(not hasattr(linear.weight, "ds_id") and tuple(linear.weight.shape) == (5, 3),
                f"torch.nn.Linear(3, 5) built after the ZeRO-3 build: weight shape {tuple(linear.weight.shape)}, "
                f"ZeRO parameter: {hasattr(linear.weight, 'ds_id')}", "leftover", "torch.nn.Linear(3, 5).weight",
                "an ordinary (5, 3) parameter", tuple(linear.weight.shape))
    with case.subject_call("from_config with no config alive"):
        plain = case.subject.from_config(case.model_class(), case.model_config())
    _ordinary(case, plain, shapes, "built after the config was dropped")
    del plain
    with case.subject_call("config construction (stage 2)"):
        stage2 = case.subject.make_config(with_stage(case.ds_config, 2))
    with case.subject_call("from_config at stage 2"):
        at_stage2 = case.subject.from_config(case.model_class(), case.model_config())
    _ordinary(case, at_stage2, shapes, "built with a stage-2 config alive")
    del stage2, at_stage2
    gc.collect()
    second = case.zero3_from_config()
    verify_partitioned(case, second, shapes)


@check("P5", "dtype_follows_config", dtypes=("bf16", "fp16"))
def dtype_follows_config(case: Case) -> None:
    """Built with dtype= the config's fp16/bf16, as the baseline is: partitioned floating parameters take that
    dtype, and every buffer equals the baseline's in dtype and value."""
    _precision(case, torch_dtype(case.dtype))


@check("P5", "precision_without_dtype", dtypes=("bf16", "fp16"))
def precision_without_dtype(case: Case) -> None:
    """Built with no dtype, as the baseline is, under a config with fp16/bf16: the config's precision alone makes
    partitioned floating parameters take it, and leaves every buffer the baseline's value, either as built
    without ZeRO or rounded to that precision (as DeepSpeed's engine casts a model it did not build; beyond its
    range, infinite or saturated)."""
    _precision(case, None)


def _precision(case: Case, dtype: Any) -> None:
    """Both builds given `dtype` (None: none): the subject's floating parameters partitioned in the config's
    precision; each buffer the baseline's in dtype and value (with no dtype, a floating one may also hold the
    baseline's value rounded to the config's precision)."""
    import deepspeed

    target = torch_dtype(case.dtype)
    baseline = case.baseline_from_config(dtype=dtype)
    baseline_buffers = {k: v.detach().clone() for k, v in baseline.named_buffers()}
    unwritten = undefined(baseline_buffers)
    if unwritten:
        case.metrics["undefined_without_zero"] = unwritten
    model = case.zero3_from_config(dtype=dtype)
    floating = []
    for name, param in model.named_parameters():
        if param.is_floating_point():
            got = param.ds_tensor.dtype if hasattr(param, "ds_tensor") else param.dtype
            case.expect(got == target, f"{name}: partitioned dtype expected {target}, got {got}", "dtype_differs",
                        name, target, got)
            floating.append(name)
    case.count("parameters", floating, case.clean_names("parameters", dict(baseline.named_parameters())),
               {name: "not floating-point" for name, p in model.named_parameters() if not p.is_floating_point()})
    compared = []
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        for name, buffer in model.named_buffers():
            expected = baseline_buffers.get(name)
            if expected is None:
                case.fail(f"buffer {name}: not in the baseline model", "parameters_extra", name)
                continue
            compared.append(name)
            if name in unwritten:  # undefined without ZeRO (listed in the metrics): nothing to compare with
                case.agree(f"buffer {name}", buffer)
                continue
            rounded = dtype is None and expected.is_floating_point() and buffer.dtype == target != expected.dtype
            if rounded:  # DeepSpeed put it in the config's precision: the baseline's value, rounded once
                expected = _rounded(expected, target, buffer)
            source = "the baseline's, rounded to the config's precision" if rounded else "the baseline's"
            if buffer.dtype != expected.dtype:
                allowed = f"{expected.dtype} or {target}" if dtype is None and expected.is_floating_point() else \
                    str(expected.dtype)
                case.fail(f"buffer {name}: dtype expected {allowed} (baseline), got {buffer.dtype}", "dtype_differs",
                          name, allowed, buffer.dtype)
            elif not identical(buffer, expected):
                diff = (buffer.double() - expected.double()).abs().max()
                case.fail(f"buffer {name}: values differ from {source} (max |diff| {float(diff):.3g})",
                          "values_differ", name, source, f"max |diff| {float(diff):.3g}")
            case.agree(f"buffer {name}", buffer)
    case.count("buffers", [name for name in compared if name not in unwritten], baseline_buffers,
               dict.fromkeys(unwritten, "undefined_without_zero"))


def _rounded(value: Any, dtype: Any, got: Any) -> Any:
    """`value` in `dtype`, rounded once; a value beyond the dtype's range may saturate at its largest finite value
    (a model that clamps, e.g. a float32 limit of 1e10 in fp16) rather than overflow: whichever `got` holds."""
    import torch

    overflowed = value.to(dtype)
    largest = torch.finfo(dtype).max
    saturated = value.clamp(-largest, largest).to(dtype)
    return saturated if identical(got, saturated) else overflowed


# P3 allows model_bytes / world + largest_module_bytes + MEMORY_SLACK_MB per rank: one module is whole while
# it is built (or loaded), and the slack covers what any build allocates besides (Python objects, the
# config, the allocator's rounding). With MEMORY_FAMILY the bound is well below model_bytes from world size
# 2 on, so a build that materializes the whole model on a rank cannot pass.
MEMORY_SLACK_MB = 48.0
# Any world size measures the bound; a run takes those it asks for (the default 1, 2 and 3; a GPU runner 4, 8).
P3_WORLD_SIZES = (1, 2, 3, 4, 8)


def _model_sizes(structure: Any) -> tuple[float, float]:
    """(model MB, largest module's own parameters MB) in fp32, from the family's clean structure."""
    import math

    own: dict[str, int] = {}
    for name, (shape, _) in structure.parameters.items():
        module = name.rpartition(".")[0]
        own[module] = own.get(module, 0) + math.prod(shape) * 4
    return structure.elements() * 4 / MB, max(own.values()) / MB


def _peak_memory_within_bound(case: Case, build: str) -> None:
    from ..memory.client import probe_everywhere
    from ..zoo import MEMORY_FAMILY, MEMORY_WARMUP_FAMILY

    everyone, baseline = probe_everywhere(case.rank, case.world_size, case.ctx.backend, case.subject_name, build,
                                          case.ds_config, MEMORY_FAMILY, MEMORY_WARMUP_FAMILY,
                                          in_process=case.ctx.launched,
                                          subject_module=case.subject_module)
    mine = everyone[case.rank]
    if "error" in mine:
        raise RuntimeError(mine["error"])
    if "raised" in mine:
        raise SubjectRaised(f"{case.subject.name} raised during {build} in the memory probe: {mine['raised']}",
                            [make_finding(raised_kind(f"{build}: {mine['raised']}"), "", f"{build} without an "
                                          "exception", mine["raised"], case.rank)])
    structure = case.clean_structure(MEMORY_FAMILY)
    built = mine.get("built", {})
    case.expect(built == {"parameters": len(structure.parameters), "elements": structure.elements()},
                f"{build} in the memory probe (rank {case.rank}): {case.subject.name}'s model has "
                f"{built.get('parameters')} parameters of {built.get('elements')} elements, its clean structure "
                f"{len(structure.parameters)} of {structure.elements()}: a build that lost tensors allocates less",
                "parameters_missing", "", {"parameters": len(structure.parameters), "elements": structure.elements()},
                built)
    model_mb, largest_mb = _model_sizes(structure)
    bound = model_mb / case.world_size + largest_mb + MEMORY_SLACK_MB
    # On a GPU, ZeRO-3 builds on the device: judged on the CUDA allocator's peak. On CPU, on the memory the
    # rank allocated itself: file pages of a mapped checkpoint are page cache, shared by every rank and
    # reclaimable; the resident-set peak that counts them is recorded beside it.
    judged, where = ("cuda_peak_mb", "on the GPU") if case.ctx.backend == "nccl" else ("peak_anon_mb", "")
    case.expect(mine[judged] <= bound,
                f"{build} of a {model_mb:.0f} MB model: rank {case.rank} allocated up to {mine[judged]:.0f} MB"
                f"{' ' + where if where else ''}, over the bound {bound:.0f} MB = {model_mb:.0f}/{case.world_size} "
                f"+ largest module {largest_mb:.0f} + slack {MEMORY_SLACK_MB:.0f} (resident-set peak "
                f"{mine['peak_mb']:.0f} MB; the baseline without ZeRO allocated {baseline.get('peak_anon_mb', '?')} "
                f"MB on the host)", "memory_over_bound", "", f"<= {bound:.0f} MB", f"{mine[judged]:.0f} MB")
    case.metrics.update({
        "model_mb": round(model_mb, 1), "largest_module_mb": round(largest_mb, 1), "bound_mb": round(bound, 1),
        "peak_mb_by_rank": [f.get("peak_mb") for f in everyone],
        "peak_anon_mb_by_rank": [f.get("peak_anon_mb") for f in everyone],
        "seconds_by_rank": [f.get("seconds") for f in everyone],
        "baseline_peak_mb": baseline.get("peak_mb"), "baseline_peak_anon_mb": baseline.get("peak_anon_mb"),
        "judged_on": judged,
    })
    if judged == "cuda_peak_mb":
        case.metrics["cuda_peak_mb_by_rank"] = [f.get("cuda_peak_mb") for f in everyone]


@check("P3", "from_config_peak_memory", world_sizes=P3_WORLD_SIZES, families=())
def from_config_peak_memory(case: Case) -> None:
    """Building a 263 MB model with from_config, no rank's peak memory exceeds model/world + largest module +
    slack (measured in probe processes; the baseline's peak is recorded beside it)."""
    _peak_memory_within_bound(case, "from_config")


@check("P3", "from_pretrained_peak_memory", world_sizes=P3_WORLD_SIZES, families=())
def from_pretrained_peak_memory(case: Case) -> None:
    """Loading a 263 MB checkpoint with from_pretrained, no rank's peak memory exceeds model/world + largest
    module + slack (measured in probe processes; the baseline's peak is recorded beside it)."""
    _peak_memory_within_bound(case, "from_pretrained")
