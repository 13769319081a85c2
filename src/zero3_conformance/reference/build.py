"""Building a Hugging Face model already partitioned by ZeRO-3: the reference, step by step.

1. Construct under `deepspeed.zero.Init`: each module's parameters are partitioned as soon as the
   module exists, so no rank ever holds the whole model. The model-level init (post_init's) is switched
   off during construction (it would run on empty shards); in from_config, the init a module's own
   constructor runs on its still-whole parameters runs as without ZeRO (rank 0's values are the ones
   partitioned), while from_pretrained skips it as transformers does without ZeRO. Given a `dtype`,
   torch's default dtype is it while the model is built, as `dtype=` sets it without ZeRO, and tensors
   created with an explicit dtype keep it, so computed buffers (rotary tables) take the dtype they take
   without ZeRO. Given none, the model is built as without ZeRO (parameters then take the config's fp16/bf16),
   and every floating buffer is cast to that precision at the end, as DeepSpeed's engine casts a model it did
   not build (`module.half()` / `.bfloat16()`).
2. Tie weights, so a tied pair is one ZeRO parameter from the start.
3. Initialize: module by module, gather that module's parameters, run the model's own init on every
   rank (buffers are per rank), and let rank 0's parameter values be the ones partitioned back. An init
   that writes a parameter beyond the module's own (walking the model's named_parameters) gathers that
   one parameter for the write.
4. Load (from_pretrained): module by module, read only the tensors that module needs, gather its
   parameters and copy them in on rank 0 (`modifier_rank=0` re-partitions the result to every rank).

Without a live stage-3 ZeroConfig, both builders make ordinary models, as transformers does.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .. import compat
from ..dsconfig import dtype_name, with_dtype
from .checkpoint import CheckpointReader
from .config import ZeroConfig, active_config


def active_zero3() -> ZeroConfig | None:
    """The live stage-3 config, or None: without one, the builders make ordinary models."""
    config = active_config()
    return config if config is not None and config.is_zero3() else None


@contextlib.contextmanager
def _explicit_dtypes_kept(model_dtype: Any) -> Iterator[None]:
    """zero.Init casts every floating tensor created inside it to the training dtype; a tensor whose
    dtype the model asked for explicitly (e.g. a float32 rotary table) must keep that dtype when it becomes
    a buffer. A parameter takes the model's dtype (P5) whatever its data was created in."""
    import torch
    from deepspeed.runtime.zero import partition_parameters as pp

    original = pp.zero_wrapper_for_fp_tensor_constructor

    def wrapper(fn: Any, target_fp_dtype: Any, *args: Any, **kwargs: Any) -> Any:
        cast = original(fn, target_fp_dtype, *args, **kwargs)
        keep = original(fn, None, *args, **kwargs)
        return lambda *a, **kw: (keep if kw.get("dtype") is not None else cast)(*a, **kw)

    def register_parameter(module: Any, name: str, param: Any) -> None:
        # A parameter takes the model's dtype whatever its data was created in, as zero.Init casts it: the
        # kept dtype is for buffers (a parameter's fp32 data would otherwise stay fp32 in a bf16 model). Not the
        # default dtype at the time: a sub-model built with `from_config(..., dtype=config.dtype)` changes it.
        if param is not None and param.is_floating_point() and param.dtype != model_dtype:
            param.data = param.data.to(model_dtype)
        registered(module, name, param)

    registered = torch.nn.Module.register_parameter
    pp.zero_wrapper_for_fp_tensor_constructor = wrapper
    torch.nn.Module.register_parameter = register_parameter
    try:
        yield
    finally:
        pp.zero_wrapper_for_fp_tensor_constructor = original
        torch.nn.Module.register_parameter = registered


