"""Deliberately broken variants of the reference: each a realistic integration bug. A conformance
suite that cannot tell them from the reference proves nothing, so the harness's tests run each one
against the clause that must catch it (subject name "mutant:NAME")."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Callable

from ..subjects import ReferenceSubject, register

_strong_refs: list[Any] = []


@contextlib.contextmanager
def _patched(module: Any, name: str, replacement: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


def _initialization_skipped() -> contextlib.AbstractContextManager:
    """The reference with its init step removed: parameters stay as zero.Init left them."""
    from ..reference import build

    return _patched(build, "_initialize", lambda model, only=None: None)


class Mutant(ReferenceSubject):
    kills: tuple[str, ...] = ()  # the clauses (every check of one) or check ids that must catch this mutant
    family = "llama"


class StrongRegistration(Mutant):
    """The config object is also kept in a module-level list, so it never goes away."""

    kills = ("A2",)

    def make_config(self, source: Any) -> Any:
        config = super().make_config(source)
        _strong_refs.append(config)
        return config


class NoValidation(Mutant):
    """The config is taken as given and its stage compared as written: "stage": "3", which deepspeed.initialize
    runs as stage 3, reads as ZeRO-3 off, so models are built whole where the engine partitions."""

    kills = ("A4",)

    def make_config(self, source: Any) -> Any:
        from ..reference import config as reference_config

        with _patched(reference_config, "read_config_source", lambda s: s if isinstance(s, dict) else {}):
            return super().make_config(source)

    def is_zero3_enabled(self) -> bool:
        from ..reference.config import active_config

        config = active_config()
        zero = config.config.get("zero_optimization") if config is not None else None
        return isinstance(zero, dict) and zero.get("stage") == 3


class Unpartitioned(Mutant):
    """Construction forgets zero.Init: from_config and from_pretrained build the whole model on every rank.
    (P3's from_pretrained check cannot see it: an unpartitioned load maps the file and allocates nothing.)"""

    kills = ("P1", "P2", "P3-from_config_peak_memory")

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        return model_class.from_config(config)

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        return model_class.from_pretrained(path, output_loading_info=True, trust_remote_code=False, **options)


class UnpartitionedWithoutGroup(Mutant):
    """Construction partitions only where a process group exists already (it asks
    torch.distributed.is_initialized() instead of letting zero.Init make the group): in a script that torchrun
    started, as users run one, every rank builds the whole model. Every check but A5 runs in a group the
    harness made, and passes."""

    kills = ("A5",)
    family = "gpt2"

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        build = Unpartitioned.from_config if _no_process_group() else ReferenceSubject.from_config
        return build(self, model_class, config, dtype)

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        build = Unpartitioned.from_pretrained if _no_process_group() else ReferenceSubject.from_pretrained
        return build(self, model_class, path, dtype, **options)


def _no_process_group() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized()


class PerturbedLoad(Mutant):
    """One checkpoint tensor is loaded off by 1e-3 (e.g. a lossy cast on the way in)."""

    kills = ("G1", "N1", "N2", "N3")

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        import deepspeed
        import torch

        model, info = super().from_pretrained(model_class, path, dtype, **options)
        param = next(iter(model.parameters()))
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            param.add_(1e-3)
        return model, info


class SkippedInit(Mutant):
    """Weights are never initialized after partitioned construction (left as zero.Init made them)."""

    kills = ("G4",)

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        with _initialization_skipped():
            return super().from_config(model_class, config, dtype)


class MissingKeysUninitialized(Mutant):
    """Keys missing from the checkpoint are left as constructed instead of initialized."""

    kills = ("G3",)
    family = "bert"

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        from ..compat import uninitialized_memory_filled

        # The memory the skipped init leaves holds NaN, not whatever the allocator hands back: a freed copy of
        # the baseline's own init passed G3 once (CI), which would make this mutant's kill a matter of chance.
        with _initialization_skipped(), uninitialized_memory_filled():
            return super().from_pretrained(model_class, path, dtype, **options)


class EmptyLoadingReport(Mutant):
    """The loading report is dropped: callers never learn which keys were missing."""

    kills = ("G7",)
    family = "bert"

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        model, _ = super().from_pretrained(model_class, path, dtype, **options)
        return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}


class UnsyncedGenerate(Mutant):
    """generate without synchronizing the ranks: the first rank done stops gathering, the others hang."""

    kills = ("N4",)

    def generate(self, model: Any, **kwargs: Any) -> Any:
        return model.generate(**kwargs, synced_gpus=False)


