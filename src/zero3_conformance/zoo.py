"""Tiny model families and the checkpoints written from them.

Each family is chosen for what it exercises: tied embeddings (gpt2), untied + rotary (llama), grouped
query attention (qwen3), a padding index and a task head missing from a base checkpoint (bert), an
encoder-decoder (t5), mixture-of-experts (mixtral). Odd sizes (gpt2 and t5 hidden size 65, a vocabulary
of 131, bert's 3 labels) leave tensors that world sizes 2 and 3 do not divide, as real vocabularies do.
Checkpoints are written with the installed transformers' own `save_pretrained`, in three layouts, and
cached by (transformers version, family definition, layout).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .compat import build_from_config
from .errors import UsageError, exception_line

CHECKPOINT_SEED = 1234
SHARD_SIZE = "40KB"  # small enough that every family's checkpoint spans several shards


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    config_class: str
    config_kwargs: tuple[tuple[str, Any], ...]
    auto_class: str  # what from_config / from_pretrained build
    checkpoint_auto_class: str  # what the checkpoint is written from (a base model for task heads)
    tied: bool  # whether the built model shares its input and output embeddings
    source_dir: str | None = None  # a user's checkpoint: config and weights come from there
    since: str = ""  # the transformers release that introduced the family, where it is newer than the oldest supported
    model_type: str = ""  # a type of the architecture sweep: its config is the type's default config, shrunk

    @property
    def label(self) -> str:
        """The model as case ids name it: a sweep type with the class built, since a type has several heads."""
        return f"{self.name}.{self.auto_class}" if self.model_type else self.name

    def checkpoint_recipe(self) -> tuple[Any, ...]:
        """What decides the checkpoint's contents (heads of one type share their base checkpoint)."""
        return (self.name, self.config_class, self.config_kwargs, self.checkpoint_auto_class, self.source_dir,
                self.model_type)

    def make_config(self) -> Any:
        import transformers

        if self.model_type:
            from .architectures import ArchitectureUnavailable, tiny_config

            try:
                return tiny_config(self.model_type)
            except ArchitectureUnavailable as exc:
                raise FamilyUnavailable(f"{self.model_type}: {exc}") from None
        if self.source_dir:
            return transformers.AutoConfig.from_pretrained(self.source_dir)
        config_class = getattr(transformers, self.config_class, None)
        if config_class is None:
            arrived = f" (it arrived in transformers {self.since})" if self.since else ""
            raise FamilyUnavailable(f"transformers {transformers.__version__} has no {self.config_class}{arrived}")
        return config_class(**dict(self.config_kwargs))


class FamilyUnavailable(Exception):
    """The installed transformers lacks this family (reported as SKIP with this reason)."""


def _kw(**kwargs: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(kwargs.items()))


VOCAB = 131
_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=VOCAB, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)

FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("gpt2", "GPT2Config", _kw(n_embd=65, n_layer=2, n_head=5, n_positions=128, vocab_size=VOCAB,
                                   bos_token_id=1, eos_token_id=2),
           "AutoModelForCausalLM", "AutoModelForCausalLM", tied=True),
    Family("llama", "LlamaConfig", _kw(**_DECODER, num_key_value_heads=4, tie_word_embeddings=False),
           "AutoModelForCausalLM", "AutoModelForCausalLM", tied=False),
    Family("qwen3", "Qwen3Config", _kw(**_DECODER, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
           "AutoModelForCausalLM", "AutoModelForCausalLM", tied=False, since="4.51.0"),
    Family("bert", "BertConfig", _kw(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, vocab_size=VOCAB, max_position_embeddings=128,
                                     pad_token_id=0, num_labels=3),
           "AutoModelForSequenceClassification", "AutoModel", tied=False),
    Family("t5", "T5Config", _kw(d_model=65, d_ff=128, d_kv=16, num_layers=2, num_decoder_layers=2, num_heads=4,
                                 vocab_size=VOCAB, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
           "AutoModelForSeq2SeqLM", "AutoModelForSeq2SeqLM", tied=True),
    Family("mixtral", "MixtralConfig", _kw(**_DECODER, num_key_value_heads=2, num_local_experts=4,
                                           num_experts_per_tok=2, tie_word_embeddings=False),
           "AutoModelForCausalLM", "AutoModelForCausalLM", tied=False),
)}


