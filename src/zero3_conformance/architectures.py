"""Tiny configs for any model type of the installed transformers, derived from the type's own default config.

Every size-like field is shrunk, in sub-configs too: hidden and intermediate sizes, layers, heads and kv heads,
head dims, vocabulary, positions, image and patch sizes, experts, and per-stage lists of widths and depths.
Per-layer lists follow the new layer count and token ids move inside the smaller vocabulary, which is odd
(131) so that partitions stay uneven. A type that does not build tiny says why; nothing is dropped silently.
This is the first part of checking every architecture: `zero3-conformance architectures` reports which types
build tiny here.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable
from typing import Any, Callable

from .errors import exception_line

MAX_PARAMETERS = 5_000_000
VOCAB = 131
# Field name -> the largest value it keeps. MoE expert widths stay multiples of 8: torch's grouped matmul on
# CPU needs 16-byte-aligned strides.
LIMITS: dict[str, int] = {
    **dict.fromkeys(("hidden_size", "d_model", "n_embd", "embed_dim", "embedding_size", "projection_dim",
                     "out_hidden_size", "decoder_hidden_size", "encoder_hidden_size", "text_hidden_size",
                     "hidden_dim", "projector_hidden_size", "output_hidden_size", "encoder_hidden_dim",
                     "fpn_hidden_size", "classifier_proj_size", "latent_dim", "word_embed_proj_dim",
                     "vision_embed_dim", "text_embed_dim"), 64),
    **dict.fromkeys(("intermediate_size", "encoder_ffn_dim", "decoder_ffn_dim", "ffn_dim", "d_ff", "mlp_dim",
                     "n_inner", "decoder_intermediate_size", "encoder_intermediate_size"), 128),
    **dict.fromkeys(("moe_intermediate_size", "shared_expert_intermediate_size", "expert_intermediate_size"), 32),
    **dict.fromkeys(("num_hidden_layers", "num_layers", "n_layer", "encoder_layers", "decoder_layers",
                     "num_decoder_layers", "depth", "max_window_layers", "num_encoder_layers", "n_layers",
                     "encoder_num_hidden_layers"), 2),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads",
                     "decoder_attention_heads", "n_heads", "decoder_num_attention_heads"), 4),
    **dict.fromkeys(("num_key_value_heads", "n_kv_heads", "num_kv_heads"), 2),
    **dict.fromkeys(("head_dim", "qk_nope_head_dim", "v_head_dim", "qk_rope_head_dim", "d_kv", "kv_lora_rank",
                     "q_lora_rank", "index_head_dim", "linear_key_head_dim", "linear_value_head_dim",
                     "qk_head_dim"), 16),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "max_source_positions", "max_target_positions",
                     "original_max_position_embeddings", "n_ctx"), 128),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts"), 4),
    **dict.fromkeys(("vocab_size", "decoder_vocab_size"), VOCAB),
    "num_experts_per_tok": 2, "sliding_window": 64, "image_size": 32, "patch_size": 8,
}
# Lists of integers, by name: per-stage depths and widths shrink; geometry (kernels, strides, patches) stays.
LIST_KEPT = re.compile(r"patch|kernel|stride|padding|image_size|dilation|ratio|indices|indexes|out_features")
LIST_HEADS = re.compile(r"num_(attention_)?heads$")
LIST_DEPTHS = re.compile(r"depth|num_blocks|layers")
LIST_WIDTHS = re.compile(r"hidden_size|embed_dim|channels|hidden_dim|_dims?$|sizes$")
LIST_LIMITS = ((LIST_HEADS, 2), (LIST_DEPTHS, 1), (LIST_WIDTHS, 32))
TOKEN_ID = re.compile(r"_token_(id|index)$")


class ArchitectureUnavailable(Exception):
    """The model type cannot be built tiny here (reported with this reason)."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shrunk_list(name: str, values: list[int]) -> list[int]:
    if LIST_KEPT.search(name):
        return values
    limit = next((limit for pattern, limit in LIST_LIMITS if pattern.search(name)), None)
    return values if limit is None else [min(v, limit) for v in values]


