"""N — a ZeRO-3 model computes and trains like the baseline: forward, backward, optimizer steps.

Both sides load the same checkpoint. Each rank feeds the engine its own batch (data parallelism);
the baseline, in the same process, runs every rank's batch and averages the gradients, which is the
global batch as data parallelism defines it, so gradients and steps are comparable. Dropout is off on
both sides (eval mode): the checks are about ZeRO-3, not about random masks.
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional

from ..zoo import FamilyUnavailable, training_batch
from .base import SEED, Case, NotApplicable, check
from .tensors import closeness_problem

# (rtol, atol) per training dtype. fp32: what the contract asks. bf16: torch.testing's defaults for bfloat16
# (8 bits of mantissa), the usual tolerance for that dtype.
TOLERANCES = {"fp32": (1e-5, 1e-6), "bf16": (1.6e-2, 1e-5)}
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "bf16": 2.0**-8}  # half the gap between 1 and the next number
STEPS = 3  # optimizer steps compared by N3
OPTIMIZERS: dict[str, Callable[[Any], Any]] = {
    "sgd_momentum": lambda params: _torch().optim.SGD(params, lr=0.05, momentum=0.9),
    # AdamW's update lr * m / (sqrt(v) + eps) amplifies a gradient difference by up to lr / (4 * eps). Where the
    # ranks' gradients nearly cancel, their sum keeps fp32 noise of about 1e-8 from the large terms; eps 1e-4
    # keeps that below 3e-8 in the parameters (eps 1e-8 would make it O(lr)), while a wrong optimizer state,
    # step count or weight decay still moves parameters by O(lr) = 1e-3.
    "adamw": lambda params: _torch().optim.AdamW(params, lr=1e-3, eps=1e-4, weight_decay=0.01),
}
# Config sections that change the arithmetic on one side only; the checks run without them (everything
# else in a user's config — buckets, persistence thresholds, offload — is kept, and is what is checked).
NEUTRALIZED = ("optimizer", "scheduler", "train_batch_size")
# Global-norm gradient clipping (norms taken across every rank's partitions) is part of what N3 checks: the
# user's value, else this one, set explicitly on both sides since DeepSpeed's default differs by release.
DEFAULT_CLIPPING = 1.0
_NUMERIC = dict(layouts=("safetensors",), world_sizes=(2, 3))


def _torch() -> Any:
    import torch

    return torch


def _dtype(case: Case) -> Any:
    return {"fp32": _torch().float32, "bf16": _torch().bfloat16}[case.dtype]


def batch_for(case: Case, step: int, rank: int) -> dict[str, Any]:
    try:
        return training_batch(case.require_family(), case.model_config(), seed=SEED + 1000 * step + rank)
    except FamilyUnavailable as exc:
        raise NotApplicable(str(exc)) from None


def deepspeed_engine(case: Case, model: Any, optimizer: Optional[str], **zero_options: Any) -> Any:
    """The case's DeepSpeed config (less NEUTRALIZED, plus `zero_options`) wrapped around `model`."""
    import deepspeed

    config = copy.deepcopy(case.ds_config)
    for key in NEUTRALIZED:
        config.pop(key, None)
    config["zero_optimization"] = {**config.get("zero_optimization", {}), **zero_options}
    # A client optimizer other than Adam(W) needs DeepSpeed's explicit consent under ZeRO.
    config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, zero_allow_untested_optimizer=True,
                  gradient_clipping=_clipping(case))
    client_optimizer = OPTIMIZERS[optimizer](model.parameters()) if optimizer else None
    with case.subject_call("deepspeed.initialize"):
        engine, *_ = deepspeed.initialize(model=model, optimizer=client_optimizer, config=config)
    engine.eval()
    case.on_close(getattr(engine, "destroy", lambda: None))
    return engine


def _clipping(case: Case) -> float:
    return float(case.ds_config.get("gradient_clipping", DEFAULT_CLIPPING))


