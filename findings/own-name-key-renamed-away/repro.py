"""Reproduces N1-forward_matches_baseline[transformers-deepseek_v4.DeepseekV4ForCausalLM-safetensors-ws2-bf16]
with transformers, deepspeed and torch alone (no zero3-conformance).

Run it on a CPU machine:   DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 repro.py
On GPUs (NCCL):            torchrun --nproc-per-node 2 repro.py
Exit status 1: the clause is broken here, with the evidence printed; 0: it holds.
"""

from __future__ import annotations

import sys
import contextlib
import copy
import hashlib
import importlib
import inspect
import math
import os
import tempfile
import traceback
from packaging.version import Version
from pathlib import Path
from typing import Any, Callable, Iterator, Optional


# The case, as the harness made it.
CASE_ID = 'N1-forward_matches_baseline[transformers-deepseek_v4.DeepseekV4ForCausalLM-safetensors-ws2-bf16]'
MODEL_TYPE = 'deepseek_v4'
CONFIG = {'vocab_size': 131,
 'hidden_size': 64,
 'moe_intermediate_size': 32,
 'num_hidden_layers': 2,
 'num_attention_heads': 4,
 'head_dim': 16,
 'q_lora_rank': 16,
 'num_experts_per_tok': 2,
 'n_routed_experts': 4,
 'max_position_embeddings': 128,
 'layer_types': ['heavily_compressed_attention', 'heavily_compressed_attention'],
 'mlp_layer_types': ['hash_moe', 'hash_moe'],
 'sliding_window': 64,
 'index_head_dim': 16,
 'qk_rope_head_dim': 2}
MODEL_CLASS = 'DeepseekV4ForCausalLM'
CHECKPOINT_CLASS = 'DeepseekV4ForCausalLM'
LAYOUT = 'safetensors'
WORLD_SIZE = 2
DTYPE = 'bf16'
DS_CONFIG = {'train_micro_batch_size_per_gpu': 1,
 'gradient_accumulation_steps': 1,
 'zero_optimization': {'stage': 3, 'stage3_param_persistence_threshold': 128},
 'bf16': {'enabled': True}}
SHARD_SIZE = '40KB'


# The harness's check and every helper it calls, as the harness has them.


CHECKPOINT_SEED = 1234


CLASS_LABELS = ('ForSequenceClassification', 'ForImageClassification', 'ForAudioClassification')


DECODER_LABELS = ('ForCausalLM', 'LMHeadModel', 'ForMaskedLM')


DEFAULT_CLIPPING = 1.0


FIRST_ORDINARY_TOKEN = 3