def shrink(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict (as `PretrainedConfig.to_dict()` gives it) with every size-like field made small."""
    out: dict[str, Any] = {}
    for name, value in config.items():
        if isinstance(value, dict):
            out[name] = shrink(value)
        elif isinstance(value, list) and value and all(_is_int(v) for v in value):
            out[name] = _shrunk_list(name, value)
        elif _is_int(value) and name in LIMITS:
            out[name] = min(value, LIMITS[name])
        else:
            out[name] = value
    layers, now = config.get("num_hidden_layers"), out.get("num_hidden_layers")
    if _is_int(layers) and _is_int(now) and now < layers:
        _follow_layer_count(out, layers, now)
    vocab = out.get("vocab_size")
    if _is_int(vocab):  # token ids inside the vocabulary, still distinct from each other
        used = {value for name, value in out.items() if TOKEN_ID.search(name) and _is_int(value)}
        free = (token for token in range(vocab - 1, 0, -1) if token not in used)
        for name in sorted(out):
            if TOKEN_ID.search(name) and _is_int(out[name]) and out[name] >= vocab:
                out[name] = next(free)
    return out


def _follow_layer_count(config: dict[str, Any], before: int, now: int) -> None:
    """What is per layer follows the new layer count: per-layer lists (`layer_types`) and tables keyed by
    layer index (`per_layer_config`) are cut; a backbone's stage names and the stages it outputs are left for
    the config to derive again (its default: the last stage)."""
    for name, value in list(config.items()):
        if isinstance(value, list) and len(value) == before:
            config[name] = value[:now]
        elif "layer" in name and isinstance(value, dict) and value and all(str(k).isdigit() for k in value):
            config[name] = {key: entry for key, entry in value.items() if int(key) < now}
    if "stage_names" in config:
        for name in ("stage_names", "out_features", "out_indices"):
            config.pop(name, None)


def model_types() -> list[str]:
    """Every model type the installed transformers has an AutoModel class for."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    return list(MODEL_MAPPING_NAMES)


def _parameters_on_meta(build: Callable[[], Any]) -> int:
    """The parameter count of the model `build()` makes on the meta device (no memory, no init)."""
    import torch

    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())


@functools.cache
def _auto_mappings() -> dict[str, dict[str, Any]]:
    """Every auto mapping of the installed transformers (name -> {model type: class name(s)}), by name."""
    from transformers.models.auto import modeling_auto

    return {name: getattr(modeling_auto, name) for name in sorted(dir(modeling_auto))
            if name.startswith("MODEL_") and name.endswith("_MAPPING_NAMES")}


def _class_names(entry: Any) -> list[str]:
    return [entry] if isinstance(entry, str) else list(entry or ())


def base_class(model_type: str) -> str:
    """The class AutoModel builds for the type (the first, where the mapping lists several)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    return _class_names(MODEL_MAPPING_NAMES[model_type])[0]


def head_classes(model_type: str) -> list[str]:
    """Every class the auto mappings list for the type, its base class first, each once; only those the
    installed transformers exports (a listed class it does not export cannot be built by name)."""
    import transformers

    names = [base_class(model_type)]
    for mapping in _auto_mappings().values():
        names += [n for n in _class_names(mapping.get(model_type)) if n not in names]
    return [n for n in names if hasattr(transformers, n)]


def foreign_config_reason(model_type: str, head: str) -> str | None:
    """Why `head` does not build tiny from the type's checkpoint, where it reads it with a config class of
    its own (a mapping may list such a class under the type, e.g. qwen2's JevForDecision, whose config
    fills what a qwen2 config lacks with full-size defaults); None where it builds tiny or takes the type's
    config (or one of its sub-configs), which the type's survey covers."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        cls = getattr(transformers, head)
        own = getattr(cls, "config_class", None)
    except ImportError:  # a placeholder for a class whose optional package is missing: it says so when built
        return None
    config_class = CONFIG_MAPPING[model_type]
    takes = (config_class, *(getattr(config_class, "sub_configs", None) or {}).values())
    if own is None or any(isinstance(c, type) and issubclass(c, own) for c in takes):
        return None
    try:
        parameters = _parameters_on_meta(lambda: cls._from_config(own.from_dict(tiny_config(model_type).to_dict())))
    except Exception as exc:  # noqa: BLE001 - any failure is the reason this class is not available tiny
        return f"{head} reads the checkpoint with its own {own.__name__}, and does not build: {exception_line(exc)}"
    if parameters > MAX_PARAMETERS:
        return (f"{head} reads the checkpoint with its own {own.__name__}: {parameters:,} parameters, more than "
                f"{MAX_PARAMETERS:,}")
    return None


# Heads whose loss the harness can ask for from the inputs it makes, most useful first: the N and S
# clauses run on the first of these a type has.
LOSS_MAPPINGS = ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
                 "MODEL_FOR_MASKED_LM_MAPPING_NAMES", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
                 "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",
                 "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES")


