"""N — a ZeRO-3 model computes and trains like the baseline: forward, backward, optimizer steps.

Both sides load the same checkpoint. Each rank feeds the engine its own batch (data parallelism);
the baseline averages the gradients of every rank's batch, which is the global batch as data parallelism
defines it, so gradients and steps are comparable. Dropout is off on
both sides (eval mode): the checks are about ZeRO-3, not about random masks.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from .. import compat
from ..dsconfig import torch_dtype
from ..inputs import FIRST_ORDINARY_TOKEN, InputsUnavailable, training_batch, vocabulary
from .base import SEED, Case, NotApplicable, check, engine_config
from .tensors import closeness_problem, exact_mismatch, full_parameters, undefined

# fp32: the ZeRO-3 result must equal the baseline's within (rtol, atol), elementwise, as the contract asks.
# Where a tensor's own fp32 accuracy is coarser than that (cancellation: a layer norm's weight gradient is
# a sum of products of both signs), the baseline's own error against an fp64 computation of the same
# quantity is allowed on top, LOW_PRECISION_FACTOR times (measured: cpmant's layer-norm gradients, whose
# fp32 error is 3e-5 of their largest value). It is computed only where the fixed tolerance fails.
TOLERANCES = {"fp32": (1e-5, 1e-6)}
# bf16: elementwise tolerances do not fit. The engine's autograd graph (its gather/release hooks) sums a
# tensor's gradient contributions in another order than the baseline's, and in bf16 each order rounds
# differently: at world size 1, with no communication at all, BERT's key-bias gradient (exactly zero in
# exact arithmetic) differs by 60% of itself and T5's gradients by up to 6% of their largest value, on both
# sides of the comparison alike. So a bf16 result is held to the accuracy of the baseline's own bf16
# result: both are compared with an fp32 computation of the baseline (the same bf16-rounded weights,
# upcast), and per tensor the ZeRO-3 error may be at most LOW_PRECISION_FACTOR times the baseline's own
# maximum error plus one rounding of the tensor's largest value (the criterion FlashAttention's tests use
# for low-precision kernels). Measured, six families at world sizes 2 and 3: the ratio is at most 1.007.
LOW_PRECISION_FACTOR = 2.0
# A tensor whose exact value cancels to about zero (an attention key bias's gradient: softmax is invariant to it)
# comes out of a bf16 computation as rounding noise of the terms summed, on both sides: where the baseline's own
# error is at least the tensor's largest exact value, its bf16 result has no significant digit, and the error
# criterion above (which scales with the result, not with the terms) would compare two noises. Such a tensor is
# not compared in that precision, said so in the metrics; the fp32 cases compare it.
NO_SIGNIFICANT_DIGIT = "no significant digit in {dtype}: the baseline's own error is as large as its exact value"
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "bf16": 2.0**-8}  # half the gap between 1 and the next number
STEPS = 3  # optimizer steps compared by N3


def optimizer_for(name: str, params: Any) -> Any:
    """The client optimizer both sides step with."""
    torch = _torch()
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    # AdamW's update lr * m / (sqrt(v) + eps) amplifies a gradient difference by up to lr / (4 * eps). Where the
    # ranks' gradients nearly cancel, their sum keeps fp32 noise of about 1e-8 from the large terms; eps 1e-4
    # keeps that below 3e-8 in the parameters (eps 1e-8 would make it O(lr)), while a wrong optimizer state,
    # step count or weight decay still moves parameters by O(lr) = 1e-3.
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3, eps=1e-4, weight_decay=0.01)
    raise ValueError(f"unknown optimizer {name!r}")


# Config sections that change the arithmetic on one side only; the checks run without them (everything
# else in a user's config — buckets, persistence thresholds, offload — is kept, and is what is checked).
# Global-norm gradient clipping (norms taken across every rank's partitions) is part of what N3 checks: the
# user's value, else this one, set explicitly on both sides since DeepSpeed's default differs by release.
DEFAULT_CLIPPING = 1.0
_NUMERIC = dict(layouts=("safetensors",), world_sizes=(2, 3))


def _torch() -> Any:
    import torch

    return torch


def _dtype(case: Case) -> Any:
    return torch_dtype(case.dtype)


def batch_for(case: Case, step: int, rank: int) -> dict[str, Any]:
    try:
        return training_batch(case.model_class(), case.model_config(), seed=SEED + 1000 * step + rank)
    except InputsUnavailable as exc:
        raise NotApplicable(str(exc)) from None


def deepspeed_engine(case: Case, model: Any, optimizer: str | None, **zero_options: Any) -> Any:
    """The case's DeepSpeed config (less NEUTRALIZED, plus `zero_options`) wrapped around `model`."""
    import deepspeed

    config = engine_config(case.ds_config)
    config["zero_optimization"] = {**config.get("zero_optimization", {}), **zero_options}
    # A client optimizer other than Adam(W) needs DeepSpeed's explicit consent under ZeRO.
    config.update(zero_allow_untested_optimizer=True, gradient_clipping=_clipping(case))
    client_optimizer = optimizer_for(optimizer, model.parameters()) if optimizer else None
    with case.subject_call("deepspeed.initialize"):
        engine, *_ = deepspeed.initialize(model=model, optimizer=client_optimizer, config=config)
    engine.eval()
    case.on_close(getattr(engine, "destroy", lambda: None))
    return engine