# P3's model: large enough (263 MB in fp32) that construction dominates the noise of a process's own
# memory, and made of many mid-sized modules (the largest, an embedding, about 25 MB) so the bound
# model_bytes / world + largest_module_bytes stays well below model_bytes from world size 2 on.
_MEMORY_LLAMA = dict(max_position_embeddings=256, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
MEMORY_FAMILY = Family("llama-memory", "LlamaConfig", _kw(
    hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12, num_key_value_heads=12,
    vocab_size=8000, **_MEMORY_LLAMA), "AutoModelForCausalLM", "AutoModelForCausalLM", tied=False)
# The same architecture, tiny: built once before measuring, so one-time costs of the code path (lazy imports,
# allocator arenas, communication buffers) are not counted as the construction's.
MEMORY_WARMUP_FAMILY = Family("llama-memory-warmup", "LlamaConfig", _kw(
    hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
    vocab_size=256, **_MEMORY_LLAMA), "AutoModelForCausalLM", "AutoModelForCausalLM", tied=False)


def cache_root() -> Path:
    return Path(os.environ.get("ZERO3_CONFORMANCE_CACHE", Path.home() / ".cache" / "zero3-conformance"))


def auto_class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def checkpoint_dir(family: Family, layout: str) -> Path:
    """Keyed by everything that decides the checkpoint's contents, so a changed family is never read stale."""
    import transformers

    recipe = repr((family.checkpoint_recipe(), CHECKPOINT_SEED, SHARD_SIZE)).encode()
    return (cache_root() / "zoo" / f"transformers-{transformers.__version__}"
            / f"{family.name}-{hashlib.sha1(recipe).hexdigest()[:10]}" / layout)


def ensure_checkpoint(family: Family, layout: str) -> Path:
    """The family's checkpoint in this layout, written once (atomically, so concurrent runs are safe)."""
    if family.source_dir:
        return Path(family.source_dir)
    target = checkpoint_dir(family, layout)
    if (target / "config.json").exists():
        return target
    if _distributed_rank_other_than_0():
        return _written_elsewhere(family, layout, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{layout}-", dir=target.parent))
    try:
        try:
            _write_checkpoint(family, layout, staging)
            if not (staging / "config.json").exists():
                raise RuntimeError(f"save_pretrained wrote no config.json for {family.name} in {staging}")
        except FamilyUnavailable:
            raise
        except Exception as exc:  # a sweep type that cannot be saved without ZeRO is not checkable
            if not family.model_type:
                raise
            raise FamilyUnavailable(f"{family.model_type}: its {family.checkpoint_auto_class} checkpoint cannot "
                                    f"be written without ZeRO: {exception_line(exc)}") from None
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _distributed_rank_other_than_0() -> bool:
    """transformers' save_pretrained writes only on rank 0 of an initialized process group (5.x)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


def _written_elsewhere(family: Family, layout: str, target: Path) -> Path:
    """The checkpoint written by a fresh process outside the process group: a rank other than 0, on a node
    that shares no files with rank 0's (a launched world), writes its own copy that way."""
    last = _write_in_fresh_process([(family, layout)])
    if not (target / "config.json").exists():
        raise FamilyUnavailable(f"{family.name}: its {layout} checkpoint could not be written here: {last}")
    return target


def _write_in_fresh_process(pairs: list[tuple[Family, str]]) -> str:
    """Writes the checkpoints in one fresh process; returns the last line it printed on stderr."""
    import pickle
    import subprocess

    writer = "import pickle, sys; from zero3_conformance.zoo import ensure_checkpoints; " \
             "ensure_checkpoints(pickle.load(sys.stdin.buffer))"
    done = subprocess.run([sys.executable, "-c", writer], input=pickle.dumps(pairs), capture_output=True,
                          check=False)
    return (done.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]


def ensure_checkpoints(pairs: list[tuple[Family, str]]) -> None:
    """Every (family, layout) checkpoint written where it is missing, in one go; one that cannot be written is
    left out (its cases say why when they need it)."""
    missing = [(family, layout) for family, layout in pairs
               if not family.source_dir and not (checkpoint_dir(family, layout) / "config.json").exists()]
    if missing and _distributed_rank_other_than_0():
        _write_in_fresh_process(missing)
        return
    for family, layout in missing:
        try:
            ensure_checkpoint(family, layout)
        except FamilyUnavailable:
            continue


def sweep_family(model_type: str, head: str, checkpoint_class: str = "") -> Family:
    """A type of the architecture sweep, built as `head`; its checkpoint holds the type's base model unless
    `checkpoint_class` says otherwise, so a head class loads a base checkpoint as users' fine-tuning does."""
    from .architectures import base_class

    return Family(model_type, "", (), head, checkpoint_class or base_class(model_type), tied=False,
                  model_type=model_type)


def checkpoint_model(family: Family, config: Any = None) -> Any:
    """The model the family's checkpoint holds (`config` replaces the family's own)."""
    return seeded_checkpoint_model(family.checkpoint_auto_class, config or family.make_config())


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


def _write_checkpoint(family: Family, layout: str, out: Path) -> None:
    model = checkpoint_model(family)
    if layout == "safetensors":
        model.save_pretrained(out, max_shard_size="1GB")
    elif layout == "sharded":
        model.save_pretrained(out, max_shard_size=SHARD_SIZE)
        if not (out / "model.safetensors.index.json").exists():
            raise RuntimeError(f"save_pretrained wrote no shard index for {family.name}")
    elif layout == "bin":
        # Recent transformers no longer write pytorch_model.bin; write the same tensors save_pretrained
        # wrote, in the legacy format, the way older releases did.
        import torch
        from safetensors.torch import load_file

        model.save_pretrained(out, max_shard_size="1GB")
        state = load_file(str(out / "model.safetensors"))
        torch.save(state, out / "pytorch_model.bin")
        (out / "model.safetensors").unlink()
    else:
        raise ValueError(f"unknown layout {layout!r}")


def detect_layout(path: Path) -> str:
    """The layout of a user's checkpoint directory; UsageError if it holds no loadable weights or its weight
    files are damaged (a truncated or malformed file, an index naming shards that are not there)."""
    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"checkpoint directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise UsageError(f"checkpoint directory {path} has no config.json")
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"checkpoint index {index} is invalid: {type(exc).__name__}: {exc}") from None
        if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise UsageError(f"checkpoint index {index} is invalid: weight_map must map tensor names to shard files")
        for shard in sorted(set(weight_map.values())):
            if "/" in shard or not (path / shard).is_file():
                raise UsageError(f"checkpoint index {index} names a shard that is not there: {shard}")
            _check_safetensors(path / shard)
        return "sharded"
    if (path / "model.safetensors").is_file():
        _check_safetensors(path / "model.safetensors")
        return "safetensors"
    if (path / "pytorch_model.bin").is_file():
        _check_torch_archive(path / "pytorch_model.bin")
        return "bin"
    raise UsageError(f"checkpoint directory {path} has no model.safetensors, shard index or pytorch_model.bin")


def _check_safetensors(path: Path) -> None:
    """The file's header is whole and every tensor's bytes lie inside the file (reads the header only)."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(8)
        header_size = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        if header_size is None or header_size > size - 8:
            raise UsageError(f"{path} is not a safetensors file or is truncated: no complete header")
        try:
            header = json.loads(file.read(header_size))
            ends = [int(entry["data_offsets"][1]) for name, entry in header.items() if name != "__metadata__"]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise UsageError(f"{path} has a malformed safetensors header") from None
    data = size - 8 - header_size
    if ends and max(ends) > data:
        raise UsageError(f"{path} is truncated: its tensors need {max(ends)} bytes of data, the file holds {data}")


def _check_torch_archive(path: Path) -> None:
    """A torch.save file: a zip archive whose directory (at the end of the file) reads whole."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UsageError(f"{path} is not a readable torch.save archive (truncated?): {exc}") from None


def user_family(path: Path) -> Family:
    """A family for a user's own checkpoint: its config and class come from its config.json."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {Path(path) / 'config.json'}: {exc}") from None
    architectures: list[str] | None = config.get("architectures")
    if not architectures:
        raise UsageError(f"{Path(path) / 'config.json'} names no architectures; cannot tell which class to build")
    return Family(str(path), "", (), architectures[0], architectures[0],
                  tied=bool(config.get("tie_word_embeddings", True)), source_dir=str(path))