class Findings:
    """What a check records on its rank (findings, values every rank must agree on, metrics), the objects it
    keeps alive until the case ends, and the builds it compares: the baseline's and the subject's. A subclass
    gives rank, world_size, device (where collectives put tensors), subject, layout, dtype, ds_config,
    checkpoint_path, model_class() and model_config(); a reproducer's stand-in for the case shares all the rest."""

    def __init__(self) -> None:
        self.findings: list[str] = []
        self.agreed: dict[str, str] = {}
        self.metrics: dict[str, Any] = {}
        # Baseline models live until the case ends: freed, their memory could be handed to a subject's
        # uninitialized tensor, which would then hold exactly the baseline's values and pass.
        self._kept: list[Any] = []
        self._closers: list[Callable[[], Any]] = []

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

    def fail(self, message: str) -> None:
        self.findings.append(message)

    def expect(self, condition: bool, message: str) -> bool:
        if not condition:
            self.fail(message)
        return bool(condition)

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
        except Exception as exc:  # noqa: BLE001 - any exception from the subject is the finding
            tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]).strip()
            raise SubjectRaised(f"{self.subject.name} raised during {what}: {type(exc).__name__}: {exc}\n{tail}") \
                from exc

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

    # --- the baseline's and the subject's builds (a subclass gives model_class, model_config) ------
    def seed(self, offset: int = 0) -> None:
        import torch

        torch.manual_seed(SEED + offset)

    def baseline_from_config(self, seed_offset: int = 0, dtype: Any = None) -> Any:
        """The case's model built with no ZeRO config alive (the baseline)."""
        self.seed(seed_offset)
        cls, config = self.model_class(), self.model_config()
        try:
            with uninitialized_memory_filled():
                model = build_from_config(cls, config, dtype)
        except Exception as exc:  # noqa: BLE001 - without ZeRO there is no contract to check
            raise NotApplicable(f"{cls.__name__} does not build from this config even without ZeRO: "
                                f"{exception_line(exc)}") from None
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
            with uninitialized_memory_filled():
                model, info = cls.from_pretrained(self.checkpoint_path, output_loading_info=True,
                                                  trust_remote_code=False, **dtype_kwarg(dtype))
        except Exception as exc:  # noqa: BLE001 - without ZeRO there is no contract to check
            raise NotApplicable(f"{cls.__name__} does not load this checkpoint even without ZeRO: "
                                f"{exception_line(exc)}") from None
        return self.keep(model), info

    def zero3_from_config(self) -> tuple[Any, Any]:
        """(config object, model) built by the subject under its stage-3 config."""
        with self.subject_call("config construction"):
            config_object = self.subject.make_config(self.ds_config)
        self.seed()
        with self.subject_call("from_config"):
            model = self.subject.from_config(self.model_class(), self.model_config())
        return config_object, model

    def zero3_from_pretrained(self, model_class: Any = None, path: Any = None,
                              ds_config: Optional[dict[str, Any]] = None, what: str = "",
                              **options: Any) -> tuple[Any, Any, dict[str, Any]]:
        """(config object, model, loading report) from the subject under its stage-3 config: the case's class,
        checkpoint and config unless given; `options` are from_pretrained's, `what` names them in findings."""
        self.require_loadable_layout()
        with self.subject_call("config construction"):
            config_object = self.subject.make_config(self.ds_config if ds_config is None else ds_config)
        self.seed()
        with self.subject_call(f"from_pretrained({what or self.layout})"):
            model, info = self.subject.from_pretrained(model_class or self.model_class(),
                                                       str(path or self.checkpoint_path), **options)
        return config_object, model, info


class InputsUnavailable(Exception):
    """The harness cannot make the inputs this model needs (reported as a SKIP with this reason)."""


LOW_PRECISION_FACTOR = 2.0


MADE = ('input_ids', 'pixel_values', 'input_values')


NEUTRALIZED = ('optimizer', 'scheduler', 'train_batch_size')


class NotApplicable(Exception):
    """The check does not apply to this case (becomes SKIP with this reason)."""


class NotConvertible(NotImplementedError):
    """A conversion the installed transformers declares that the reference does not re-implement: the
    reference cannot load that checkpoint (a SKIP that says so, not a finding about the subject)."""


SEED = 20260101


SEQUENCE_LENGTH = 8


class SubjectRaised(Exception):
    """The subject raised while doing what the clause asks (becomes FAIL carrying that exception)."""


TOKEN_LABELS = ('ForCausalLM', 'LMHeadModel', 'ForMaskedLM', 'ForConditionalGeneration')


TOLERANCES = {'fp32': (1e-05, 1e-06)}


UNIT_ROUNDOFF = {'bf16': 0.00390625, 'fp32': 5.960464477539063e-08}


def _any_rank(case: Case, flag: bool) -> bool:
    """Whether `flag` holds on some rank (a collective: every rank calls it)."""
    import torch.distributed as dist

    if case.world_size == 1:
        return flag
    torch = _torch()
    held = torch.tensor([int(flag)], device=case.device)
    dist.all_reduce(held, op=dist.ReduceOp.MAX)
    return bool(held.item())


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


def _clipping(case: Case) -> float:
    return float(case.ds_config.get("gradient_clipping", DEFAULT_CLIPPING))


