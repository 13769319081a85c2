"""S — saving a ZeRO-3 model and growing its vocabulary."""

from __future__ import annotations

import io
import shutil
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from .. import compat
from ..errors import exception_line
from ..finding_kinds import Found
from ..finding_kinds import make as make_finding
from ..structure import tied_groups
from .base import SEED, Case, NotApplicable, check
from .numerics import batch_for, deepspeed_engine
from .tensors import exact_mismatch, full_parameters

ADDED_TOKENS = 5  # V + 5: 136 rows for the zoo's vocabulary of 131, which world size 3 does not divide


def _vocabulary_modules(model: Any) -> dict[str, Any]:
    """The input embedding and, where the model has one, the output head."""
    modules = {"input embeddings": model.get_input_embeddings()}
    head = model.get_output_embeddings()
    if head is not None:
        modules["output embeddings"] = head
    return modules


VOCABULARY_SIZED = ("weight", "bias")  # an embedding module may hold more (t5gemma2's eoi_embedding), not resized


def _vocabulary_params(model: Any) -> dict[str, Any]:
    return {f"{what}.{name}": param for what, module in _vocabulary_modules(model).items()
            for name, param in module.named_parameters(recurse=False) if name in VOCABULARY_SIZED}


def _held_whole_bytes(params: dict[str, Any]) -> int:
    """Bytes of these parameters that this rank holds unpartitioned."""
    return sum(p.numel() * p.element_size() for p in params.values() if not hasattr(p, "ds_id"))