LANGUAGE_MODEL_MAPPINGS = 3  # the first LOSS_MAPPINGS: causal, seq2seq and masked language models

# Heads whose output size is the config's number of labels: where G8 overrides `num_labels` / `id2label`.
LABEL_MAPPINGS = ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
                  "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES", "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES")


def _first_head(model_type: str, mapping_names: tuple[str, ...]) -> str | None:
    mappings = _auto_mappings()
    heads = head_classes(model_type)
    for name in mapping_names:
        for head in _class_names(mappings.get(name, {}).get(model_type)):
            if head in heads:
                return head
    return None


def loss_head(model_type: str) -> str | None:
    """The head the N and S clauses run on, or None where the type has none the harness can train. A language
    model head first (generation needs one), the first of LOSS_MAPPINGS that holds a tensor of its own (one the
    base class lacks, not tied to one it has: an encoder-decoder's seq2seq LM, with its final logits bias,
    before its decoder-only causal LM, whose head is its tied embedding); among the other heads likewise."""
    mappings, heads = _auto_mappings(), head_classes(model_type)
    candidates = list(dict.fromkeys(head for name in LOSS_MAPPINGS
                                    for head in _class_names(mappings.get(name, {}).get(model_type))
                                    if head in heads))
    language = [head for name in LOSS_MAPPINGS[:LANGUAGE_MODEL_MAPPINGS]
                for head in _class_names(mappings.get(name, {}).get(model_type)) if head in candidates]
    for group in (language, [head for head in candidates if head not in language]):
        if group:
            return next((head for head in group if len(group) == 1 or _own_tensors(model_type, head)), group[0])
    return None


@functools.cache
def _own_tensors(model_type: str, head: str) -> int:
    """How many tensors `head` holds that its type's base class lacks, a tied parameter counting only where
    none of its names is the base class's (built on the meta device, the head's base-model prefix stripped); 0
    where either does not build."""
    import torch
    import transformers

    try:
        with torch.device("meta"):
            config = tiny_config(model_type)
            base = set(getattr(transformers, base_class(model_type))._from_config(config).state_dict())
            model = getattr(transformers, head)._from_config(config)
    except Exception:  # noqa: BLE001 - a head that does not build tiny is chosen by the mappings' order alone
        return 0
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name.removeprefix(prefix))
    own = [group for group in names.values() if not any(name in base for name in group)]
    parameters = {name for group in names.values() for name in group}
    buffers = [name.removeprefix(prefix) for name in model.state_dict()]  # the persistent ones
    return len(own) + sum(1 for name in buffers if name not in parameters and name not in base)


def labelled_head(model_type: str) -> str | None:
    """A head sized by the number of labels, or None where the type has none."""
    return _first_head(model_type, LABEL_MAPPINGS)


def tiny_config(model_type: str) -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        config_class = CONFIG_MAPPING[model_type]
        return config_class.from_dict(shrink(config_class().to_dict()))
    except Exception as exc:  # noqa: BLE001 - any failure is the reason this type is not available tiny
        raise ArchitectureUnavailable(f"its config does not shrink: {exception_line(exc)}") from None


@dataclasses.dataclass(frozen=True)
class Survey:
    model_type: str
    parameters: int | None  # None where the type did not build tiny
    reason: str = ""

    @property
    def built(self) -> bool:
        return self.parameters is not None


def survey_one(model_type: str) -> Survey:
    """Builds the type's AutoModel from its tiny config on the meta device (no memory, no init)."""
    import transformers

    try:
        config = tiny_config(model_type)
        parameters = _parameters_on_meta(lambda: transformers.AutoModel.from_config(config))
    except ArchitectureUnavailable as exc:
        return Survey(model_type, None, str(exc))
    except Exception as exc:  # noqa: BLE001 - any failure is the reason this type is not available tiny
        return Survey(model_type, None, f"its AutoModel does not build: {exception_line(exc)}")
    if parameters > MAX_PARAMETERS:
        return Survey(model_type, None, f"{parameters:,} parameters after shrinking, more than "
                                        f"{MAX_PARAMETERS:,} (a size field the shrink does not know)")
    return Survey(model_type, parameters)


def survey(types: Iterable[str]) -> list[Survey]:
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # default configs warn about token ids; the survey says why
    try:
        return [survey_one(t) for t in types]
    finally:
        transformers.logging.set_verbosity(verbosity)
