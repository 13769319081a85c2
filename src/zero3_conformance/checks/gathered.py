"""G — gathered weights are right: loaded exactly, tied, initialized like the baseline, writable."""

from __future__ import annotations

from typing import Any, Callable

from ..casekey import LAYOUTS
from ..compat import checkpoint_conversion
from ..finding_kinds import Found
from ..finding_kinds import make as make_finding
from ..reference.checkpoint import CheckpointReader
from ..structure import tied_groups
from .base import Case, NotApplicable, ceil_div, check
from .tensors import exact_mismatch, full_parameters, init_mismatch, undefined

MAX_LISTED = 8  # findings listed per case; the count of the rest is given


def gathered_state(model: Any) -> dict[str, Any]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return full_parameters(model)


def _report(case: Case, problems: list[Found], what: str) -> None:
    for problem in problems[:MAX_LISTED]:
        case.fail(f"{problem} (rank {case.rank})", *problem.fields)
    for problem in problems[MAX_LISTED:]:  # listed once, each still a finding a known issue must account for
        case.found.append(make_finding(*problem.fields, rank=case.rank))
    if len(problems) > MAX_LISTED:
        case.findings.append(f"... and {len(problems) - MAX_LISTED} more {what} (rank {case.rank})")


def compare_all(case: Case, expected: dict[str, Any], got: dict[str, Any],
                compare: Callable[[str, Any, Any], Found | None], what: str, kind: str,
                should: set[str] | None = None, reasons: dict[str, str] | None = None) -> None:
    """Compares every expected tensor with the ZeRO-3 model's; every rank must also see the same values. A
    tensor the baseline leaves undefined is not compared: it is listed in the record's metrics, and a case
    with nothing else to compare is a SKIP saying so. Counted as `kind` against `should` (the names the clause
    covers; the expected tensors' where not given), each one left out needing its reason in `reasons`."""
    unwritten = undefined(expected)
    if unwritten:
        listed = case.metrics.setdefault("undefined_without_zero", [])
        listed.extend(key for key in unwritten if key not in listed)
        if len(unwritten) == len(expected):
            raise NotApplicable(f"without ZeRO, transformers leaves {', '.join(unwritten)} uninitialized (memory "
                                f"no init wrote, filled with NaN here): there is nothing to compare with")
    problems, compared = [], []
    left_out = {**(reasons or {}), **dict.fromkeys(unwritten, "undefined_without_zero")}
    for key, tensor in sorted(expected.items()):
        if key not in got:
            problems.append(Found(f"{key}: missing from the ZeRO-3 model's state dict", "parameters_missing", key))
            left_out[key] = "missing from the ZeRO-3 model (a finding)"
            continue
        if key in unwritten:
            case.agree(key, got[key])
            continue
        problem = compare(key, tensor, got[key])
        compared.append(key)
        if problem:
            problems.append(problem)
        case.agree(key, got[key])
    _report(case, problems, what)
    case.count(kind, compared, expected.keys() if should is None else should, left_out)


def initialized_keys(report: dict[str, Any]) -> set[str]:
    """Keys a load initializes instead of reading: missing from the checkpoint, or of another size."""
    return {*map(str, report.get("missing_keys", [])), *map(_mismatched_key, report.get("mismatched_keys", []))}


def baseline_matches_file(reader: Any, expected: dict[str, Any], model: Any) -> None:
    """The expected tensors come from the non-ZeRO loader; where a checkpoint key names a model key (directly,
    with the base model's prefix, or renamed by the model type's declared conversion), they must equal the
    file's bytes, or the baseline itself is broken (e.g. an init that writes over a loaded value)."""
    keys = reader.keys()
    sources = {key if key in expected else f"{model.base_model_prefix}.{key}": key for key in keys}
    conversion = checkpoint_conversion(model)
    if conversion is not None:
        sources.update(conversion.renamed_sources(keys))
    for target, key in sources.items():
        if target in expected:
            problem = exact_mismatch(target, reader.get(key).to(expected[target].dtype), expected[target])
            if problem:  # transformers' own loading without ZeRO changed it: nothing faithful to compare with
                raise NotApplicable(f"transformers without ZeRO does not load the checkpoint's tensor as the file "
                                    f"holds it, so the file cannot be compared through it: {problem}")