def _clipping(case: Case) -> float:
    return float(case.ds_config.get("gradient_clipping", DEFAULT_CLIPPING))


def _baseline(case: Case) -> Any:
    model, _ = case.baseline_from_pretrained(dtype=_dtype(case))
    unwritten = undefined(full_parameters(model))
    if unwritten:
        raise NotApplicable(f"without ZeRO, transformers leaves {', '.join(unwritten)} uninitialized when it loads "
                            f"this checkpoint (memory no init wrote, filled with NaN here): its outputs are undefined")
    # Every floating parameter in the training dtype, as in the ZeRO-3 model (P5), buffers untouched: a
    # loader that keeps some modules in fp32 (T5's `_keep_in_fp32_modules`) would otherwise compute otherwise.
    for param in model.parameters():
        if param.is_floating_point():
            param.data = param.data.to(_dtype(case))
    return model.eval()


def _pair(case: Case, optimizer: str | None = None) -> tuple[Any, Any]:
    """(baseline model, ZeRO-3 engine over the subject's model), both from the same checkpoint."""
    baseline = _baseline(case)
    model, _ = case.zero3_from_pretrained(dtype=_dtype(case))  # as the baseline was built: only ZeRO-3 differs
    return baseline, deepspeed_engine(case, model, optimizer)


def _accumulation_dtype(model: Any) -> Any:
    """fp32, as DeepSpeed accumulates and keeps master weights; fp64 for the fp64 computation."""
    torch = _torch()
    return torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32