@contextlib.contextmanager
def partitioned_construction(zero: ZeroConfig, dtype: Any, constructors_init: bool = False) -> Iterator[None]:
    """Modules constructed inside are partitioned as each one's __init__ ends, without the model-level init;
    with `constructors_init`, each module's own constructor initializes its still-whole parameters, as
    from_config's construction does without ZeRO (from_pretrained's skips it: what the checkpoint lacks is
    initialized by the model's init alone)."""
    # The dtype goes to zero.Init through the config, never as `dtype=`: some deepspeed releases ignore an
    # explicit dtype on accelerators without fp16 support (an operator-precedence slip in Init._set_dtype).
    ds_config = zero.config if dtype is None else with_dtype(zero.config, dtype_name(dtype))
    skipped_init = compat.constructor_init_only(nested=_initialize) if constructors_init else compat.no_init_weights()
    with skipped_init, _default_dtype(_built_dtype(dtype)), _explicit_dtypes_kept(_model_dtype(zero, dtype)), \
            compat.zero3_partitioning(ds_config):
        yield


def _model_dtype(zero: ZeroConfig, dtype: Any) -> Any:
    """The parameters' dtype: the one asked for, else the one the ZeRO config's precision gives."""
    return dtype if dtype is not None else zero.torch_dtype()


def _built_dtype(dtype: Any) -> Any:
    """torch's default dtype while the model is built and initialized: the one asked for, else the current one
    (computed buffers come out as without ZeRO; _buffers_in_precision casts them after)."""
    import torch

    return dtype if dtype is not None else torch.get_default_dtype()


def _buffers_in_precision(model: Any, zero: ZeroConfig, dtype: Any) -> None:
    """With no dtype asked for, every floating buffer in the config's precision, as DeepSpeed's engine casts a
    model it did not build: values computed as without ZeRO, rounded once."""
    if dtype is not None:
        return
    precision = zero.torch_dtype()
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != precision:
                module._buffers[name] = buffer.to(precision)


@contextlib.contextmanager
def _default_dtype(dtype: Any) -> Iterator[None]:
    """torch's default dtype is the model's dtype while it is built, as `from_config(dtype=...)` sets it
    without ZeRO: a buffer computed as `.to(torch.get_default_dtype())` (a cached rotary table) takes it."""
    import torch

    original = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(original)