@check("G1", "gathered_equals_checkpoint", layouts=LAYOUTS)
def gathered_equals_checkpoint(case: Case) -> None:
    """Inside GatheredParameters, every checkpoint tensor equals the gathered parameter or buffer bit for bit."""
    baseline, info = case.baseline_from_pretrained()
    not_from_checkpoint = initialized_keys(info)
    expected = {k: v for k, v in full_parameters(baseline).items() if k not in not_from_checkpoint}
    baseline_matches_file(CheckpointReader(case.checkpoint_path), expected, baseline)
    model, _ = case.zero3_from_pretrained()
    compare_all(case, expected, gathered_state(model), exact_mismatch, "tensors differ", "checkpoint tensors",
                case.clean_names("state dict", expected), dict.fromkeys(not_from_checkpoint, "not in the checkpoint"))


@check("G2", "tied_weights_stay_tied", layouts=("safetensors",), families=("gpt2", "t5"))
def tied_weights_stay_tied(case: Case) -> None:
    """Tied weights are one ZeRO parameter (not two copies) and equal the checkpoint tensor."""
    baseline, _ = case.baseline_from_pretrained()
    groups = tied_groups(baseline)
    expected = full_parameters(baseline)
    if not groups:
        raise NotApplicable("the baseline model ties no weights")
    model, _ = case.zero3_from_pretrained()
    params = dict(model.named_parameters(remove_duplicate=False))
    got = gathered_state(model)
    case.count("tied groups", map(str, groups), case.clean_names("tied groups", map(str, groups)))
    for group in groups:
        present = [name for name in group if name in params]
        if len(present) != len(group):
            case.fail(f"tied group {group}: missing from the ZeRO-3 model: {sorted(set(group) - set(present))}",
                      "parameters_missing", ", ".join(sorted(set(group) - set(present))))
            continue
        distinct = {id(params[name]) for name in group}
        case.expect(len(distinct) == 1, f"tied group {group}: {len(distinct)} separate parameters in the ZeRO-3 "
                                        f"model, expected one shared parameter (rank {case.rank})", "tie_broken",
                    ", ".join(group), "one shared parameter", f"{len(distinct)} parameters")
        for name in group:
            source = next((n for n in group if n in expected), None)
            if source is not None and name in got:
                problem = exact_mismatch(name, expected[source], got[name])
                if problem:
                    case.fail(f"tied {problem} (rank {case.rank})", *problem.fields)
    case.metrics["tied_groups"] = [list(g) for g in groups]


def _deterministic_keys(case: Case) -> set[str]:
    """Tensors the baseline init computes identically under two different seeds."""
    import torch

    first = full_parameters(case.baseline_from_config(seed_offset=0))
    second = full_parameters(case.baseline_from_config(seed_offset=1))
    return {k for k in first if first[k].numel() > 0 and torch.equal(first[k], second[k])}


@check("G3", "missing_weights_initialized", layouts=("safetensors",), families=("bert",))
def missing_weights_initialized(case: Case) -> None:
    """Weights absent from the checkpoint are initialized as the model's own init would without ZeRO,
    identically on every rank."""
    baseline, info = case.baseline_from_pretrained()
    missing = sorted(info.get("missing_keys", []))
    if not missing:
        raise NotApplicable("the checkpoint provides every weight of this model class")
    expected = full_parameters(baseline)
    deterministic = _deterministic_keys(case)
    model, _ = case.zero3_from_pretrained()
    compare_all(case, {k: expected[k] for k in missing}, gathered_state(model),
                lambda key, want, got: init_mismatch(key, want, got, key in deterministic),
                "tensors initialized wrongly", "tensors missing from the checkpoint")
    case.metrics["missing_keys"] = missing


@check("G4", "from_config_init_matches_baseline")
def from_config_init_matches_baseline(case: Case) -> None:
    """from_config initializes every parameter as the baseline's init does, identically on every rank."""
    expected = full_parameters(case.baseline_from_config())
    deterministic = _deterministic_keys(case)
    model = case.zero3_from_config()
    compare_all(case, expected, gathered_state(model),
                lambda key, want, got: init_mismatch(key, want, got, key in deterministic),
                "tensors initialized wrongly", "initialized tensors", case.clean_names("state dict", expected))
    case.metrics["deterministic_tensors"] = len(deterministic)