def _compare(case: Case, what: str, baseline: dict[str, Any], got: dict[str, Any],
             reference: Optional[dict[str, Any]] = None, extra: Optional[dict[str, Any]] = None,
             step: Optional[int] = None, in_fp64: Optional[Callable[[], Optional[dict[str, Any]]]] = None) -> None:
    """Fails the case if `got` (the ZeRO-3 side) is not close to the baseline: in fp32 elementwise within
    TOLERANCES, plus the baseline's own fp32 error against `in_fp64()` (the same quantities in fp64, computed
    on every rank once some rank's fixed tolerance fails); in low precision by the baseline's own error
    against `reference`, the same quantities computed in fp32. `extra` adds an elementwise allowance per
    tensor (averaging rounding)."""
    when = f" after step {step}" if step is not None else ""
    if reference is None:
        rtol, atol = TOLERANCES[case.dtype]
        problem = closeness_problem(baseline, got, rtol, atol, extra)
        criterion = f"rtol={rtol:g}, atol={atol:g}"
        if in_fp64 is not None and _any_rank(case, problem is not None):
            exact = in_fp64()
            if exact is None:
                criterion += "; an fp64 computation to measure the baseline's own fp32 error raised"
            else:
                conditioning = _low_precision_allowance(case, exact, baseline)
                problem = closeness_problem(baseline, got, rtol, atol, _plus(extra, conditioning))
                criterion += (f" + per tensor {LOW_PRECISION_FACTOR:g} x the baseline's own fp32 max error against "
                              f"an fp64 computation + one fp32 rounding of the largest value")
    else:
        allowance = _plus(extra, _low_precision_allowance(case, reference, baseline))
        problem = closeness_problem(reference, got, 0.0, 0.0, allowance)
        criterion = (f"expected: an fp32 computation; allowed per tensor {LOW_PRECISION_FACTOR:g} x the "
                     f"baseline's own {case.dtype} max error + one {case.dtype} rounding of the largest value")
    if problem:
        case.fail(f"{what}{when} (rank {case.rank}, {case.dtype}, {criterion}): {problem}")


def _dtype(case: Case) -> Any:
    return torch_dtype(case.dtype)


def _first_attr(candidates: list[tuple[str, str]]) -> Any:
    errors = []
    for module, name in candidates:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{module}.{name}: {exc}")
    raise ImportError("none of these exist in the installed version: " + "; ".join(errors))


def _fp32_reference(case: Case, baseline: Any) -> Optional[Any]:
    """The baseline in fp32 with its (training-dtype) weights upcast, for low-precision cases; else None."""
    if case.dtype == "fp32":
        return None
    return copy.deepcopy(baseline).float()


def _in_fp64(baseline: Any, compute: Callable[[Any], dict[str, Any]]) -> Callable[[], Optional[dict[str, Any]]]:
    """`compute` on an fp64 copy of the baseline, deferred; None where the model does not run in fp64."""
    def run() -> Optional[dict[str, Any]]:
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


def _low_precision_allowance(case: Case, reference: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    allowance = {}
    for name, exact in reference.items():
        if name not in baseline:
            continue
        exact = exact.detach().double()
        if exact.numel() == 0:
            allowance[name] = exact.new_zeros(())
            continue
        own_error = (baseline[name].detach().double() - exact).abs().max()
        allowance[name] = LOW_PRECISION_FACTOR * own_error + UNIT_ROUNDOFF[case.dtype] * exact.abs().max()
    return allowance


def _outputs(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    output = model(**_inputs_for(model, batch))
    return {"logits": output.logits, "loss": output.loss}


def _pair(case: Case, optimizer: Optional[str] = None) -> tuple[Any, Any]:
    """(baseline model, ZeRO-3 engine over the subject's model), both from the same checkpoint."""
    baseline = _baseline(case)
    config_object, model, _ = case.zero3_from_pretrained()
    case.keep(config_object)
    return baseline, deepspeed_engine(case, model, optimizer)


def _plus(extra: Optional[dict[str, Any]], more: dict[str, Any]) -> dict[str, Any]:
    return {name: a + extra[name] if extra is not None and name in extra else a for name, a in more.items()}


def _position(flat_index: int, shape: Any) -> tuple[int, ...]:
    import torch

    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), tuple(shape))) if len(shape) else ()


