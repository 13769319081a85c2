"""Stand-ins for APIs that moved between library versions. Each looks the API up when called, so one
version's missing name fails only the check that needs it, never import or collection."""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterator
from typing import Any, Callable

from packaging.version import Version

from .dsconfig import mics_shard_size


def _first_attr(candidates: list[tuple[str, str]]) -> Any:
    errors = []
    for module, name in candidates:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{module}.{name}: {exc}")
    raise ImportError("none of these exist in the installed version: " + "; ".join(errors))


def transformers_version() -> Version:
    import transformers

    return Version(transformers.__version__)


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


def hf_unset_deepspeed_config() -> Callable[[], None]:
    return _first_attr([
        ("transformers.integrations.deepspeed", "unset_hf_deepspeed_config"),
        ("transformers.deepspeed", "unset_hf_deepspeed_config"),
    ])


def text_config(config: Any) -> Any:
    """The config that holds the vocabulary: `get_text_config()` from 4.45 on (a composite model's text
    part); before it, the config itself, which is what resize_token_embeddings updated then."""
    getter = getattr(config, "get_text_config", None)
    return getter() if getter is not None else config


def torch_load_refusal() -> str | None:
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


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """from_config / from_pretrained take `dtype` from 4.56 on and `torch_dtype` before."""
    if dtype is None:
        return {}
    return {"dtype" if transformers_version() >= Version("4.56") else "torch_dtype": dtype}


def set_config_dtype(config: Any, dtype: Any) -> None:
    """Records the dtype a model was loaded in on its config and sub-configs, as from_pretrained(dtype=...)
    does (the attribute is `dtype` from 4.56 on, `torch_dtype` before)."""
    attribute = "dtype" if transformers_version() >= Version("4.56") else "torch_dtype"
    setattr(config, attribute, dtype)
    for key in getattr(config, "sub_configs", None) or {}:
        sub_config = getattr(config, key, None)
        if sub_config is not None:
            setattr(sub_config, attribute, dtype)


def is_auto_class(model_class: Any) -> bool:
    """An Auto class (AutoModel, AutoModelForCausalLM, ...): it maps config types to concrete classes."""
    return hasattr(model_class, "_model_mapping")


def concrete_class(model_class: Any, config: Any) -> Any:
    """An Auto class resolves to the concrete class registered for this config type."""
    return model_class._model_mapping[type(config)] if is_auto_class(model_class) else model_class


def build_from_config(model_class: Any, config: Any, dtype: Any = None) -> Any:
    """`from_config` of an Auto class, `_from_config` of a concrete one (which has no public from_config):
    the model the installed transformers builds from `config` in the current context."""
    if is_auto_class(model_class):
        return model_class.from_config(config, **dtype_kwarg(dtype))
    return model_class._from_config(config, **dtype_kwarg(dtype))


def loading_makes_parameters_trainable() -> bool:
    """transformers 5's loader replaces each loaded parameter with a new nn.Parameter that requires grad (a
    frozen sinusoidal table included); 4.x copied into the existing one, keeping its requires_grad."""
    return transformers_version() >= Version("5.0.0.dev0")


def no_init_weights() -> contextlib.AbstractContextManager:
    """transformers' switch that skips weight initialization while a model is constructed."""
    return _first_attr([
        ("transformers.initialization", "no_init_weights"),
        ("transformers.modeling_utils", "no_init_weights"),
    ])()


def init_functions() -> list[tuple[Any, str]]:
    """(module, name) of every init function a model's init may call on a tensor: torch's (those transformers'
    no_init_weights silences) and transformers' own guarded ones (`transformers.initialization`, from 5.0)."""
    found = _torch_init_functions()
    try:
        own = importlib.import_module("transformers.initialization")
    except ImportError:
        return found
    for name, function in vars(own).items():
        if (inspect.isfunction(function) and function.__module__ == own.__name__ and not name.startswith("_")
                and list(inspect.signature(function).parameters)[:1] == ["tensor"]):
            found.append((own, name))
    return found