@check("G5", "modifier_rank_write_persists", families=("llama",))
def modifier_rank_write_persists(case: Case) -> None:
    """A write inside GatheredParameters(modifier_rank=r) persists after re-partitioning, on every rank."""
    import deepspeed
    import torch

    model = case.zero3_from_config()
    writer = case.world_size - 1
    for name, param in list(model.named_parameters())[:3]:
        pattern = torch.arange(int(param.ds_numel), dtype=torch.float32).reshape(tuple(param.ds_shape)) / 7.0
        with deepspeed.zero.GatheredParameters([param], modifier_rank=writer), torch.no_grad():
            if case.rank == writer:
                param.copy_(pattern.to(param.dtype))
        with deepspeed.zero.GatheredParameters([param]):
            problem = exact_mismatch(name, pattern.to(param.dtype), param.detach().clone())
        if problem is not None:
            case.fail(f"after rank {writer} wrote inside GatheredParameters(modifier_rank={writer}), rank {case.rank} "
                      f"gathers {problem}", "values_differ", name, "the value written", problem.observed)


@check("G6", "uneven_partitions_gather_exactly", layouts=("safetensors",), world_sizes=(2, 3))
def uneven_partitions_gather_exactly(case: Case) -> None:
    """Tensors the world size does not divide, and tensors smaller than the world, gather back exactly."""
    baseline, info = case.baseline_from_pretrained()
    expected = full_parameters(baseline)
    model, _ = case.zero3_from_pretrained()
    missing = set(info.get("missing_keys", []))
    uneven = {n: p for n, p in model.named_parameters() if n not in missing and hasattr(p, "ds_numel")
              and (p.ds_numel % case.world_size or p.ds_numel < case.world_size)}
    if not uneven:
        raise NotApplicable(f"no parameter this checkpoint provides has a size that world size {case.world_size} "
                            f"leaves uneven")

    def compare(name: str, want: Any, got: Any) -> Found | None:
        problem = exact_mismatch(name, want, got)
        numel = int(uneven[name].ds_numel)
        return problem and problem.reworded(f"{problem} [numel {numel}, shard {ceil_div(numel, case.world_size)}]")

    compare_all(case, {n: expected[n] for n in uneven}, gathered_state(model), compare,
                "uneven tensors differ", "uneven tensors")
    case.metrics["uneven_tensors"] = len(uneven)


@check("G7", "loading_report_matches_baseline", layouts=LAYOUTS)
def loading_report_matches_baseline(case: Case) -> None:
    """Missing / unexpected / mismatched keys are reported as without ZeRO, for the same checkpoint and class."""
    _, expected = case.baseline_from_pretrained()
    _model, got = case.zero3_from_pretrained()
    for problem in report_differences(expected, got):
        case.fail(problem, *problem.fields)
    fields = loading_report(expected)
    case.count("loading report fields", fields, fields)


def loading_report(info: dict[str, Any], shapes: bool = True) -> dict[str, list[str]]:
    """A loading report in one comparable form (releases give lists or sets, shapes as torch.Size or tuples);
    `shapes=False` names each mismatched key alone."""
    mismatched = info.get("mismatched_keys", [])
    return {"missing_keys": sorted(map(str, info.get("missing_keys", []))),
            "unexpected_keys": sorted(map(str, info.get("unexpected_keys", []))),
            "mismatched_keys": sorted(map(_mismatched if shapes else _mismatched_key, mismatched))}


def _mismatched(entry: Any) -> str:
    """A mismatched key as the release reports it: (key, checkpoint shape, model shape), or the key alone
    (transformers 4.57 keeps the shapes out of the loading info)."""
    if isinstance(entry, str):
        return entry
    key, stored, wanted = entry
    return f"{key}: checkpoint {tuple(stored)}, model {tuple(wanted)}"


def _mismatched_key(entry: Any) -> str:
    return entry if isinstance(entry, str) else str(entry[0])


def _reports_shapes(info: dict[str, Any]) -> bool:
    return not any(isinstance(entry, str) for entry in info.get("mismatched_keys", []))


def report_differences(expected: dict[str, Any], got: dict[str, Any]) -> list[Found]:
    # Shapes are compared where both reports carry them: a release whose report names keys alone is not
    # different from one that adds the shapes.
    shapes = _reports_shapes(expected) and _reports_shapes(got)
    want, have = loading_report(expected, shapes), loading_report(got, shapes)
    return [Found(f"{field}: expected {want[field]} (without ZeRO), got {have[field]}",
                  "unexpected_keys_unreported" if field == "unexpected_keys" and want[field] and not have[field]
                  else "loading_report_differs", field, want[field], have[field])
            for field in want if want[field] != have[field]]