def _torch() -> Any:
    import torch

    return torch


def _torch_dtypes() -> dict[str, Any]:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def auto_class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def batch_for(case: Case, step: int, rank: int) -> dict[str, Any]:
    try:
        return training_batch(case.model_class(), case.model_config(), seed=SEED + 1000 * step + rank)
    except InputsUnavailable as exc:
        raise NotApplicable(str(exc)) from None


def build_from_config(model_class: Any, config: Any, dtype: Any = None) -> Any:
    """`from_config` of an Auto class, `_from_config` of a concrete one (which has no public from_config):
    the model the installed transformers builds from `config` in the current context."""
    if hasattr(model_class, "_model_mapping"):
        return model_class.from_config(config, **dtype_kwarg(dtype))
    return model_class._from_config(config, **dtype_kwarg(dtype))


def closeness_problem(expected: dict[str, Any], got: dict[str, Any], rtol: float, atol: float,
                      extra: Optional[dict[str, Any]] = None) -> Optional[str]:
    """None if every tensor is close (|got - expected| <= atol + rtol * |expected| + extra, elementwise, where
    `extra` optionally gives a tensor's own additional allowance); else how many are not and the worst of
    them: its name, max abs and rel difference, and where."""
    import torch

    worst: Optional[tuple[float, str]] = None
    failing = []
    for name in sorted(expected):
        if name not in got:
            failing.append(name)
            worst = worst or (float("inf"), f"{name}: missing")
            continue
        e, g = expected[name].detach().double(), got[name].detach().double()
        if e.shape != g.shape:
            failing.append(name)
            worst = (float("inf"), f"{name}: shape expected {tuple(e.shape)}, got {tuple(g.shape)}")
            continue
        diff = (e - g).abs()
        allowed = atol + rtol * e.abs()
        if extra is not None and name in extra:
            allowed = allowed + extra[name].double()
        excess = diff / allowed  # > 1 where the tolerance is broken
        excess[torch.isnan(diff)] = float("inf")
        if e.numel() == 0 or not bool((excess > 1).any()):
            continue
        failing.append(name)
        index = int(excess.reshape(-1).argmax())
        score = float(excess.reshape(-1)[index])
        if worst is None or score > worst[0]:
            position = _position(index, e.shape)
            rel = diff / e.abs().clamp_min(1e-30)
            worst = (score, f"worst {name}: max |diff| {float(diff.max()):.3g}, max rel diff {float(rel.max()):.3g}; "
                            f"at {position} expected {float(e.reshape(-1)[index]):.9g}, got "
                            f"{float(g.reshape(-1)[index]):.9g}, allowed |diff| "
                            f"{float(allowed.expand_as(e).reshape(-1)[index]):.3g}")
    if not failing:
        return None
    return f"{len(failing)}/{len(expected)} tensors outside tolerance ({', '.join(failing[:5])}" \
           f"{', ...' if len(failing) > 5 else ''}); {worst[1] if worst else ''}"


def concrete_class(model_class: Any, config: Any) -> Any:
    """An Auto class resolves to the concrete class registered for this config type."""
    mapping = getattr(model_class, "_model_mapping", None)
    return mapping[type(config)] if mapping is not None else model_class


def deepspeed_engine(case: Case, model: Any, optimizer: Optional[str], **zero_options: Any) -> Any:
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


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """from_config / from_pretrained take `dtype` from 4.56 on and `torch_dtype` before."""
    if dtype is None:
        return {}
    return {"dtype" if transformers_version() >= Version("4.56") else "torch_dtype": dtype}