def _torch_init_functions() -> list[tuple[Any, str]]:
    """(module, name) of every torch init function transformers' no_init_weights silences."""
    import sys

    try:
        functions = _first_attr([("transformers.initialization", "TORCH_INIT_FUNCTIONS"),
                                 ("transformers.modeling_utils", "TORCH_INIT_FUNCTIONS")])
    except ImportError:
        return []
    try:
        module_names = _first_attr([("transformers.initialization", "TORCH_MODULES_TO_PATCH")])
    except ImportError:
        module_names = ("torch.nn.init",)
    modules = [sys.modules[name] for name in module_names if name in sys.modules]
    return [(module, name) for module in modules for name in functions if hasattr(module, name)]


@contextlib.contextmanager
def functions_wrapped(sites: list[tuple[Any, str, Callable[..., Any]]],
                      wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    """Each (module, name, function) site holds `wrap(function)` inside, and what it held before on exit."""
    before = [(module, name, getattr(module, name)) for module, name, _ in sites]
    for module, name, function in sites:
        setattr(module, name, wrap(function))
    try:
        yield
    finally:
        for module, name, held in before:
            setattr(module, name, held)


@contextlib.contextmanager
def constructor_init_only(nested: Callable[[Any], None] | None = None) -> Iterator[None]:
    """transformers' no_init_weights (the model-level init that post_init runs is skipped), except that torch's
    init functions still run on a tensor ZeRO-3 has not partitioned yet. Inside zero.Init a module's parameters
    stay whole until its own __init__ ends, so the init its constructor runs (Conv1D's normal_, a conv's
    reset_parameters) is the one it runs without ZeRO; on a partition they do nothing, as inside no_init_weights.
    With `nested`, a model built inside another model's constructor is passed to it where its own post_init
    initializes it (see _nested_models_initialized)."""
    originals = [(module, name, getattr(module, name)) for module, name in _torch_init_functions()]
    with no_init_weights(), functions_wrapped(originals, _on_whole_tensors), \
            _nested_models_initialized(nested, originals):
        yield


@contextlib.contextmanager
def _nested_models_initialized(nested: Callable[[Any], None] | None,
                               originals: list[tuple[Any, str, Callable[..., Any]]]) -> Iterator[None]:
    """Without ZeRO a sub-model that a composite builds in its constructor (a vision tower from its own config)
    initializes itself in its own post_init, before the composite builds its other parts, so the random
    draws come in that order. Here its post_init's init_weights calls `nested(sub_model)`, with torch's init
    functions as they are outside the construction; the outermost model's stays skipped."""
    if nested is None:
        yield
        return
    model_type = _first_attr([("transformers.modeling_utils", "PreTrainedModel")])
    constructing: list[Any] = []
    constructor, skipped = model_type.__init__, model_type.init_weights

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        constructing.append(self)
        constructor(self, *args, **kwargs)

    def init_weights(self: Any) -> None:
        if constructing and self is not constructing[0]:
            with functions_wrapped(originals, lambda function: function):
                nested(self)
        else:
            skipped(self)

    model_type.__init__, model_type.init_weights = __init__, init_weights
    try:
        yield
    finally:
        model_type.__init__, model_type.init_weights = constructor, skipped


def _on_whole_tensors(init: Callable[..., Any]) -> Callable[..., Any]:
    def run(tensor: Any, *args: Any, **kwargs: Any) -> Any:
        return tensor if hasattr(tensor, "ds_id") else init(tensor, *args, **kwargs)

    return run


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


@contextlib.contextmanager
def hf_init_guard() -> Iterator[None]:
    """transformers 5 guards torch.nn.init with per-tensor 'already initialized' flags; use it if present."""
    try:
        guard = _first_attr([("transformers.initialization", "guard_torch_init_functions")])
    except ImportError:
        yield
        return
    with guard():
        yield


def module_initializer(owner: Any) -> Callable[[Any], None]:
    """The per-module weight init of a PreTrainedModel (`_initialize_weights` in 5.x, `_init_weights` before)."""
    if hasattr(owner, "_initialize_weights"):
        return owner._initialize_weights
    return owner._init_weights


def declared_ties(model: Any) -> dict[str, str]:
    """The model's tied parameters as the installed transformers records them after construction (target ->
    source); {} where it records none (4.x ties by tie_weights alone and has no such record)."""
    return getattr(model, "all_tied_weights_keys", None) or {}


def untie_recorded(model: Any, target: str) -> None:
    """Drops `target` from the model's record of its ties, as transformers does when it leaves a pair untied."""
    ties = getattr(model, "all_tied_weights_keys", None)
    if ties:
        ties.pop(target, None)


def whole_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Every parameter's (under each of its names) and buffer's shape as without ZeRO: a partitioned parameter's
    `ds_shape`, not its empty local tensor (which state_dict() returns, without ds_shape)."""
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {key: tuple(getattr(t, "ds_shape", t.shape)) for key, t in tensors}


class NotConvertible(NotImplementedError):
    """A conversion the installed transformers declares that the reference does not re-implement: the
    reference cannot load that checkpoint (a SKIP that says so, not a finding about the subject)."""


class CheckpointConversion:
    """The installed library's declared conversion from a model type's checkpoint keys to its module keys
    (transformers 5 renames keys and fuses per-expert MoE weights on load), applied with the library's own
    model-level conversion operations: never its DeepSpeed loading path, which is what is under test."""

    def __init__(self, model: Any, mapping: list[Any], renaming_type: type, converter_type: type, rename: Any):
        import torch

        self._model = model
        self._rename = rename
        # The base model prefix is `base_model_prefix=` in later 5.x releases, `prefix=` in 5.0.
        parameters = inspect.signature(rename).parameters
        self._prefix_keyword = "base_model_prefix" if "base_model_prefix" in parameters else "prefix"
        self._renamings = [m for m in mapping if isinstance(m, renaming_type)]
        self._converters = [m for m in mapping if isinstance(m, converter_type)]
        self._converter_of = {p: c for c in self._converters for p in c.source_patterns}
        whole = whole_shapes(model)
        self._meta = {k: torch.empty(whole.get(k, tuple(v.shape)), device="meta")
                      for k, v in model.state_dict().items()}

    def target(self, key: str) -> tuple[str, str | None]:
        """(module key, the converter source pattern it matched or None)."""
        prefix = {self._prefix_keyword: self._model.base_model_prefix}
        target, pattern = self._rename(key, self._renamings, self._converters, **prefix, meta_state_dict=self._meta)
        if target not in self._meta and key in self._meta:
            # As transformers' loader without ZeRO: a key the model has under its own name was not meant to be
            # renamed (deepseek_v4's `.norm.` -> `.kv_norm.` also matches model.norm.weight).
            return self._rename(key, [], [], **prefix, meta_state_dict=self._meta)
        return target, pattern

    def renames_only(self, key: str) -> bool:
        """Whether the checkpoint key reaches its module key by renaming alone (no operation on the tensor)."""
        return self.target(key)[1] is None

    def module_keys(self, key: str) -> list[str]:
        """Every module key a checkpoint key feeds: one, or each target of a one-to-many conversion (a fused
        tensor split into several), named as transformers names them (the first target pattern replaced)."""
        target, pattern = self.target(key)
        if pattern is None:
            return [target]
        patterns = self._converter_of[pattern].target_patterns
        if len(patterns) == 1:
            return [target]
        return _split_targets(target, patterns)

    def renamed_sources(self, keys: Any) -> dict[str, str]:
        """Module key -> the checkpoint key renamed onto it (keys a converter combines left out); where two
        keys are renamed onto one module key, the first in order, as transformers loads it."""
        sources: dict[str, str] = {}
        for key in sorted(keys, key=_natural_key):
            target, pattern = self.target(key)
            if pattern is None:
                sources.setdefault(target, key)
        return sources

    def convert(self, tensors: dict[str, Any]) -> dict[str, Any]:
        """Checkpoint tensors -> module tensors, for every module key these tensors fully provide."""
        out: dict[str, Any] = {}
        collected: dict[str, dict[str, list[Any]]] = {}
        for key in sorted(tensors, key=_natural_key):  # experts in numeric order: 2 before 10
            target, pattern = self.target(key)
            if pattern is None:  # two keys renamed onto one target: the first in order wins, as in transformers
                out.setdefault(target, tensors[key])
            else:
                collected.setdefault(target, {}).setdefault(pattern, []).append(tensors[key])
        for target, by_pattern in collected.items():
            converter = self._converter_of[next(iter(by_pattern))]
            values: dict[str, Any] = {p: by_pattern[p] for p in converter.source_patterns if p in by_pattern}
            for operation in converter.operations:
                try:
                    values = operation.convert(values, source_patterns=converter.source_patterns,
                                               target_patterns=converter.target_patterns, full_layer_name=target,
                                               model=_WholeShapes(self._model, self._meta),
                                               config=self._model.config)
                except Exception as exc:  # noqa: BLE001 - e.g. an operation sizing its split from the (partitioned) model
                    raise NotConvertible(f"{target}: transformers' {type(operation).__name__} does not run on the "
                                         f"partitioned model: {type(exc).__name__}: {exc}") from None
            if len(converter.target_patterns) == 1:
                (out[target],) = values.values()
                continue
            for name, key in zip(converter.target_patterns, _split_targets(target, converter.target_patterns)):
                if name not in values:
                    raise NotConvertible(f"{target}: the conversion gave {sorted(values)}, not {name}")
                out[key] = values[name]
        return out


class _WholeShapes:
    """The model as a conversion operation sees it without ZeRO: `get_parameter` gives a tensor of the whole
    shape (on the meta device), not the empty partition (e.g. a Transpose that checks the target's shape)."""

    def __init__(self, model: Any, meta: dict[str, Any]):
        self._model, self._meta = model, meta

    def get_parameter(self, name: str) -> Any:
        return self._meta[name] if name in self._meta else self._model.get_parameter(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _split_targets(target: str, patterns: list[str]) -> list[str]:
    """The module keys of a one-to-many conversion: transformers names the key after the first target pattern
    and the operations return one tensor per pattern. Plain patterns only; others are NotConvertible."""
    if patterns[0] not in target or any(c in p for p in patterns for c in "*()[]^$\\"):
        raise NotConvertible(f"{target}: the reference cannot name the module tensors of a conversion into "
                             f"{', '.join(patterns)}")
    return [target.replace(patterns[0], p, 1) for p in patterns]


def _natural_key(key: str) -> list[tuple[int, int, str]]:
    """Numbers in numeric order (2 before 10); a number and a name at one position compare too."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split(".")]


def checkpoint_conversion(model: Any) -> CheckpointConversion | None:
    """The model type's declared checkpoint conversion; None where the version declares none."""
    try:
        get_mapping = _first_attr([("transformers.conversion_mapping", "get_model_conversion_mapping")])
        rename = _first_attr([("transformers.core_model_loading", "rename_source_key")])
        renaming_type, converter_type = (_first_attr([("transformers.core_model_loading", n)])
                                         for n in ("WeightRenaming", "WeightConverter"))
    except ImportError:
        return None
    mapping = get_mapping(model)
    return CheckpointConversion(model, mapping, renaming_type, converter_type, rename) if mapping else None


def zero3_partitioning(ds_config: dict[str, Any]) -> Any:
    """The context that builds modules partitioned as `ds_config` asks: MiCS's own where the config sets a
    MiCS shard size and this deepspeed has it, else zero.Init (which rejects or ignores what it cannot do).
    Under hierarchical partitioning, the process's hpZ group once it exists, as DeepSpeed's engine and
    optimizer take it: zero.Init would try to create a second one, and refuse."""
    import deepspeed
    from deepspeed.utils import groups

    context = getattr(deepspeed.zero, "MiCS_Init", None) if mics_shard_size(ds_config) else None
    existing = getattr(groups, "_get_zero_param_intra_parallel_group", lambda: None)()
    hpz = int(ds_config.get("zero_optimization", {}).get("zero_hpz_partition_size", 1)) > 1
    reuse = {"zero_param_parallel_group": existing} if hpz and existing is not None else {}
    return (context or deepspeed.zero.Init)(config_dict_or_path=ds_config, **reuse)