def _construct(model_class: Any, config: Any, zero: ZeroConfig, dtype: Any, constructors_init: bool) -> Any:
    with partitioned_construction(zero, dtype, constructors_init):
        model = model_class(config)
    model.tie_weights()
    return model


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def _post_order(module: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Children before parents, as nn.Module.apply visits them (so a parent's init has the last word)."""
    for name, child in module.named_children():
        yield from _post_order(child, f"{prefix}{name}.")
    yield prefix.rstrip("."), module


def _owner_of(model: Any) -> dict[int, Any]:
    """For every module, the nearest PreTrainedModel containing it (whose init applies to it)."""
    from transformers import PreTrainedModel

    owners: dict[int, Any] = {}

    def visit(module: Any, owner: Any) -> None:
        owner = module if isinstance(module, PreTrainedModel) else owner
        owners[id(module)] = owner
        for child in module.children():
            visit(child, owner)

    visit(model, model)
    return owners


@contextlib.contextmanager
def _inits_gather_what_they_write() -> Iterator[None]:
    """An init function called on a parameter its module's gather did not cover (an init that walks the whole
    model's named_parameters, e.g. a depth-scaled residual init) gathers that one parameter for the call and
    partitions rank 0's result back: one tensor at a time, never the whole model."""
    import deepspeed
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    def gathering(init: Any) -> Any:
        def run(tensor: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(tensor, "ds_status", None) != ZeroParamStatus.NOT_AVAILABLE:
                return init(tensor, *args, **kwargs)
            with deepspeed.zero.GatheredParameters([tensor], modifier_rank=0):
                return init(tensor, *args, **kwargs)

        return run

    with compat.functions_wrapped([(module, name, getattr(module, name)) for module, name in compat.init_functions()],
                                  gathering):
        yield


def _initialize(model: Any, only: set[str] | None = None) -> None:
    """Runs the model's own per-module init on gathered parameters, children before parents as transformers
    does. With `only`, just the modules that own or whose direct children own one of those parameter names
    (the ones a checkpoint does not provide): an init may write its children's parameters (e.g. attention
    projections, a classifier), after their own init. What it writes that the checkpoint holds is loaded
    over it afterwards. A tied parameter keeps what the init of its first-named owner wrote: transformers
    initializes before it ties, and the tie copies the source (the input embedding) over its aliases."""
    import deepspeed
    import torch

    owners = _owner_of(model)
    first_name = {id(p): n for n, p in model.named_parameters()}
    for name, module in _post_order(model):
        prefix = f"{name}." if name else ""
        named = [(prefix + n, p) for n, p in module.named_parameters(recurse=False)]
        named += [(f"{prefix}{c}.{n}", p) for c, child in module.named_children()
                  for n, p in child.named_parameters(recurse=False)]
        if only is not None and not any(key in only for key, _ in named):
            continue
        params = [p for _, p in named]
        aliases = [p for key, p in named if first_name.get(id(p), key) != key]  # tied, first named elsewhere
        init = compat.module_initializer(owners[id(module)])
        with deepspeed.zero.GatheredParameters(params, modifier_rank=0), torch.no_grad(), compat.hf_init_guard(), \
                _inits_gather_what_they_write():
            kept = [p.detach().clone() for p in aliases]
            init(module)
            for param, value in zip(aliases, kept):
                param.copy_(value)


def from_config(model_class: Any, config: Any, dtype: Any = None) -> Any:
    zero = active_zero3()
    if zero is None:
        return compat.concrete_class(model_class, config)._from_config(config, **compat.dtype_kwarg(dtype))
    model = _construct(compat.concrete_class(model_class, config), config, zero, dtype, constructors_init=True)
    # Without ZeRO the model's init runs inside its constructor (post_init), under the model's dtype: a buffer
    # it recomputes (a sinusoid table) is computed in that dtype.
    with _default_dtype(_built_dtype(dtype)):
        _initialize(model)
    _buffers_in_precision(model, zero, dtype)
    return model


def _aliases(model: Any) -> dict[str, list[str]]:
    """Each parameter's first name -> all its names (a tied pair is one parameter under two names)."""
    first: dict[int, str] = {}
    names: dict[str, list[str]] = {}
    for key, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(first.setdefault(id(param), key), []).append(key)
    return names


def _persistent_keys(model: Any) -> set[str]:
    return set(model.state_dict().keys())


class _Plan:
    """Which checkpoint keys feed which model keys, and what the loading report says."""

    def __init__(self, model: Any, reader: CheckpointReader, conversion: compat.CheckpointConversion | None,
                 ignore_mismatched_sizes: bool = False):
        model_keys = _persistent_keys(model)
        renamer = None if conversion else self._prefix_renamer(model, reader.keys(), model_keys)
        self.sources: dict[str, list[str]] = {}  # model key -> checkpoint keys
        unexpected = []
        for key in reader.keys():
            named = conversion.module_keys(key) if conversion else [renamer(key)]
            targets = [t for t in named if t in model_keys]
            for target in targets:
                self.sources.setdefault(target, []).append(key)
            if not targets:  # named as transformers names it: after its renames and conversions, once
                unexpected.append(conversion.target(key)[0] if conversion else key)
        self.mismatched = self._mismatched(model, reader, conversion, ignore_mismatched_sizes)
        provided = {*self.sources, *(key for key, *_ in self.mismatched)}
        missing = []
        for names in _aliases(model).values():
            if not provided.intersection(names):  # a tied parameter no name of which the checkpoint holds
                missing.extend(names)
        missing += [k for k in model_keys - provided if k not in dict(model.named_parameters(remove_duplicate=False))]
        # Every key the checkpoint does not provide is initialized; a class's ignored ones (a sinusoidal table it
        # never saves) are only left out of the report.
        self.unloaded = sorted(missing)
        self.missing = sorted(_drop_ignored(missing, getattr(model, "_keys_to_ignore_on_load_missing", None)))
        self.unexpected = sorted(set(_drop_ignored(unexpected, getattr(model, "_keys_to_ignore_on_load_unexpected",
                                                                         None))))

    def _mismatched(self, model: Any, reader: CheckpointReader, conversion: compat.CheckpointConversion | None,
                    ignore: bool) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
        """Tensors read one to one whose stored shape is not the model's (e.g. a classifier for another number
        of labels): with `ignore_mismatched_sizes` they are reported, not loaded, and initialized instead;
        without it, loading stops, as it does without ZeRO. (A conversion's operations check their own.)"""
        shapes = compat.whole_shapes(model)
        stored = {key: reader.shape(sources[0]) for key, sources in sorted(self.sources.items())
                  if len(sources) == 1 and key in shapes
                  and (conversion is None or conversion.renames_only(sources[0]))}
        found = [(key, shape, shapes[key]) for key, shape in stored.items() if shape != shapes[key]]
        if found and not ignore:
            sizes = "; ".join(f"{key}: checkpoint {have}, model {wanted}" for key, have, wanted in found)
            raise RuntimeError(f"checkpoint tensors do not fit the model ({sizes}); pass ignore_mismatched_sizes=True "
                               f"to initialize them instead")
        for key, *_ in found:
            del self.sources[key]
        return found

    @staticmethod
    def _prefix_renamer(model: Any, checkpoint_keys: list[str], model_keys: set[str]) -> Any:
        """A base-model checkpoint loaded into a model with a head gains the base prefix; the reverse loses it."""
        prefix = f"{model.base_model_prefix}." if getattr(model, "base_model_prefix", "") else ""
        model_has = prefix and any(k.startswith(prefix) for k in model_keys)
        checkpoint_has = prefix and any(k.startswith(prefix) for k in checkpoint_keys)
        if model_has and not checkpoint_has:
            return lambda key: prefix + key
        if checkpoint_has and not model_has:
            return lambda key: key[len(prefix):] if key.startswith(prefix) else key
        return lambda key: key


def _drop_ignored(keys: list[str], patterns: list[str] | None) -> list[str]:
    if not patterns:
        return keys
    return [k for k in keys if not any(re.search(p, k) for p in patterns)]


def _module_tensors(reader: CheckpointReader, plan: _Plan, keys: list[str],
                    conversion: compat.CheckpointConversion | None) -> dict[str, Any]:
    """The checkpoint tensors for these model keys, converted to the model's layout where it differs."""
    raw = {src: reader.get(src) for key in keys for src in plan.sources.get(key, [])}
    needs_conversion = any(plan.sources.get(key) != [key] for key in keys if key in plan.sources)
    if conversion is not None and needs_conversion:
        return conversion.convert(raw)
    return {key: raw[plan.sources[key][0]] for key in keys if key in plan.sources}


def _untie_where_the_checkpoint_differs(model: Any, reader: CheckpointReader, plan: _Plan, zero: ZeroConfig) -> None:
    """A declared tie whose two names the checkpoint holds with different values stays untied, as without ZeRO
    (transformers compares the two loaded tensors and does not tie them): the target gets a partitioned
    parameter of its own, and each name loads its own tensor."""
    import torch

    class _Holder(torch.nn.Module):  # only parameters of modules built inside zero.Init are partitioned
        def __init__(self, shape: tuple[int, ...], dtype: Any):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.empty(shape, dtype=dtype))

    for target, source in list(compat.declared_ties(model).items()):
        held = [plan.sources.get(target, []), plan.sources.get(source, [])]
        if any(len(keys) != 1 for keys in held) or torch.equal(reader.get(held[0][0]), reader.get(held[1][0])):
            continue
        tied = model.get_parameter(target)
        with partitioned_construction(zero, tied.dtype):
            own = _Holder(tuple(getattr(tied, "ds_shape", tied.shape)), tied.dtype).weight
        owner, _, name = target.rpartition(".")
        model.get_submodule(owner)._parameters[name] = own
        compat.untie_recorded(model, target)


def _resolved_dtype(dtype: Any, config: Any, reader: CheckpointReader) -> Any:
    """`dtype="auto"` (or its name as a string) as transformers resolves it: the config's dtype, else the
    checkpoint's first floating tensor's."""
    import torch

    if dtype == "auto":
        named = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        dtype = named if named is not None else reader.floating_dtype()
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def from_pretrained(model_class: Any, path: Any, dtype: Any = None, *, variant: str | None = None,
                    use_safetensors: bool | None = None, key_mapping: dict[str, str] | None = None,
                    ignore_mismatched_sizes: bool = False, torch_dtype: Any = None,
                    **config_overrides: Any) -> tuple[Any, dict[str, Any]]:
    """Returns (model, loading report with missing_keys / unexpected_keys / mismatched_keys). The options
    are transformers' own: which files (`variant`, `use_safetensors`), renamed keys (`key_mapping`),
    tensors of another shape initialized instead (`ignore_mismatched_sizes`), and config attributes
    overridden (e.g. `num_labels`, `id2label`)."""
    import deepspeed
    import torch
    from transformers import AutoConfig

    if torch_dtype is not None:  # the name transformers before 4.56 gives `dtype`: not a config attribute
        dtype = torch_dtype
    zero = active_zero3()
    options = dict(variant=variant, use_safetensors=use_safetensors, key_mapping=key_mapping,
                   ignore_mismatched_sizes=ignore_mismatched_sizes)
    if zero is None:  # an ordinary load is not what the reference is about: transformers does it
        given = {k: v for k, v in options.items() if v is not None and v is not False}
        return model_class.from_pretrained(str(path), output_loading_info=True, trust_remote_code=False,
                                           **compat.dtype_kwarg(dtype), **given, **config_overrides)
    reader = CheckpointReader(Path(path), variant=variant, use_safetensors=use_safetensors, key_mapping=key_mapping)
    # A concrete class reads its own config class, as transformers does (a sub-model of a composite checkpoint,
    # e.g. MllamaTextModel, takes its part of the config).
    own = getattr(model_class, "config_class", None)
    if own is not None and not compat.is_auto_class(model_class):
        config = own.from_pretrained(str(path), **config_overrides)
    else:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False, **config_overrides)
    dtype = _resolved_dtype(dtype, config, reader)
    if dtype is not None:
        compat.set_config_dtype(config, dtype)
    model = _construct(compat.concrete_class(model_class, config), config, zero, dtype, constructors_init=False)
    conversion = compat.checkpoint_conversion(model)
    plan = _Plan(model, reader, conversion, ignore_mismatched_sizes)
    _untie_where_the_checkpoint_differs(model, reader, plan, zero)
    _initialize(model, only={*plan.unloaded, *(key for key, *_ in plan.mismatched)})
    is_writer = _rank() == 0
    for name, module in _post_order(model):
        prefix = f"{name}." if name else ""
        params = dict(module.named_parameters(recurse=False))
        buffers = {n: b for n, b in module.named_buffers(recurse=False)
                   if n not in module._non_persistent_buffers_set}
        keys = [prefix + n for n in (*params, *buffers)]
        if not any(key in plan.sources for key in keys):
            continue
        # Buffers are whole on every rank: every rank reads them. Parameters: only rank 0 reads.
        tensors = _module_tensors(reader, plan, keys, conversion) if (is_writer or buffers) else {}
        for n, buffer in buffers.items():
            if prefix + n in tensors:
                buffer.copy_(tensors[prefix + n])
        loaded = {n: p for n, p in params.items() if prefix + n in plan.sources}
        with deepspeed.zero.GatheredParameters(list(loaded.values()), modifier_rank=0), torch.no_grad():
            if is_writer:
                for n, param in loaded.items():
                    tensor = tensors[prefix + n]
                    if tuple(tensor.shape) != tuple(param.shape):
                        raise ValueError(f"checkpoint tensor {prefix + n} has shape {tuple(tensor.shape)}, "
                                         f"the model expects {tuple(param.shape)}")
                    param.copy_(tensor)
        if compat.loading_makes_parameters_trainable():
            for param in loaded.values():
                param.requires_grad_(param.is_floating_point())
    _buffers_in_precision(model, zero, dtype)
    report = {"missing_keys": plan.missing, "unexpected_keys": plan.unexpected,
              "mismatched_keys": plan.mismatched, "error_msgs": []}
    return model, report
