"""DeepSpeed configs the harness builds with: the default stage-3 config and validation of a user's own."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from .errors import UsageError, shown_path

# DeepSpeed keeps parameters below a persistence threshold (default 1e5 elements) whole on every rank once
# the engine runs. The zoo's models are tiny, so by default every parameter would persist and the engine
# would never gather or release anything. A threshold scaled to the zoo gives the regime of a full-size
# model: weight matrices are fetched and released around every use, vectors (norms, biases) persist.
PERSISTENCE_THRESHOLD = 128

DEFAULT_ZERO3_CONFIG: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": 1,
    "gradient_accumulation_steps": 1,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": PERSISTENCE_THRESHOLD},
}

DTYPE_SECTIONS = {"fp16": "fp16", "bf16": "bf16"}


def read_config_source(source: str | Path | dict[str, Any]) -> dict[str, Any]:
    """Reads a config from a dict or a JSON file and validates it; raises UsageError naming the problem."""
    if not isinstance(source, (str, Path)):
        config = copy.deepcopy(source)  # a dict, or a wrong type that validate() names
        where = "config"
    else:
        path = Path(source)
        where = shown_path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read DeepSpeed config {where}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise UsageError(f"DeepSpeed config {where} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        except ValueError as exc:  # a path no file can have, e.g. with a NUL byte in it
            raise UsageError(f"cannot read DeepSpeed config {where}: {exc}") from None
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"DeepSpeed config {where} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
    validate(config, where)
    return config


def validate(config: Any, where: str = "config") -> None:
    if not isinstance(config, dict):
        raise UsageError(f"DeepSpeed config {where} must be a JSON object, got {type(config).__name__}")
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise UsageError(f"DeepSpeed config {where}: 'zero_optimization' must be an object, got {zero!r}")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or not isinstance(stage, int) or stage not in (0, 1, 2, 3):
        raise UsageError(f"DeepSpeed config {where}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}")
    for section in DTYPE_SECTIONS:
        block = config.get(section, {})
        if not isinstance(block, dict):
            raise UsageError(f"DeepSpeed config {where}: '{section}' must be an object, got {block!r}")
        enabled = block.get("enabled", False)
        if not isinstance(enabled, bool) and enabled != "auto":
            raise UsageError(f"DeepSpeed config {where}: {section}.enabled must be true or false, got {enabled!r}")
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size"):
        value = config.get(key, 1)
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"DeepSpeed config {where}: {key} must be a positive integer, got {value!r}")


def load_user_zero3_config(path: str | Path) -> dict[str, Any]:
    """A user's --ds-config: valid, and stage 3, since every build it is used for is a ZeRO-3 build."""
    config = read_config_source(path)
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage != 3:
        raise UsageError(f"DeepSpeed config {path}: zero_optimization.stage must be 3 for ZeRO-3 builds, got {stage}")
    return config


def with_dtype(config: dict[str, Any], dtype: str) -> dict[str, Any]:
    """The config with exactly the requested training dtype enabled ('fp32', 'bf16' or 'fp16')."""
    out = copy.deepcopy(config)
    for section in DTYPE_SECTIONS:
        out.pop(section, None)
    if dtype in DTYPE_SECTIONS:
        out[DTYPE_SECTIONS[dtype]] = {"enabled": True}
    return out


def precision(config: dict[str, Any]) -> str:
    """The training dtype the config enables: 'bf16' or 'fp16' where its section is enabled, else 'fp32'."""
    for dtype, section in DTYPE_SECTIONS.items():
        if config.get(section, {}).get("enabled") is True:
            return dtype
    return "fp32"


def _torch_dtypes() -> dict[str, Any]:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def torch_dtype(dtype: str) -> Any:
    """torch's dtype for a training dtype's name ('fp32', 'bf16', 'fp16')."""
    return _torch_dtypes()[dtype]


def dtype_name(dtype: Any) -> str:
    """A training dtype's name for torch's dtype (torch.bfloat16 -> 'bf16')."""
    return {value: name for name, value in _torch_dtypes().items()}[dtype]


def with_stage(config: dict[str, Any], stage: int) -> dict[str, Any]:
    out = copy.deepcopy(config)
    out.setdefault("zero_optimization", {})["stage"] = stage
    return out


# Node-aware ZeRO-3 configurations a run can check besides the plain one: each sets its partition group to a
# node's ranks. ZeRO++'s hierarchical partitioning keeps a second copy of each shard within the group (the
# primary partition still spans the world); MiCS shards each parameter over its group alone, replicated
# across groups.
PLAIN = "plain"
VARIANTS = {
    PLAIN: {},
    "hpz": {"zero_hpz_partition_size": None},
    "mics": {"mics_shard_size": None},
}


def with_zero3_variant(config: dict[str, Any], variant: str, group_size: int) -> dict[str, Any]:
    """The config with the variant's settings, its group `group_size` ranks (a node's)."""
    out = copy.deepcopy(config)
    for key in VARIANTS[variant]:
        out.setdefault("zero_optimization", {})[key] = group_size
    return out


def mics_shard_size(config: dict[str, Any]) -> int:
    """The size of the MiCS group the config sets; 0 where it sets none (DeepSpeed's default is -1)."""
    return max(0, int(config.get("zero_optimization", {}).get("mics_shard_size", -1) or -1))


def partition_group_size(config: dict[str, Any], world_size: int) -> int:
    """How many ranks share one parameter's shards: the MiCS group where the config sets one, else the world."""
    shard = mics_shard_size(config)
    return shard if 0 < shard < world_size else world_size