class UntiedAfterLoad(Mutant):
    """A tied head comes out of loading as a second parameter holding a copy of the embedding."""

    kills = ("G2",)
    family = "gpt2"

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        import deepspeed
        import torch

        from ..reference.build import active_zero3, partitioned_construction

        model, info = super().from_pretrained(model_class, path, dtype, **options)
        weight = model.get_input_embeddings().weight
        with partitioned_construction(active_zero3(), weight.dtype):
            copy = torch.nn.Linear(weight.ds_shape[1], weight.ds_shape[0], bias=False, dtype=weight.dtype)
        with deepspeed.zero.GatheredParameters([weight, copy.weight], modifier_rank=0), torch.no_grad():
            copy.weight.copy_(weight)
        model.get_output_embeddings().weight = copy.weight
        return model, info


class ResizeLeavesAliases(Mutant):
    """After resizing, the embedding's aliases (a tied head) still point at the old, smaller embedding."""

    kills = ("S2",)
    family = "gpt2"

    def resize_token_embeddings(self, model: Any, new_num_tokens: int) -> Any:
        from ..reference import runtime

        def own_attribute_only(model: Any, old: Any, new: Any) -> None:  # the first holder, not its aliases
            for module in model.modules():
                for name, param in list(module._parameters.items()):
                    if param is old:
                        module._parameters[name] = new
                        return

        with _patched(model, "tie_weights", lambda *args, **kwargs: None), \
                _patched(runtime, "_rebind", own_attribute_only):
            return super().resize_token_embeddings(model, new_num_tokens)


class UnregisteredConfig(Mutant):
    """The config object is built and validated but never registered: ZeRO-3 is never reported on."""

    kills = ("A1",)

    def make_config(self, source: Any) -> Any:
        from ..reference import config as reference_config

        unregistered = object.__new__(reference_config.ZeroConfig)
        unregistered.config = reference_config.read_config_source(source)
        return unregistered


class NoModifierRank(Mutant):
    """Rank 0 copies the checkpoint into gathered parameters without `modifier_rank`: on release the
    gathered copy is dropped, so the partitions keep whatever construction left in them."""

    kills = ("G1",)

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        import deepspeed

        original = deepspeed.zero.GatheredParameters

        def without_modifier(params: Any, modifier_rank: Any = None, **kwargs: Any) -> Any:
            return original(params, modifier_rank=None, **kwargs)

        with _patched(deepspeed.zero, "GatheredParameters", without_modifier):
            return super().from_pretrained(model_class, path, dtype, **options)


class DtypeIgnored(Mutant):
    """The config's bf16/fp16 section is ignored at construction: partitions are built in fp32."""

    kills = ("P5",)

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        with _fp32_construction():
            return super().from_config(model_class, config, dtype)

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        with _fp32_construction():
            return super().from_pretrained(model_class, path, dtype, **options)


class LoadingOptionsDropped(Mutant):
    """from_pretrained drops the caller's loading options (variant, key_mapping, num_labels, ...) under ZeRO-3,
    as a wrapper that forwards only the path would: the default file, names and config are loaded instead."""

    kills = ("G8-variant_loads_like_baseline", "G8-key_mapping_loads_like_baseline",
             "G8-label_options_load_like_baseline")

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        return super().from_pretrained(model_class, path, dtype)


class NoParameters(Mutant):
    """Every build comes out with no parameters at all, as a stack that loses the parameters of classes without
    an `__init__` of their own does: a check that walks only the subject's own parameters finds nothing wrong
    with a model that has none."""

    kills = ("P1", "P2")

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        return _without_parameters(super().from_config(model_class, config, dtype))

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        model, report = super().from_pretrained(model_class, path, dtype, **options)
        return _without_parameters(model), report


class SpoilsLaterBuilds(Mutant):
    """After its first ZeRO-3 build of a class, that class builds without its own __init__ for the rest of the
    process, with ZeRO-3 and without it: from_config gives a model without parameters, from_pretrained raises.
    It is what deepspeed 0.15.1 to 0.17.5 do to every class without an `__init__` of its own when a zero.Init
    context exits (transformers' generic heads; deepspeedai/DeepSpeed#7566), done here to any class. A baseline
    built in that process is as empty as the subject's build, and agrees with it, or cannot be built at all."""

    kills = ("P4",)

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        model = super().from_config(model_class, config, dtype)
        spoil_later_builds(type(model))
        return model

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        loaded = super().from_pretrained(model_class, path, dtype, **options)
        spoil_later_builds(type(loaded[0]))
        return loaded