def _baseline_gradients(case: Case, baseline: Any, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The global batch's gradients as data parallelism defines them: each rank's batch backpropagated on
    its own, the results averaged in fp32. Returns (average, mean of the ranks' magnitudes) per parameter.

    Every rank holds the same baseline, so each backpropagates only its own batch and the ranks exchange
    the results; all_gather copies them exactly, and every rank sums them in rank order. That is bit for bit
    what one process backpropagating every rank's batch in turn gets, at 1/world of the cost."""
    torch = _torch()
    baseline.zero_grad(set_to_none=True)
    batch = _inputs_for(baseline, batch_for(case, step, case.rank))
    with case.baseline_call(f"{type(baseline).__name__}'s forward and backward ({case.dtype})"):
        baseline(**batch).loss.backward()
    params = list(baseline.named_parameters())
    # One flat fp32 vector per rank, and which parameters got a gradient (MoE experts a batch skips do not).
    exchanged = _accumulation_dtype(baseline)
    flat = torch.cat([(p.grad.to(exchanged) if p.grad is not None else torch.zeros_like(p, dtype=exchanged)).reshape(-1)
                      for _, p in params])
    has_grad = torch.tensor([p.grad is not None for _, p in params], dtype=torch.float32)
    baseline.zero_grad(set_to_none=True)
    flats, masks = _gathered(case, flat), _gathered(case, has_grad)
    total: dict[str, Any] = {}
    magnitude: dict[str, Any] = {}
    for rank_flat, rank_mask in zip(flats, masks):
        offset = 0
        for index, (name, param) in enumerate(params):
            grad = rank_flat[offset:offset + param.numel()].view(param.shape)
            offset += param.numel()
            if not rank_mask[index]:
                continue
            total[name] = total[name] + grad if name in total else grad
            magnitude[name] = magnitude[name] + grad.abs() if name in magnitude else grad.abs()
    return ({name: t / case.world_size for name, t in total.items()},
            {name: m / case.world_size for name, m in magnitude.items()})


def _gathered(case: Case, tensor: Any) -> list[Any]:
    """Every rank's `tensor`, in rank order, on the CPU."""
    import torch.distributed as dist

    if case.world_size == 1:
        return [tensor]
    local = tensor.to(case.device)
    everyone = [_torch().empty_like(local) for _ in range(case.world_size)]
    dist.all_gather(everyone, local)
    return [t.cpu() for t in everyone]


def _averaging_error_bound(case: Case, magnitude: dict[str, Any]) -> dict[str, Any]:
    """How far DeepSpeed's average of the ranks' gradients may lie from the exact one, elementwise. It sums
    in the training dtype, in an order the baseline cannot know: by the standard bound for floating-point
    summation each of the world - 1 additions and the division round by at most the dtype's unit
    roundoff times the sum of the magnitudes. In fp32 this is far below the tolerance; in bf16 it is
    what cancellation between ranks' gradients needs."""
    unit_roundoff = UNIT_ROUNDOFF[case.dtype]
    return {name: case.world_size * unit_roundoff * m for name, m in magnitude.items()}


def _any_rank(case: Case, flag: bool) -> bool:
    """Whether `flag` holds on some rank (a collective: every rank calls it)."""
    import torch.distributed as dist

    if case.world_size == 1:
        return flag
    torch = _torch()
    held = torch.tensor([int(flag)], device=case.device)
    dist.all_reduce(held, op=dist.ReduceOp.MAX)
    return bool(held.item())


def _plus(extra: dict[str, Any] | None, more: dict[str, Any]) -> dict[str, Any]:
    return {name: a + extra[name] if extra is not None and name in extra else a for name, a in more.items()}


def _compare(case: Case, what: str, baseline: dict[str, Any], got: dict[str, Any],
             reference: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
             step: int | None = None, in_fp64: Callable[[], dict[str, Any] | None] | None = None) -> dict[str, str]:
    """Fails the case if `got` (the ZeRO-3 side) is not close to the baseline: in fp32 elementwise within
    TOLERANCES, plus the baseline's own fp32 error against `in_fp64()` (the same quantities in fp64, computed
    on every rank once some rank's fixed tolerance fails); in low precision by the baseline's own error
    against `reference`, the same quantities computed in fp32. `extra` adds an elementwise allowance per
    tensor (averaging rounding). Returns the tensors left uncompared, with the reason (NO_SIGNIFICANT_DIGIT)."""
    when = f" after step {step}" if step is not None else ""
    uncompared: dict[str, str] = {}
    if reference is None:
        rtol, atol = TOLERANCES[case.dtype]
        problem = closeness_problem(baseline, got, rtol, atol, extra)
        criterion = f"rtol={rtol:g}, atol={atol:g}"
        if in_fp64 is not None and _any_rank(case, problem is not None):
            exact = in_fp64()
            if exact is None:
                criterion += "; an fp64 computation to measure the baseline's own fp32 error raised"
            else:
                conditioning = _low_precision_allowance(case, _own_errors(exact, baseline))
                problem = closeness_problem(baseline, got, rtol, atol, _plus(extra, conditioning))
                criterion += (f" + per tensor {LOW_PRECISION_FACTOR:g} x the baseline's own fp32 max error against "
                              f"an fp64 computation + one fp32 rounding of the largest value")
    else:
        errors = _own_errors(reference, baseline)
        uncompared = {name: NO_SIGNIFICANT_DIGIT.format(dtype=case.dtype)
                      for name, (own, largest) in sorted(errors.items()) if own > 0 and own >= largest}
        reference = {name: t for name, t in reference.items() if name not in uncompared}
        allowance = _plus(extra, _low_precision_allowance(case, errors))
        problem = closeness_problem(reference, got, 0.0, 0.0, allowance)
        criterion = (f"expected: an fp32 computation; allowed per tensor {LOW_PRECISION_FACTOR:g} x the "
                     f"baseline's own {case.dtype} max error + one {case.dtype} rounding of the largest value")
    if problem:
        case.fail(f"{what}{when} (rank {case.rank}, {case.dtype}, {criterion}): {problem}", *problem.fields)
    return uncompared


def _own_errors(reference: dict[str, Any], baseline: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Per tensor of both: the baseline's largest error against `reference` and the largest exact value (fp64)."""
    errors = {}
    for name, exact in reference.items():
        if name not in baseline:
            continue
        exact = exact.detach().double()
        if exact.numel() == 0:
            errors[name] = (exact.new_zeros(()), exact.new_zeros(()))
            continue
        errors[name] = ((baseline[name].detach().double() - exact).abs().max(), exact.abs().max())
    return errors


def _low_precision_allowance(case: Case, errors: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    return {name: LOW_PRECISION_FACTOR * own + UNIT_ROUNDOFF[case.dtype] * largest
            for name, (own, largest) in errors.items()}


def _fp32_reference(case: Case, baseline: Any) -> Any | None:
    """The baseline in fp32 with its (training-dtype) weights upcast, for low-precision cases; else None."""
    if case.dtype == "fp32":
        return None
    return copy.deepcopy(baseline).float()


def _in_fp64(baseline: Any, compute: Callable[[Any], dict[str, Any]]) -> Callable[[], dict[str, Any] | None]:
    """`compute` on an fp64 copy of the baseline, deferred; None where the model does not run in fp64."""
    def run() -> dict[str, Any] | None:
        try:
            return compute(copy.deepcopy(baseline).double())
        except Exception:  # noqa: BLE001 - a model that cannot run in fp64 keeps the fixed tolerance alone
            return None
    return run


def _inputs_for(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch, its floating inputs (pixel values, audio) in fp64 for a model in fp64."""
    torch = _torch()
    if next(model.parameters()).dtype != torch.float64:
        return batch
    return {k: v.double() if torch.is_floating_point(v) else v for k, v in batch.items()}


def _outputs(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    output = model(**_inputs_for(model, batch))
    return {"logits": output.logits, "loss": output.loss}


@check("N1", "forward_matches_baseline", dtypes=("fp32", "bf16"), **_NUMERIC)
def forward_matches_baseline(case: Case) -> None:
    """Logits and loss from the DeepSpeed engine equal the baseline's on the same inputs."""
    torch = _torch()
    baseline, engine = _pair(case)
    reference = _fp32_reference(case, baseline)
    batch = batch_for(case, 0, case.rank)
    with torch.no_grad():
        with case.baseline_call(f"{type(baseline).__name__}'s forward ({case.dtype})"):
            expected = _outputs(baseline, batch)
            exact = _outputs(reference, batch) if reference is not None else None
        with case.subject_call("engine forward"):
            got = _outputs(engine, batch)
    with torch.no_grad():
        uncompared = _compare(case, "forward", expected, got, exact,
                              in_fp64=_in_fp64(baseline, lambda m: _outputs(m, batch)))
    case.count("outputs", [name for name in expected if name in got and name not in uncompared], expected,
               uncompared)


def _full_gradients(model: Any) -> dict[str, Any]:
    from deepspeed.utils import safe_get_full_grad

    grads = {}
    for name, param in model.named_parameters():  # same order on every rank: each call is a collective
        grad = safe_get_full_grad(param)
        grads[name] = grad.detach().clone() if grad is not None else None
    return grads


@check("N2", "gradients_match_baseline", dtypes=("fp32", "bf16"), **_NUMERIC)
def gradients_match_baseline(case: Case) -> None:
    """Full gradients (safe_get_full_grad) equal the baseline's for the same global batch."""
    baseline, engine = _pair(case, optimizer="sgd_momentum")
    reference = _fp32_reference(case, baseline)
    expected, magnitude = _baseline_gradients(case, baseline, 0)
    exact = _baseline_gradients(case, reference, 0)[0] if reference is not None else None
    batch = batch_for(case, 0, case.rank)
    with case.subject_call("engine forward/backward"):
        engine.backward(engine(**batch).loss)
    got = _full_gradients(engine.module)
    missing = sorted(name for name, grad in got.items() if grad is None and name in expected)
    case.expect(not missing, f"no gradient from safe_get_full_grad for {missing[:5]} (rank {case.rank})",
                "gradient_missing", ", ".join(missing[:20]), "a gradient", "None")
    uncompared = _compare(case, "gradients", expected, {k: v for k, v in got.items() if v is not None}, exact,
                          extra=_averaging_error_bound(case, magnitude),
                          in_fp64=_in_fp64(baseline, lambda m: _baseline_gradients(case, m, 0)[0]))
    reasons = {**_without_gradient(baseline, expected), **dict.fromkeys(missing, "no gradient from the subject"),
               **uncompared}
    case.count("gradients", [name for name in expected if got.get(name) is not None and name not in uncompared],
               case.clean_names("parameters", dict(baseline.named_parameters())), reasons)


def _without_gradient(baseline: Any, gradients: dict[str, Any]) -> dict[str, str]:
    """Why a parameter has no gradient to compare: none without ZeRO either (the batch does not reach it, or it
    is frozen)."""
    return {name: "frozen" if not param.requires_grad else "no gradient without ZeRO (the batch does not reach it)"
            for name, param in baseline.named_parameters() if name not in gradients}


def _baseline_steps(case: Case, baseline: Any, optimizer: str, stepped: set[str] | None = None) -> dict[str, Any]:
    """The baseline's fp32 master weights after STEPS steps; its parameters are left at their values in
    its own dtype. The master weights are kept apart, as DeepSpeed's optimizer keeps them in low precision.
    `stepped` collects the parameters that got a gradient in some step (torch's optimizers skip the others)."""
    torch = _torch()
    master = {name: p.detach().to(_accumulation_dtype(baseline)).clone().requires_grad_(True)
              for name, p in baseline.named_parameters()}
    baseline_optimizer = optimizer_for(optimizer, list(master.values()))
    clipping = _clipping(case)
    for step in range(STEPS):
        gradients, _ = _baseline_gradients(case, baseline, step)
        if stepped is not None:
            stepped.update(gradients)
        for name, p in master.items():
            p.grad = gradients.get(name)
        if clipping > 0:
            torch.nn.utils.clip_grad_norm_(list(master.values()), clipping)
        baseline_optimizer.step()
        with torch.no_grad():
            for name, p in baseline.named_parameters():
                p.copy_(master[name].to(p.dtype))
    return {name: p.detach() for name, p in master.items()}


def _steps_match(case: Case, optimizer: str) -> None:
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    baseline, engine = _pair(case, optimizer)
    reference = _fp32_reference(case, baseline)
    pristine = copy.deepcopy(baseline) if reference is None else None  # the fp64 computation starts from here
    stepped: set[str] = set()
    expected_master = _baseline_steps(case, baseline, optimizer, stepped)
    exact = _baseline_steps(case, reference, optimizer) if reference is not None else None
    for step in range(STEPS):
        batch = batch_for(case, step, case.rank)
        with case.subject_call(f"engine step {step}"):
            engine.backward(engine(**batch).loss)
            engine.step()
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        got = {name: p.detach().clone() for name, p in engine.module.named_parameters()}
    expected = {n: p.detach() for n, p in baseline.named_parameters()}
    got_master = ({name: safe_get_full_fp32_param(p) for name, p in engine.module.named_parameters()}
                  if reference is not None else {})
    # Parameters the batches never reach (e.g. a vision tower under text inputs) get no gradient: torch's
    # optimizer leaves them as they are, so the ZeRO-3 side must too (its fp32 master weights included).
    # Said apart, as its own finding.
    untouched = sorted(set(expected) - stepped)
    for what, want, have in (("", expected, got), ("fp32 master weights of ", expected_master, got_master)):
        changed = [n for n in untouched if have.get(n) is not None and exact_mismatch(n, want[n], have[n])]
        if changed:
            case.fail(f"{what}parameters that got no gradient in any of the {STEPS} steps changed ({optimizer}, "
                      f"rank {case.rank}): {len(changed)} of {len(untouched)} tensors, expected unchanged as torch's "
                      f"optimizer leaves them; first {exact_mismatch(changed[0], want[changed[0]], have[changed[0]])}",
                      "changed_without_gradient", ", ".join(changed[:20]), "unchanged",
                      f"{len(changed)} of {len(untouched)} changed")

    def stepped_only(tensors: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if tensors is None else {n: t for n, t in tensors.items() if n in stepped and t is not None}

    exact = stepped_only(exact)
    uncompared = _compare(case, f"parameters ({optimizer})", stepped_only(expected), stepped_only(got), exact,
                          step=STEPS,
                          in_fp64=_in_fp64(pristine, lambda m: stepped_only(_baseline_steps(case, m, optimizer))))
    if reference is not None:
        # In low precision the optimizer's fp32 master weights carry what rounding to the model's dtype hides.
        in_master = _compare(case, f"fp32 master weights ({optimizer})", stepped_only(expected_master),
                             stepped_only(got_master), exact, step=STEPS)
        uncompared = {name: why for name, why in uncompared.items() if name in in_master}
    # Every parameter is compared: those stepped within the tolerance, the others as unchanged.
    case.count("parameters", [name for name in expected if got.get(name) is not None and name not in uncompared],
               case.clean_names("parameters", expected), uncompared)


@check("N3", "sgd_momentum_steps_match_baseline", dtypes=("fp32", "bf16"), **_NUMERIC)
def sgd_momentum_steps_match_baseline(case: Case) -> None:
    """Parameters after 3 steps of SGD with momentum equal the baseline's after the same steps."""
    _steps_match(case, "sgd_momentum")


@check("N3", "adamw_steps_match_baseline", dtypes=("fp32", "bf16"), **_NUMERIC)
def adamw_steps_match_baseline(case: Case) -> None:
    """Parameters after 3 steps of AdamW equal the baseline's after the same steps."""
    _steps_match(case, "adamw")


# N4: rank r gets a prompt of PROMPT_LENGTH + 2r tokens and asks for NEW_TOKENS + 3r, so the ranks finish
# at different steps: a rank that stops stepping while the others still gather parameters hangs them.
PROMPT_LENGTH, NEW_TOKENS = 3, 2
GENERATE_TIMEOUT_S = 45.0  # generating a dozen tokens takes a few seconds even on a loaded machine
GENERATIVE = ("gpt2", "llama", "qwen3", "t5", "mixtral")  # bert's sequence classifier does not generate


def _prompt(case: Case) -> dict[str, Any]:
    torch = _torch()
    generator = torch.Generator().manual_seed(SEED + 77 + case.rank)
    length = PROMPT_LENGTH + 2 * case.rank
    try:
        vocab = vocabulary(case.model_config())
    except InputsUnavailable as exc:
        raise NotApplicable(str(exc)) from None
    input_ids = torch.randint(FIRST_ORDINARY_TOKEN, vocab, (1, length), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


@check("N4", "generate_matches_baseline", families=GENERATIVE, timeout_s=GENERATE_TIMEOUT_S, **_NUMERIC)
def generate_matches_baseline(case: Case) -> None:
    """Greedy generate with a different prompt length and max_new_tokens per rank finishes and returns the
    baseline's tokens on every rank."""
    baseline = _baseline(case)
    if not baseline.can_generate():
        raise NotApplicable(f"{type(baseline).__name__} cannot generate")
    model, _ = case.zero3_from_pretrained(dtype=_dtype(case))
    engine = deepspeed_engine(case, model, optimizer=None)
    config = baseline.config
    text = compat.text_config(config)  # a composite model's token ids live in its text part
    pad = next((t for t in (getattr(text, "pad_token_id", None), getattr(text, "eos_token_id", None)) if t is not None),
               None)
    options = dict(do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS + 3 * case.rank,
                   **({"pad_token_id": pad} if pad is not None else {}))
    prompt = _prompt(case)
    torch = _torch()
    with torch.no_grad():
        # Every rank learns whether any baseline raised (a prompt longer than the model's positions, on the rank
        # with the longest one) before the subject's generate, whose collectives need every rank.
        try:
            with case.baseline_call(f"{type(baseline).__name__}.generate"):
                expected = baseline.generate(**prompt, **options)
            raised = None
        except NotApplicable as exc:
            raised = exc
        if _any_rank(case, raised is not None):
            raise raised or NotApplicable(f"without ZeRO, {type(baseline).__name__}.generate raises on another rank "
                                          f"(a longer prompt or more new tokens there)")
        with case.subject_call("generate"):
            got = case.subject.generate(engine.module, **prompt, **options)
    case.metrics["new_tokens_by_rank_0"] = int(expected.shape[-1] - (0 if getattr(config, "is_encoder_decoder", False)
                                                                      else prompt["input_ids"].shape[-1]))
    case.count("generated sequences", ["sequences"], ["sequences"])
    if tuple(got.shape) != tuple(expected.shape) or not torch.equal(got, expected):
        case.fail(f"generate (rank {case.rank}, prompt of {prompt['input_ids'].shape[-1]} tokens, "
                  f"max_new_tokens={options['max_new_tokens']}): expected tokens {expected.tolist()}, "
                  f"got {got.tolist()}", "generation_differs", "sequences", expected.tolist(), got.tolist())