def _baseline(case: Case) -> Any:
    model, _ = case.baseline_from_pretrained(dtype=_dtype(case))
    # Every floating parameter in the training dtype, as in the ZeRO-3 model (P5), buffers untouched: a
    # loader that keeps some modules in fp32 (T5's `_keep_in_fp32_modules`) would otherwise compute otherwise.
    for param in model.parameters():
        if param.is_floating_point():
            param.data = param.data.to(_dtype(case))
    return model.eval()


def _pair(case: Case, optimizer: Optional[str] = None) -> tuple[Any, Any]:
    """(baseline model, ZeRO-3 engine over the subject's model), both from the same checkpoint."""
    baseline = _baseline(case)
    config_object, model, _ = case.zero3_from_pretrained()
    case.keep(config_object)
    return baseline, deepspeed_engine(case, model, optimizer)


def _baseline_gradients(case: Case, baseline: Any, step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The global batch's gradients as data parallelism defines them: each rank's batch backpropagated on
    its own, the results averaged in fp32. Returns (average, mean of the ranks' magnitudes) per parameter."""
    total: dict[str, Any] = {}
    magnitude: dict[str, Any] = {}
    for rank in range(case.world_size):
        baseline.zero_grad(set_to_none=True)
        baseline(**batch_for(case, step, rank)).loss.backward()
        for name, param in baseline.named_parameters():
            if param.grad is not None:
                grad = param.grad.float()
                total[name] = total[name] + grad if name in total else grad
                magnitude[name] = magnitude[name] + grad.abs() if name in magnitude else grad.abs()
    baseline.zero_grad(set_to_none=True)
    return ({name: t / case.world_size for name, t in total.items()},
            {name: m / case.world_size for name, m in magnitude.items()})


def _averaging_error_bound(case: Case, magnitude: dict[str, Any]) -> dict[str, Any]:
    """How far DeepSpeed's average of the ranks' gradients may lie from the exact one, elementwise. It sums
    in the training dtype, in an order the baseline cannot know: by the standard bound for floating-point
    summation each of the world - 1 additions and the division round by at most the dtype's unit
    roundoff times the sum of the magnitudes. In fp32 this is far below the tolerance; in bf16 it is
    what cancellation between ranks' gradients needs."""
    unit_roundoff = UNIT_ROUNDOFF[case.dtype]
    return {name: case.world_size * unit_roundoff * m for name, m in magnitude.items()}


def _report(case: Case, what: str, expected: dict[str, Any], got: dict[str, Any], step: Optional[int] = None,
            extra: Optional[dict[str, Any]] = None) -> None:
    rtol, atol = TOLERANCES[case.dtype]
    problem = closeness_problem(expected, got, rtol, atol, extra)
    if problem:
        when = f" after step {step}" if step is not None else ""
        case.fail(f"{what}{when} (rank {case.rank}, {case.dtype}, rtol={rtol:g}, atol={atol:g}): {problem}")


@check("N1", "forward_matches_baseline", dtypes=("fp32", "bf16"), **_NUMERIC)
def forward_matches_baseline(case: Case) -> None:
    """Logits and loss from the DeepSpeed engine equal the baseline's on the same inputs."""
    torch = _torch()
    baseline, engine = _pair(case)
    batch = batch_for(case, 0, case.rank)
    with torch.no_grad():
        expected = baseline(**batch)
        with case.subject_call("engine forward"):
            got = engine(**batch)
    _report(case, "forward", {"logits": expected.logits, "loss": expected.loss},
            {"logits": got.logits, "loss": got.loss})


def _full_gradients(model: Any) -> dict[str, Any]:
    from deepspeed.utils import safe_get_full_grad

    grads = {}
    for name, param in model.named_parameters():  # same order on every rank: each call is a collective
        grad = safe_get_full_grad(param)
        grads[name] = grad.detach().clone() if grad is not None else None
    return grads


@check("N2", "gradients_match_baseline", **_NUMERIC)
def gradients_match_baseline(case: Case) -> None:
    """Full gradients (safe_get_full_grad) equal the baseline's for the same global batch."""
    baseline, engine = _pair(case, optimizer="sgd_momentum")
    expected, magnitude = _baseline_gradients(case, baseline, 0)
    batch = batch_for(case, 0, case.rank)
    with case.subject_call("engine forward/backward"):
        engine.backward(engine(**batch).loss)
    got = _full_gradients(engine.module)
    missing = sorted(name for name, grad in got.items() if grad is None and name in expected)
    case.expect(not missing, f"no gradient from safe_get_full_grad for {missing[:5]} (rank {case.rank})")
    _report(case, "gradients", expected, {k: v for k, v in got.items() if v is not None},
            extra=_averaging_error_bound(case, magnitude))


def _steps_match(case: Case, optimizer: str) -> None:
    import deepspeed

    torch = _torch()
    baseline, engine = _pair(case, optimizer)
    # The baseline keeps fp32 master weights, as DeepSpeed's optimizer does for bf16 training.
    master = {name: p.detach().float().clone().requires_grad_(True) for name, p in baseline.named_parameters()}
    baseline_optimizer = OPTIMIZERS[optimizer](list(master.values()))
    clipping = _clipping(case)
    for step in range(STEPS):
        gradients, _ = _baseline_gradients(case, baseline, step)
        for name, p in master.items():
            p.grad = gradients.get(name)
        if clipping > 0:
            torch.nn.utils.clip_grad_norm_(list(master.values()), clipping)
        baseline_optimizer.step()
        with torch.no_grad():
            for name, p in baseline.named_parameters():
                p.copy_(master[name].to(p.dtype))
        batch = batch_for(case, step, case.rank)
        with case.subject_call(f"engine step {step}"):
            engine.backward(engine(**batch).loss)
            engine.step()
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        got = {name: p.detach().clone() for name, p in engine.module.named_parameters()}
    _report(case, f"parameters ({optimizer})", {n: p.detach() for n, p in baseline.named_parameters()}, got,
            step=STEPS)


@check("N3", "sgd_momentum_steps_match_baseline", **_NUMERIC)
def sgd_momentum_steps_match_baseline(case: Case) -> None:
    """Parameters after 3 steps of SGD with momentum equal the baseline's after the same steps."""
    _steps_match(case, "sgd_momentum")


@check("N3", "adamw_steps_match_baseline", **_NUMERIC)
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
    input_ids = torch.randint(3, int(case.model_config().vocab_size), (1, length), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


@check("N4", "generate_matches_baseline", families=GENERATIVE, timeout_s=GENERATE_TIMEOUT_S, **_NUMERIC)
def generate_matches_baseline(case: Case) -> None:
    """Greedy generate with a different prompt length and max_new_tokens per rank finishes and returns the
    baseline's tokens on every rank."""
    baseline = _baseline(case)
    if not baseline.can_generate():
        raise NotApplicable(f"{type(baseline).__name__} cannot generate")
    config_object, model, _ = case.zero3_from_pretrained()
    case.keep(config_object)
    engine = deepspeed_engine(case, model, optimizer=None)
    config = baseline.config
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    options = dict(do_sample=False, num_beams=1, max_new_tokens=NEW_TOKENS + 3 * case.rank, pad_token_id=pad)
    prompt = _prompt(case)
    torch = _torch()
    with torch.no_grad():
        expected = baseline.generate(**prompt, **options)
        with case.subject_call("generate"):
            got = case.subject.generate(engine.module, **prompt, **options)
    case.metrics["new_tokens_by_rank_0"] = int(expected.shape[-1] - (0 if config.is_encoder_decoder
                                                                      else prompt["input_ids"].shape[-1]))
    if tuple(got.shape) != tuple(expected.shape) or not torch.equal(got, expected):
        case.fail(f"generate (rank {case.rank}, prompt of {prompt['input_ids'].shape[-1]} tokens, "
                  f"max_new_tokens={options['max_new_tokens']}): expected tokens {expected.tolist()}, "
                  f"got {got.tolist()}")