class HeadOnlyZeroed(Mutant):
    """Every tensor a head class holds that its base model lacks (an untied lm_head, a seq2seq head's final
    logits bias, a classifier) is loaded as zeros; the base model's values, which the base class's checks
    compare, are right. Only a comparison of the head's own loaded values can see it."""

    kills = ("G1",)

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        import deepspeed
        import torch

        from ..structure import persistent_buffers

        model, report = super().from_pretrained(model_class, path, dtype, **options)
        base = getattr(model, "base_model", model)
        if base is model:
            return model, report
        in_base = {id(t) for t in [*base.parameters(), *base.buffers()]}
        params = [p for p in model.parameters() if id(p) not in in_base]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0), torch.no_grad():
            for tensor in params + [b for b in persistent_buffers(model).values() if id(b) not in in_base]:
                tensor.zero_()
        return model, report


def spoil_later_builds(model_class: type) -> None:
    """From now on, in this process, `model_class` (the concrete class built) is built by PreTrainedModel's
    __init__ instead of its own, as DeepSpeed's _disable_class writes `cls.__init__ = cls._old_init` into a
    class that inherits `_old_init`."""
    from transformers import PreTrainedModel

    model_class.__init__ = PreTrainedModel.__init__


def empty_builds_where(condition: Callable[[], bool]) -> None:
    """From now on, in this process, a model that from_config or from_pretrained builds while `condition()`
    holds comes out without parameters (once per process: a second call changes nothing)."""
    from transformers import PreTrainedModel

    if getattr(PreTrainedModel._from_config, "emptied", False):
        return
    from_config, from_pretrained = PreTrainedModel._from_config.__func__, PreTrainedModel.from_pretrained.__func__

    def built_from_config(cls: Any, *args: Any, **kwargs: Any) -> Any:
        model = from_config(cls, *args, **kwargs)
        return _without_parameters(model) if condition() else model

    def built_from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
        loaded = from_pretrained(cls, *args, **kwargs)
        if condition():
            _without_parameters(loaded[0] if isinstance(loaded, tuple) else loaded)
        return loaded

    built_from_config.emptied = True  # type: ignore[attr-defined]
    PreTrainedModel._from_config = classmethod(built_from_config)
    PreTrainedModel.from_pretrained = classmethod(built_from_pretrained)


def _without_parameters(model: Any) -> Any:
    for module in model.modules():
        module._parameters.clear()
    return model


def _fp32_construction() -> contextlib.AbstractContextManager:
    from ..dsconfig import with_dtype
    from ..reference import build

    original = build.partitioned_construction

    def fp32(zero: Any, dtype: Any, constructors_init: bool = False) -> Any:
        stripped = object.__new__(type(zero))
        stripped.config = with_dtype(zero.config, "fp32")
        return original(stripped, None, constructors_init)

    return _patched(build, "partitioned_construction", fp32)


MUTANTS: dict[str, type[Mutant]] = {
    "strong_registration": StrongRegistration,
    "no_validation": NoValidation,
    "unpartitioned": Unpartitioned,
    "unpartitioned_without_group": UnpartitionedWithoutGroup,
    "perturbed_load": PerturbedLoad,
    "skipped_init": SkippedInit,
    "missing_keys_uninitialized": MissingKeysUninitialized,
    "empty_loading_report": EmptyLoadingReport,
    "unsynced_generate": UnsyncedGenerate,
    "untied_after_load": UntiedAfterLoad,
    "resize_leaves_aliases": ResizeLeavesAliases,
    "unregistered_config": UnregisteredConfig,
    "no_modifier_rank": NoModifierRank,
    "dtype_ignored": DtypeIgnored,
    "loading_options_dropped": LoadingOptionsDropped,
    "no_parameters": NoParameters,
    "spoils_later_builds": SpoilsLaterBuilds,
    "head_only_zeroed": HeadOnlyZeroed,
}


for _name, _mutant in MUTANTS.items():  # a run names one as "mutant:NAME"; none runs unless named
    register(f"mutant:{_name}", _mutant)


def killing_cases(name: str, target: str, subject: str | None = None) -> list[Any]:
    """The cases of `target` (a clause, or one check id of it) that must catch mutant `name`, for its
    family: the largest world size up to 2, one dtype (fp32 where the check has it), and the whole-file and
    sharded layouts. `subject` defaults to the mutant itself; pass "reference" for the control run."""
    from ..catalog import build_cases

    mutant = MUTANTS[name]
    clause = target.split("-")[0]
    cases = build_cases(subjects=[subject or f"mutant:{name}"], clauses=[clause], world_sizes=[1, 2],
                        models=[mutant.family])
    cases = [c for c in cases if target in (clause, c.check_id) and c.layout in (None, "sharded", "safetensors")]
    if not cases:
        return []
    size = max(c.world_size for c in cases)
    dtype = "fp32" if any(c.dtype == "fp32" for c in cases) else min(c.dtype for c in cases)
    return [c for c in cases if c.world_size == size and c.dtype == dtype]
