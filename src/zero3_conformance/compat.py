"""Stand-ins for APIs that moved between library versions. Each looks the API up when called, so one
version's missing name fails only the check that needs it, never import or collection."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any, Callable, Iterator

from packaging.version import Version


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


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """from_config / from_pretrained take `dtype` from 4.56 on and `torch_dtype` before."""
    if dtype is None:
        return {}
    return {"dtype" if transformers_version() >= Version("4.56") else "torch_dtype": dtype}


def no_init_weights() -> contextlib.AbstractContextManager:
    """transformers' switch that skips weight initialization while a model is constructed."""
    return _first_attr([
        ("transformers.initialization", "no_init_weights"),
        ("transformers.modeling_utils", "no_init_weights"),
    ])()


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


def checkpoint_key_converter(model: Any) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """The installed library's declared conversion from a model type's checkpoint keys to its module keys
    (transformers 5 fuses per-expert MoE weights on load). None when the version declares none."""
    try:
        get_mapping = _first_attr([("transformers.conversion_mapping", "get_model_conversion_mapping")])
        apply = _first_attr([("transformers.integrations.deepspeed", "_apply_weight_conversions_to_state_dict")])
    except ImportError:
        return None
    mapping = get_mapping(model)
    if not mapping:
        return None

    def convert(tensors: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for group in apply(model, dict(tensors), mapping):
            out.update(group)
        return out

    return convert


def checkpoint_key_renamer(model: Any) -> Callable[[str], str] | None:
    """Maps one checkpoint key to the module key it feeds under the library's declared conversions."""
    try:
        rename = _first_attr([("transformers.core_model_loading", "rename_source_key")])
        get_mapping = _first_attr([("transformers.conversion_mapping", "get_model_conversion_mapping")])
        transform_types = [_first_attr([("transformers.core_model_loading", n)])
                           for n in ("WeightRenaming", "WeightConverter")]
    except ImportError:
        return None
    mapping = get_mapping(model)
    if not mapping:
        return None
    import torch

    renamings = [m for m in mapping if isinstance(m, transform_types[0])]
    converters = [m for m in mapping if isinstance(m, transform_types[1])]
    meta = {k: torch.empty(v.shape if not hasattr(v, "ds_shape") else v.ds_shape, device="meta")
            for k, v in model.state_dict().items()}

    def renamer(key: str) -> str:
        return rename(key, renamings, converters, base_model_prefix=model.base_model_prefix,
                      meta_state_dict=meta)[0]

    return renamer