def engine_config(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The config for an engine a check builds around a model: one micro-batch of one, no optimizer of its own."""
    config = {key: value for key, value in copy.deepcopy(ds_config).items() if key not in NEUTRALIZED}
    config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    return config


def exception_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def forward_arguments(model_class: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(model_class.forward).parameters)


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
        _compare(case, "forward", expected, got, exact, in_fp64=_in_fp64(baseline, lambda m: _outputs(m, batch)))


def full_parameters(model: Any) -> dict[str, Any]:
    """name -> a detached copy of every parameter and persistent buffer (call inside a gather)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def hf_deepspeed_config_class() -> type:
    return _first_attr([
        ("transformers.integrations", "HfDeepSpeedConfig"),
        ("transformers.integrations.deepspeed", "HfDeepSpeedConfig"),
        ("transformers.deepspeed", "HfDeepSpeedConfig"),
    ])


def hf_is_deepspeed_zero3_enabled() -> Callable[[], bool]:
    return _first_attr([
        ("transformers.integrations", "is_deepspeed_zero3_enabled"),
        ("transformers.integrations.deepspeed", "is_deepspeed_zero3_enabled"),
        ("transformers.deepspeed", "is_deepspeed_zero3_enabled"),
    ])


def main_inputs(cls: Any, config: Any, arguments: dict[str, inspect.Parameter], generator: Any,
                length: int) -> dict[str, Any]:
    """Token ids where the model takes them (a multimodal model runs on text alone), else pixel values,
    else raw audio; a required argument the harness cannot make is named."""
    import torch

    required = [n for n, p in arguments.items() if n != "self" and p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [n for n in required if n not in MADE and n != "labels"]
    if missing:
        raise InputsUnavailable(f"the harness cannot make {', '.join(missing)}, which {cls.__name__}.forward requires")
    if "input_ids" in arguments and not set(required) - {"input_ids", "labels"}:
        vocab = vocabulary(config)
        return {"input_ids": torch.randint(FIRST_ORDINARY_TOKEN, vocab, (1, length), generator=generator)}
    if "pixel_values" in arguments:
        vision = getattr(config, "vision_config", None) or config
        size = getattr(vision, "image_size", None)
        height, width = (size, size) if isinstance(size, int) else tuple(size or ())[:2] or (None, None)
        if not (isinstance(height, int) and isinstance(width, int)):
            raise InputsUnavailable(f"pixel_values for {cls.__name__}: its config gives no image_size")
        channels = int(getattr(vision, "num_channels", 3))
        return {"pixel_values": torch.randn((1, channels, height, width), generator=generator)}
    if "input_values" in arguments:
        strides, kernels = getattr(config, "conv_stride", None), getattr(config, "conv_kernel", None)
        if not strides or not kernels:
            raise InputsUnavailable(f"input_values for {cls.__name__}: its config gives no conv_stride / conv_kernel")
        samples = math.prod(strides) * length + sum(kernels)  # enough raw audio for `length` frames
        return {"input_values": torch.randn((1, samples), generator=generator)}
    raise InputsUnavailable(f"the harness makes none of the inputs {cls.__name__}.forward takes "
                            f"({', '.join(n for n in arguments if n != 'self')})")


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


def seeded_checkpoint_model(class_name: str, config: Any) -> Any:
    """The model a checkpoint of `class_name` holds: its own init, then every tensor the checkpoint saves
    (parameters and floating persistent buffers) moved off it deterministically, so a loader that skips a
    tensor (or leaves it at its init, ones or zeros) cannot pass by accident."""
    import torch

    torch.manual_seed(CHECKPOINT_SEED)
    model = build_from_config(auto_class(class_name), config)
    saved = set(model.state_dict())
    buffers = [b for name, b in model.named_buffers() if name in saved and b.is_floating_point()]
    generator = torch.Generator().manual_seed(CHECKPOINT_SEED)
    with torch.no_grad():
        for tensor in [*model.parameters(), *buffers]:  # tied parameters are visited once
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            tensor.add_((0.05 * noise).to(tensor.dtype))
    return model


def text_config(config: Any) -> Any:
    """The config that holds the vocabulary: `get_text_config()` from 4.45 on (a composite model's text
    part); before it, the config itself, which is what resize_token_embeddings updated then."""
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


def torch_dtype(dtype: str) -> Any:
    """torch's dtype for a training dtype's name ('fp32', 'bf16', 'fp16')."""
    return _torch_dtypes()[dtype]


def torch_load_refusal() -> Optional[str]:
    """Why the installed transformers refuses to read `.bin` checkpoints (torch.load) with the installed
    torch, or None: from 4.57 (at the latest) it requires torch >= 2.6 there (CVE-2025-32434)."""
    try:
        check = _first_attr([("transformers.utils.import_utils", "check_torch_load_is_safe")])
    except ImportError:
        return None
    try:
        check()
    except ValueError as exc:
        return str(exc).strip().splitlines()[0]
    return None


def training_batch(model_class: Any, config: Any, seed: int, length: int = SEQUENCE_LENGTH) -> dict[str, Any]:
    """One deterministic training example (batch of 1) with labels, so that the model returns a loss: the
    next tokens for language-model heads (encoder-decoders: a target half as long), a class for classifiers."""
    import torch

    cls = concrete_class(model_class, config)
    arguments = forward_arguments(cls)
    generator = torch.Generator().manual_seed(seed)
    batch = main_inputs(cls, config, arguments, generator, length)
    name = cls.__name__
    if "labels" not in arguments:
        raise InputsUnavailable(f"{name}.forward takes no labels: no loss to train on")
    if name.endswith(CLASS_LABELS):
        batch["labels"] = torch.randint(0, int(config.num_labels), (1,), generator=generator)
    elif "input_ids" in batch and name.endswith(TOKEN_LABELS) and not name.endswith(DECODER_LABELS) and \
            getattr(config, "is_encoder_decoder", False):
        batch["labels"] = torch.randint(FIRST_ORDINARY_TOKEN, vocabulary(config), (1, length // 2), generator=generator)
    elif "input_ids" in batch and name.endswith(TOKEN_LABELS):  # a decoder (of an encoder-decoder, too)
        batch["labels"] = batch["input_ids"].clone()
    else:
        raise InputsUnavailable(f"the harness makes no labels for {name} (labels known for class names ending in "
                                f"{', '.join(TOKEN_LABELS + CLASS_LABELS)})")
    return batch


def transformers_version() -> Version:
    import transformers

    return Version(transformers.__version__)


def undefined(tensors: dict[str, Any]) -> list[str]:
    """Floating tensors holding NaN. Baselines are built with uninitialized memory filled with NaN
    (compat.uninitialized_memory_filled), so in a baseline these hold memory no init wrote: without ZeRO their
    values are undefined, and a ZeRO-3 model's cannot be compared with them."""
    import torch

    return sorted(k for k, t in tensors.items() if t.is_floating_point() and bool(torch.isnan(t).any()))


@contextlib.contextmanager
def uninitialized_memory_filled() -> Iterator[None]:
    """Memory a tensor is created in without values (torch.empty, to_empty) holds NaN inside, integers their
    maximum (torch's deterministic fill, from 2.1): a baseline tensor that no init writes shows as NaN instead
    of whatever the allocator handed back, which a subject could match or miss by chance."""
    import warnings

    import torch

    deterministic = getattr(torch.utils, "deterministic", None)
    if deterministic is None or not hasattr(deterministic, "fill_uninitialized_memory"):
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              deterministic.fill_uninitialized_memory)
    # The fill is on only while deterministic algorithms are; warn_only keeps every op available.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
        torch.use_deterministic_algorithms(True, warn_only=True)
        deterministic.fill_uninitialized_memory = True
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
            deterministic.fill_uninitialized_memory = before[2]


def vocabulary(config: Any) -> int:
    vocab = getattr(text_config(config), "vocab_size", None)
    if not isinstance(vocab, int) or vocab <= FIRST_ORDINARY_TOKEN:
        raise InputsUnavailable("token ids: the config gives no vocab_size")
    return vocab


# What stands in for the harness: the case, the subject (transformers), the world.


def make_config() -> Any:
    import transformers

    return transformers.AutoConfig.for_model(MODEL_TYPE, **CONFIG)


def write_checkpoint(out: Path) -> Path:
    """The harness's checkpoint: the model's own init under CHECKPOINT_SEED, every saved tensor moved off it by
    0.05 * N(0, 1) (so a tensor left unloaded shows), saved by transformers in LAYOUT."""
    import torch

    model = seeded_checkpoint_model(CHECKPOINT_CLASS, make_config())
    model.save_pretrained(out, max_shard_size=SHARD_SIZE if LAYOUT == "sharded" else "1GB")
    if LAYOUT == "bin":  # the legacy format, as older releases wrote it
        from safetensors.torch import load_file

        torch.save(load_file(str(out / "model.safetensors")), out / "pytorch_model.bin")
        (out / "model.safetensors").unlink()
    return out


class Transformers:
    """The subject: transformers' own HfDeepSpeedConfig, from_config and from_pretrained."""

    name = "transformers"

    def make_config(self, source: Any) -> Any:
        return hf_deepspeed_config_class()(source)

    def is_zero3_enabled(self) -> bool:
        return bool(hf_is_deepspeed_zero3_enabled()())

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        return build_from_config(model_class, config, dtype)

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None, **options: Any) -> Any:
        return model_class.from_pretrained(path, output_loading_info=True, **dtype_kwarg(dtype), **options)


class Case(Findings):
    """What the harness's check sees of its case, on this rank, with transformers as the subject."""

    def __init__(self, rank: int, world_size: int, checkpoint_path: str):
        import torch

        super().__init__()
        self.subject = Transformers()
        self.rank, self.world_size = rank, world_size
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        self.checkpoint_path, self.layout, self.dtype, self.ds_config = checkpoint_path, LAYOUT, DTYPE, DS_CONFIG

    def model_class(self) -> Any:
        import transformers

        return getattr(transformers, MODEL_CLASS)

    def model_config(self) -> Any:
        return make_config()


def main(check: Callable[[Case], None]) -> int:
    """Joins the world torchrun started, runs the check on this rank, and has rank 0 print every rank's
    findings and any value the ranks disagree on. Every rank returns 1 where the clause is broken, else 0."""
    import deepspeed
    import torch
    import torch.distributed as dist

    with tempfile.TemporaryDirectory(prefix="repro-") as scratch:
        # Each rank writes its own copy, before joining the world: transformers saves on rank 0 only once
        # a process group exists, and ranks on other machines share no files.
        checkpoint = write_checkpoint(Path(scratch) / "checkpoint")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        case = Case(rank, world_size, str(checkpoint))
        skipped = ""
        try:
            check(case)
        except NotApplicable as exc:
            skipped = str(exc)
        except SubjectRaised as exc:
            # The other ranks may be inside a collective this rank will now never join: it says what raised,
            # and leaves (torchrun then ends the others).
            print(f"{CASE_ID} at world size {world_size}\nrank {rank}: {exc}\nBROKEN: the clause does not hold",
                  flush=True)
            os._exit(1)
        finally:
            case.close()
        reports: list[Any] = [None] * world_size
        dist.all_gather_object(reports, (case.findings, case.agreed, skipped))
    findings = [f"rank {other}: {finding}" for other, (found, _, _) in enumerate(reports) for finding in found]
    first = reports[0][1]
    disagreements = [f"{key}: rank {other} saw {agreed.get(key)}, rank 0 saw {first.get(key)}"
                     for other, (_, agreed, _) in enumerate(reports[1:], 1)
                     for key in sorted(set(agreed) | set(first)) if agreed.get(key) != first.get(key)]
    broken = bool(findings or disagreements)
    if rank == 0:
        print(f"{CASE_ID} at world size {world_size}")
        for line in findings + disagreements[:20]:
            print(line)
        for other, (_, _, skip) in enumerate(reports):
            if skip:
                print(f"rank {other}: the check does not apply here: {skip}")
        print("BROKEN: the clause does not hold" if broken else "HOLDS: no finding")
    dist.barrier()
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(forward_matches_baseline))