def _added_token_inputs(model: Any, new_vocab: int) -> dict[str, Any]:
    """Token ids that include two of the added tokens (and decoder ids for an encoder-decoder)."""
    import torch

    new_tokens = torch.tensor([[3, new_vocab - 1, 4, new_vocab - 2]])
    inputs = {"input_ids": new_tokens}
    if getattr(model.config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = new_tokens
    return inputs


@check("S2", "resize_token_embeddings", layouts=("safetensors",), world_sizes=(2, 3))
def resize_token_embeddings(case: Case) -> None:
    """resize_token_embeddings(V + k) gives what it gives without ZeRO (config, rows of embedding and head,
    logits as wide), with the old rows kept, new rows equal on every rank, tied groups still one parameter,
    and embedding and head partitioned once the engine is built."""
    import deepspeed
    import torch
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    baseline, _ = case.baseline_from_pretrained()
    try:
        embeddings = baseline.get_input_embeddings()
    except NotImplementedError as exc:  # transformers' own answer for a model without token embeddings
        raise NotApplicable(f"{type(baseline).__name__} has no token embeddings to resize: {exc}") from None
    if not hasattr(embeddings, "weight"):
        raise NotApplicable(f"{type(baseline).__name__} has no token embeddings to resize")
    groups = tied_groups(baseline)
    old_rows = {what: module.weight.detach().clone() for what, module in _vocabulary_modules(baseline).items()}
    new_vocab = int(embeddings.weight.shape[0]) + ADDED_TOKENS
    # The same resize without ZeRO says what to expect: the config's vocabulary, each module's rows (a model
    # may size its head otherwise than its embedding) and the logits' width.
    with torch.no_grad(), case.baseline_call(f"{type(baseline).__name__}: resize_token_embeddings({new_vocab}) and "
                                             f"a forward over the added tokens"):
        baseline.resize_token_embeddings(new_vocab)
        expected_logits = baseline(**_added_token_inputs(baseline, new_vocab)).logits.shape[-1] \
            if baseline.get_output_embeddings() is not None else None
    expected_vocab = compat.text_config(baseline.config).vocab_size
    expected_rows = {what: int(module.weight.shape[0]) for what, module in _vocabulary_modules(baseline).items()}
    del baseline

    model, _ = case.zero3_from_pretrained()
    # Each rank's random state differs, as in data-parallel code that seeds per rank: new rows must not
    # depend on it.
    torch.manual_seed(SEED + 1 + case.rank)
    with case.subject_call(f"resize_token_embeddings({new_vocab})"):
        case.subject.resize_token_embeddings(model, new_vocab)
    vocab_size = compat.text_config(model.config).vocab_size
    case.expect(vocab_size == expected_vocab, f"config.vocab_size expected {expected_vocab} (as resized without "
                                              f"ZeRO), got {vocab_size}", "resize_wrong", "config.vocab_size",
                expected_vocab, vocab_size)
    params = _vocabulary_params(model)
    case.metrics["partitioned_at_resize"] = all(hasattr(p, "ds_id") for p in params.values())
    case.metrics["whole_bytes_per_rank_after_resize"] = _held_whole_bytes(params)

    engine = deepspeed_engine(case, model, optimizer=None)
    modules = _vocabulary_modules(engine.module)
    for what, module in modules.items():
        for name, param in module.named_parameters(recurse=False):
            if name not in VOCABULARY_SIZED:
                continue
            where = f"{what}.{name} after the engine is built (rank {case.rank})"
            if not case.expect(hasattr(param, "ds_id"), f"{where}: not partitioned (no ds_id)", "not_partitioned",
                               f"{what}.{name}", "a ZeRO-3 parameter", f"shape {tuple(param.shape)}"):
                continue
            case.expect(param.ds_status == ZeroParamStatus.NOT_AVAILABLE and param.numel() == 0,
                        f"{where}: expected released (NOT_AVAILABLE, empty), got {param.ds_status}, "
                        f"{param.numel()} elements held", "partition_wrong", f"{what}.{name}",
                        "released (NOT_AVAILABLE, empty)", f"{param.ds_status}, {param.numel()} elements held")
            rows = expected_rows.get(what)
            case.expect(int(param.ds_shape[0]) == rows, f"{where}: ds_shape {tuple(param.ds_shape)}, expected "
                                                        f"{rows} rows (as resized without ZeRO)", "resize_wrong",
                        f"{what}.{name}", f"{rows} rows", f"ds_shape {tuple(param.ds_shape)}")
    named = dict(engine.module.named_parameters(remove_duplicate=False))
    for group in groups:  # e.g. a tied head, or an encoder's and a decoder's embed_tokens
        shared = {id(named[name]) for name in group if name in named}
        case.expect(len(shared) == 1 and all(name in named for name in group),
                    f"tied group {group} is no longer one parameter after resizing: {len(shared)} separate "
                    f"parameters (rank {case.rank})", "tie_broken", ", ".join(group), "one parameter",
                    f"{len(shared)} parameters")
    zero_params = [p for p in _vocabulary_params(engine.module).values() if hasattr(p, "ds_id")]
    compared = []
    with deepspeed.zero.GatheredParameters(zero_params):
        for what, module in modules.items():
            weight = module.weight.detach().clone()
            if weight.shape[0] != expected_rows.get(what):
                case.fail(f"{what}.weight has {weight.shape[0]} rows after resizing, expected "
                          f"{expected_rows.get(what)} (as resized without ZeRO)", "resize_wrong", f"{what}.weight",
                          f"{expected_rows.get(what)} rows", f"{weight.shape[0]} rows")
                continue
            compared.append(what)
            kept = min(int(old_rows[what].shape[0]), int(weight.shape[0]))
            problem = exact_mismatch(f"{what}.weight[:{kept}]", old_rows[what][:kept], weight[:kept])
            if problem is not None:
                case.fail(f"old rows changed by resizing: {problem} (rank {case.rank})", *problem.fields)
            added = weight[kept:]
            case.expect(bool(torch.isfinite(added).all()), f"{what}.weight: added rows hold non-finite values",
                        "non_finite", f"{what}.weight[{kept}:]", "finite values", "non-finite values")
            case.agree(f"{what}.weight added rows", added)
    case.count("vocabulary-sized weights", compared, expected_rows,
               {what: "missing after the resize (a finding)" for what in expected_rows if what not in modules})
    if expected_logits is not None:
        with torch.no_grad(), case.subject_call("forward with added tokens"):
            logits = engine(**_added_token_inputs(engine.module, new_vocab)).logits
        case.expect(logits.shape[-1] == expected_logits, f"logits {tuple(logits.shape)}, expected {expected_logits} "
                                                         f"wide (as resized without ZeRO)", "resize_wrong", "logits",
                    f"{expected_logits} wide", tuple(logits.shape))
        case.expect(bool(torch.isfinite(logits).all()), "logits over the added tokens are not finite", "non_finite",
                    "logits", "finite values", "non-finite values")


def _scratch_dir(case: Case) -> Path:
    """A private directory every rank of this case writes to; removed when the case ends."""
    import torch.distributed as dist

    path = [tempfile.mkdtemp(prefix="zero3-save-") if case.rank == 0 else None]
    dist.broadcast_object_list(path, src=0)
    if case.rank == 0:
        case.on_close(lambda: shutil.rmtree(path[0], ignore_errors=True))
    return Path(path[0])


def _saved(case: Case, engine: Any, scratch: Path) -> dict[str, Path]:
    """The trained engine saved the three ways S1 names; returns directories from_pretrained can load."""
    import deepspeed
    import torch
    import torch.distributed as dist
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    model = engine.module
    dirs = {what: scratch / what for what in ("save_16bit_model", "zero_to_fp32", "save_pretrained")}
    with case.subject_call("engine.save_16bit_model"):
        engine.save_16bit_model(str(dirs["save_16bit_model"]), "pytorch_model.bin")
    with case.subject_call("engine.save_checkpoint"):
        engine.save_checkpoint(str(scratch / "zero-checkpoint"), tag="s1")
    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        if case.rank == 0:
            with case.subject_call("save_pretrained of the gathered model"):
                model.save_pretrained(dirs["save_pretrained"])
    dist.barrier()
    if case.rank == 0:
        chatter = io.StringIO()  # zero_to_fp32 prints progress to stdout and stderr
        with case.subject_call("zero_to_fp32 consolidation"), redirect_stdout(chatter), redirect_stderr(chatter):
            state = get_fp32_state_dict_from_zero_checkpoint(str(scratch / "zero-checkpoint"), tag="s1")
        dirs["zero_to_fp32"].mkdir()
        torch.save(state, dirs["zero_to_fp32"] / "pytorch_model.bin")
        for what in ("save_16bit_model", "zero_to_fp32"):  # weights alone: the config comes from the model
            model.config.save_pretrained(dirs[what])
    return dirs


def _keys_lost_without_zero(case: Case, baseline: Any, directory: Path) -> list[str]:
    """The control: the baseline (no ZeRO anywhere) through save_pretrained and the class's from_pretrained.
    The keys it reloads missing, or the call that raised: save_pretrained's own loss, not ZeRO-3's."""
    try:
        baseline.save_pretrained(directory)
        _, info = case.model_class().from_pretrained(str(directory), output_loading_info=True,
                                                     trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - the control's failure is reported as what it is, not raised
        return [f"(the round trip raised {exception_line(exc)})"]
    return sorted(map(str, info.get("missing_keys") or []))


@check("S1", "saved_checkpoints_reload_exactly", layouts=("safetensors",), world_sizes=(2, 3))
def saved_checkpoints_reload_exactly(case: Case) -> None:
    """After a training step, the 16-bit consolidated save, zero_to_fp32 consolidation and save_pretrained of
    gathered weights each load without ZeRO to exactly the weights the ZeRO model held, tied weights included."""
    import deepspeed

    case.require_bin_loading("the 16-bit and zero_to_fp32 checkpoints reloaded here are .bin files")
    batch = batch_for(case, 0, case.rank)
    scratch = _scratch_dir(case)
    baseline, _ = case.baseline_from_pretrained()
    lost_without_zero = _keys_lost_without_zero(case, baseline, scratch / "control") if case.rank == 0 else []
    with case.baseline_call(f"{type(baseline).__name__}'s forward and backward"):
        baseline(**batch).loss.backward()
    del baseline
    model, _ = case.zero3_from_pretrained()
    engine = deepspeed_engine(case, model, "sgd_momentum", stage3_gather_16bit_weights_on_model_save=True)
    with case.subject_call("training step"):
        engine.backward(engine(**batch).loss)
        engine.step()
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        held = full_parameters(engine.module)
    held_groups = tied_groups(engine.module)
    dirs = _saved(case, engine, scratch)
    # Reloading "without ZeRO" needs the subject's config gone; it was only needed for construction.
    case.end_zero3()
    if not case.expect(not case.subject.is_zero3_enabled(), "ZeRO-3 is still enabled after the config object "
                                                            "was dropped; cannot reload without ZeRO (see A2)",
                       "zero3_state_wrong", "is_zero3_enabled() after the config was dropped", False, True):
        return
    if case.rank != 0:
        return  # rank 0 wrote the files; one reload of each is enough
    for what, directory in dirs.items():
        if what == "save_pretrained" and lost_without_zero:  # the same loss without ZeRO: no ZeRO-3 finding
            case.count(f"tensors reloaded from {what}", [], case.clean_names("state dict", held), dict.fromkeys(
                held, f"save_pretrained then from_pretrained loses keys without ZeRO too (the control: "
                      f"{', '.join(lost_without_zero[:3])}{' ...' if len(lost_without_zero) > 3 else ''})"))
            continue
        with case.subject_call(f"from_pretrained of the {what} checkpoint"):
            reloaded, info = case.model_class().from_pretrained(str(directory), output_loading_info=True,
                                                                trust_remote_code=False)
        case.keep(reloaded)
        case.expect(not info.get("missing_keys"), f"{what}: keys missing on reload: {info.get('missing_keys')}",
                    "reload_differs", ", ".join(map(str, info.get("missing_keys") or [])), "no missing keys",
                    info.get("missing_keys"))
        got = full_parameters(reloaded)
        problems = [p for key in sorted(held) if (p := exact_mismatch(key, held[key], got[key]) if key in got
                                                   else Found(f"{key}: absent after reload", "reload_differs", key))]
        case.count(f"tensors reloaded from {what}", [key for key in held if key in got],
                   case.clean_names("state dict", held),
                   {key: "absent after reload (a finding)" for key in held if key not in got})
        for problem in problems[:5]:
            case.fail(f"{what}: reloaded {problem} (expected: what the ZeRO-3 model held after training)",
                      *problem.fields)
        for problem in problems[5:]:  # listed once, each still a finding a known issue must account for
            case.found.append(make_finding(*problem.fields, rank=case.rank))
        if len(problems) > 5:
            case.findings.append(f"{what}: ... and {len(problems) - 5} more tensors differ")
        groups = tied_groups(reloaded)
        case.expect(groups == held_groups, f"{what}: tied groups after reload {groups}, the ZeRO-3 model had "
                                           f"{held_groups}", "reload_differs", "tied groups", held_groups, groups)
