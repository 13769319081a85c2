"""Reproduces G8-base_and_head_checkpoints_cross_load[transformers-pixio.PixioModel-safetensors-ws2-fp32]
with transformers, deepspeed and torch alone (no zero3-conformance).

Run it on a CPU machine:   DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 repro.py
On GPUs (NCCL):            torchrun --nproc-per-node 2 repro.py
Exit status 1: the clause is broken here, with the evidence printed; 0: it holds.
"""

from __future__ import annotations

import sys
import contextlib
import dataclasses
import functools
import hashlib
import importlib
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import traceback
from packaging.version import Version
from pathlib import Path
from typing import Any, Callable, Iterator, Optional


# The case, as the harness made it.
CASE_ID = 'G8-base_and_head_checkpoints_cross_load[transformers-pixio.PixioModel-safetensors-ws2-fp32]'
MODEL_TYPE = 'pixio'
CONFIG = {'hidden_size': 64,
 'num_hidden_layers': 2,
 'num_attention_heads': 4,
 'image_size': 32,
 'patch_size': 8,
 'stage_names': ['stem', 'stage1', 'stage2'],
 'out_features': ['stage2'],
 'out_indices': [2]}
MODEL_CLASS = 'PixioModel'
CHECKPOINT_CLASS = 'PixioModel'
LAYOUT = 'safetensors'
WORLD_SIZE = 2
DTYPE = 'fp32'
DS_CONFIG = {'train_micro_batch_size_per_gpu': 1,
 'gradient_accumulation_steps': 1,
 'zero_optimization': {'stage': 3, 'stage3_param_persistence_threshold': 128}}
SHARD_SIZE = '40KB'


# The harness's check and every helper it calls, as the harness has them.


class ArchitectureUnavailable(Exception):
    """The model type cannot be built tiny here (reported with this reason)."""


CHECKPOINT_SEED = 1234


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

    def target(self, key: str) -> tuple[str, Optional[str]]:
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


class CheckpointReader:
    def __init__(self, path: Path, variant: Optional[str] = None, use_safetensors: Optional[bool] = None,
                 key_mapping: Optional[dict[str, str]] = None):
        self.path = Path(path)
        self.layout = choose_layout(self.path, variant, use_safetensors)
        file_name = with_variant(WEIGHT_FILES[self.layout], variant)
        if self.layout == "sharded":
            index = json.loads((self.path / file_name).read_text())
            stored = {key: self.path / name for key, name in index["weight_map"].items()}
        elif self.layout == "safetensors":
            stored = {key: self.path / file_name for key in self._safetensors_keys(self.path / file_name)}
        else:
            import torch

            # A str, not a Path: torch 2.2 memory-maps only a filename given as a string.
            self._bin = torch.load(str(self.path / file_name), map_location="cpu", weights_only=True, mmap=True)
            stored = {key: self.path / file_name for key in self._bin}
        self._stored_name = {_renamed(key, key_mapping): key for key in stored}
        self._file_of = {name: stored[key] for name, key in self._stored_name.items()}
        self._open: dict[Path, Any] = {}

    @staticmethod
    def _safetensors_keys(file: Path) -> list[str]:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            return list(handle.keys())

    def keys(self) -> list[str]:
        """The tensors' names after `key_mapping`."""
        return list(self._file_of)

    def shape(self, key: str) -> tuple[int, ...]:
        if self.layout == "bin":
            return tuple(self._bin[self._stored_name[key]].shape)
        return tuple(self._handle(key).get_slice(self._stored_name[key]).get_shape())

    def get(self, key: str) -> Any:
        if self.layout == "bin":
            return self._bin[self._stored_name[key]]
        return self._handle(key).get_tensor(self._stored_name[key])

    def floating_dtype(self) -> Any:
        """The dtype of the first floating tensor, which `dtype="auto"` takes when the config names none."""
        for key in self.keys():
            tensor = self.get(key)
            if tensor.is_floating_point():
                return tensor.dtype
        return None

    def _handle(self, key: str) -> Any:
        file = self._file_of[key]
        if file not in self._open:
            from safetensors import safe_open

            if not file.is_file():
                raise FileNotFoundError(f"checkpoint index names {file.name}, which does not exist")
            self._open[file] = safe_open(str(file), framework="pt")
        return self._open[file]


DETERMINISTIC_ATOL = 1e-07


DETERMINISTIC_RTOL = 1e-06


DTYPE_SECTIONS = {'bf16': 'bf16', 'fp16': 'fp16'}


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


LIMITS = {'classifier_proj_size': 64,
 'd_ff': 128,
 'd_kv': 16,
 'd_model': 64,
 'decoder_attention_heads': 4,
 'decoder_ffn_dim': 128,
 'decoder_hidden_size': 64,
 'decoder_intermediate_size': 128,
 'decoder_layers': 2,
 'decoder_num_attention_heads': 4,
 'decoder_vocab_size': 131,
 'depth': 2,
 'embed_dim': 64,
 'embedding_size': 64,
 'encoder_attention_heads': 4,
 'encoder_ffn_dim': 128,
 'encoder_hidden_dim': 64,
 'encoder_hidden_size': 64,
 'encoder_intermediate_size': 128,
 'encoder_layers': 2,
 'encoder_num_hidden_layers': 2,
 'expert_intermediate_size': 32,
 'ffn_dim': 128,
 'fpn_hidden_size': 64,
 'head_dim': 16,
 'hidden_dim': 64,
 'hidden_size': 64,
 'image_size': 32,
 'index_head_dim': 16,
 'intermediate_size': 128,
 'kv_lora_rank': 16,
 'latent_dim': 64,
 'linear_key_head_dim': 16,
 'linear_value_head_dim': 16,
 'max_position_embeddings': 128,
 'max_source_positions': 128,
 'max_target_positions': 128,
 'max_window_layers': 2,
 'mlp_dim': 128,
 'moe_intermediate_size': 32,
 'n_ctx': 128,
 'n_embd': 64,
 'n_head': 4,
 'n_heads': 4,
 'n_inner': 128,
 'n_kv_heads': 2,
 'n_layer': 2,
 'n_layers': 2,
 'n_positions': 128,
 'n_routed_experts': 4,
 'num_attention_heads': 4,
 'num_decoder_layers': 2,
 'num_encoder_layers': 2,
 'num_experts': 4,
 'num_experts_per_tok': 2,
 'num_heads': 4,
 'num_hidden_layers': 2,
 'num_key_value_heads': 2,
 'num_kv_heads': 2,
 'num_layers': 2,
 'num_local_experts': 4,
 'original_max_position_embeddings': 128,
 'out_hidden_size': 64,
 'output_hidden_size': 64,
 'patch_size': 8,
 'projection_dim': 64,
 'projector_hidden_size': 64,
 'q_lora_rank': 16,
 'qk_head_dim': 16,
 'qk_nope_head_dim': 16,
 'qk_rope_head_dim': 16,
 'shared_expert_intermediate_size': 32,
 'sliding_window': 64,
 'text_embed_dim': 64,
 'text_hidden_size': 64,
 'v_head_dim': 16,
 'vision_embed_dim': 64,
 'vocab_size': 131,
 'word_embed_proj_dim': 64}


LIST_KEPT = re.compile('patch|kernel|stride|padding|image_size|dilation|ratio|indices|indexes|out_features', 32)


LIST_LIMITS = ((re.compile('num_(attention_)?heads$', 32), 2), (re.compile('depth|num_blocks|layers', 32), 1), (re.compile('hidden_size|embed_dim|channels|hidden_dim|_dims?$|sizes$', 32), 32))


LOSS_MAPPINGS = ('MODEL_FOR_CAUSAL_LM_MAPPING_NAMES',
 'MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES',
 'MODEL_FOR_MASKED_LM_MAPPING_NAMES',
 'MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES',
 'MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES',
 'MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES',
 'MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES',
 'MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES')


@dataclasses.dataclass
class Load:
    """One from_pretrained call, made without ZeRO and then by the subject under ZeRO-3."""
    what: str  # the options as the finding names them
    model_class: Any
    path: Path
    options: dict[str, Any]
    ds_config: Optional[dict[str, Any]] = None  # the case's own unless the options need another precision
    reader: Optional[CheckpointReader] = None  # the file the options select, to see the baseline read it
    baseline: Any = None
    expected: Optional[dict[str, Any]] = None  # the baseline's loading report
    tensors: Optional[dict[str, Any]] = None  # the baseline's tensors as ZeRO-3 holds them (_as_partitioned)
    baseline_error: str = ""


MAX_LISTED = 8


MAX_PARAMETERS = 5000000


MIN_STATISTICS = 16


class NotApplicable(Exception):
    """The check does not apply to this case (becomes SKIP with this reason)."""


class NotConvertible(NotImplementedError):
    """A conversion the installed transformers declares that the reference does not re-implement: the
    reference cannot load that checkpoint (a SKIP that says so, not a finding about the subject)."""


SEED = 20260101


SIGMAS = 6.0


class SubjectRaised(Exception):
    """The subject raised while doing what the clause asks (becomes FAIL carrying that exception)."""


TOKEN_ID = re.compile('_token_(id|index)$', 32)


class UsageError(ValueError):
    """Bad input: a malformed config, a missing checkpoint, an unknown name."""


WEIGHT_FILES = {'bin': 'pytorch_model.bin', 'safetensors': 'model.safetensors', 'sharded': 'model.safetensors.index.json'}


class _WholeShapes:
    """The model as a conversion operation sees it without ZeRO: `get_parameter` gives a tensor of the whole
    shape (on the meta device), not the empty partition (e.g. a Transpose that checks the target's shape)."""

    def __init__(self, model: Any, meta: dict[str, Any]):
        self._model, self._meta = model, meta

    def get_parameter(self, name: str) -> Any:
        return self._meta[name] if name in self._meta else self._model.get_parameter(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _a_head(case: Case, config: Any, base: str) -> Optional[str]:
    """The case's own class where it is a head, else the type's trained head, else its first head: one built
    from the type's own config (a head with a config class of its own, e.g. a text-only head of a multimodal
    type, is not, as the sweep does not build it from this config either)."""

    own = concrete_class(case.model_class(), config).__name__
    if own != base:
        return own
    model_type = config.model_type
    heads = [h for h in head_classes(model_type) if h != base and not foreign_config_reason(model_type, h)]
    trained = loss_head(model_type)
    return trained if trained in heads else heads[0] if heads else None


def _as_partitioned(baseline: Any, ds_config: dict[str, Any]) -> dict[str, Any]:
    """The baseline's tensors in the dtypes ZeRO-3 gives them under a precision in the config (P5): every floating
    parameter takes it, those the model keeps in float32 without ZeRO (_keep_in_fp32_modules) too, since ZeRO-3
    partitions and trains them in one dtype; an integer buffer keeps the dtype its module registers, which the
    float32 upcast of a kept module changes without ZeRO (a batch norm's num_batches_tracked). Rounding a value
    into that dtype is exact and the same on both sides, so loaded tensors still compare bit for bit."""
    expected = full_parameters(baseline)
    trained_in = precision(ds_config)
    if trained_in == "fp32":
        return expected
    dtype = torch_dtype(trained_in)
    parameters = dict(baseline.named_parameters())
    registered = _registered_dtypes(baseline)
    for name, tensor in expected.items():
        if not tensor.is_floating_point():
            continue
        if name in parameters:
            expected[name] = tensor.to(dtype)
        elif name in registered and not registered[name].is_floating_point:
            expected[name] = tensor.to(registered[name])
    return expected


@functools.cache
def _auto_mappings() -> dict[str, dict[str, Any]]:
    """Every auto mapping of the installed transformers (name -> {model type: class name(s)}), by name."""
    from transformers.models.auto import modeling_auto

    return {name: getattr(modeling_auto, name) for name in sorted(dir(modeling_auto))
            if name.startswith("MODEL_") and name.endswith("_MAPPING_NAMES")}


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


def _check_subject(case: Case, load: Load) -> None:
    def subject_load() -> tuple[Any, Any, dict[str, Any]]:
        return case.zero3_from_pretrained(load.model_class, load.path, load.ds_config, load.what, **load.options)

    if load.baseline_error:
        try:
            subject_load()
        except (SubjectRaised, NotApplicable):  # the subject does not load either: what the call without ZeRO does
            return
        case.fail(f"{load.what}: without ZeRO from_pretrained raises ({load.baseline_error}); under ZeRO-3 it loads "
                  f"(rank {case.rank})")
        return
    config_object, model, got = subject_load()
    for problem in report_differences(load.expected, got):
        case.fail(f"{load.what}: {problem}")
    for key in load.options:
        if hasattr(load.baseline.config, key):
            want, have = getattr(load.baseline.config, key), getattr(model.config, key, None)
            case.expect(want == have, f"{load.what}: config.{key} expected {want!r} (without ZeRO), got {have!r}")
    initialized = initialized_keys(load.expected)

    def compare(key: str, want: Any, have: Any) -> Optional[str]:
        problem = init_mismatch(key, want, have, False) if key in initialized else exact_mismatch(key, want, have)
        return problem and f"{load.what}: {problem}"

    compare_all(case, load.tensors, gathered_state(model), compare, "tensors differ")
    del model, config_object  # ZeRO-3 ends with the config object, before the next load's config is made


def _check_torch_archive(path: Path) -> None:
    """A torch.save file: a zip archive whose directory (at the end of the file) reads whole."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise UsageError(f"{path} is not a readable torch.save archive (truncated?): {exc}") from None


def _class_names(entry: Any) -> list[str]:
    return [entry] if isinstance(entry, str) else list(entry or ())


def _first_attr(candidates: list[tuple[str, str]]) -> Any:
    errors = []
    for module, name in candidates:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            errors.append(f"{module}.{name}: {exc}")
    raise ImportError("none of these exist in the installed version: " + "; ".join(errors))


def _first_difference(expected: Any, got: Any) -> str:
    import torch

    e, g = expected.detach().double().reshape(-1), got.detach().double().reshape(-1)
    differs = (e != g) & ~(torch.isnan(e) & torch.isnan(g))
    count = int(differs.sum())
    index = int(differs.nonzero()[0]) if count else 0
    position = _position(index, expected.shape)
    diff = (e - g).abs()
    return (f"{count}/{e.numel()} elements differ, max |diff| {float(diff[differs].max()) if count else 0:.3g}; "
            f"first at {position}: expected {float(e[index]):.9g}, got {float(g[index]):.9g}")


def _first_head(model_type: str, mapping_names: tuple[str, ...]) -> Optional[str]:
    mappings = _auto_mappings()
    heads = head_classes(model_type)
    for name in mapping_names:
        for head in _class_names(mappings.get(name, {}).get(model_type)):
            if head in heads:
                return head
    return None


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_baselines(case: Case, loads: list[Load]) -> None:
    """Every call without ZeRO, first; a baseline that does not read the file its options select leaves
    nothing faithful to compare with (SKIP saying so)."""
    for load in loads:
        case.seed()
        try:
            with uninitialized_memory_filled():
                load.baseline, load.expected = load.model_class.from_pretrained(
                    str(load.path), output_loading_info=True, trust_remote_code=False, **load.options)
        except Exception as exc:  # noqa: BLE001 - an error without ZeRO is the behaviour to match
            load.baseline_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            continue
        case.keep(load.baseline)
        load.tensors = _as_partitioned(load.baseline, load.ds_config or case.ds_config)
        if load.reader is not None:
            initialized = initialized_keys(load.expected)
            expected = {k: v for k, v in full_parameters(load.baseline).items() if k not in initialized}
            try:
                baseline_matches_file(load.reader, expected, load.baseline)
            except NotApplicable as exc:
                raise NotApplicable(f"with {load.what}: {exc}") from None


def _natural_key(key: str) -> list[tuple[int, int, str]]:
    """Numbers in numeric order (2 before 10); a number and a name at one position compare too."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split(".")]


def _parameters_on_meta(build: Callable[[], Any]) -> int:
    """The parameter count of the model `build()` makes on the meta device (no memory, no init)."""
    import torch

    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())


def _position(flat_index: int, shape: Any) -> tuple[int, ...]:
    import torch

    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), tuple(shape))) if len(shape) else ()


def _registered_dtypes(model: Any) -> dict[str, Any]:
    """Each state-dict tensor's dtype as the model's class registers it: the class built on the meta device."""
    import copy

    import torch

    try:
        with torch.device("meta"):
            fresh = build_from_config(type(model), copy.deepcopy(model.config))
    except Exception:  # noqa: BLE001 - without it integer buffers are compared as the baseline holds them
        return {}
    return {name: tensor.dtype for name, tensor in fresh.state_dict().items()}


def _renamed(key: str, key_mapping: Optional[dict[str, str]]) -> str:
    """`key_mapping`'s regular expressions, in order, each replacing its first match."""
    for pattern, replacement in (key_mapping or {}).items():
        key = re.sub(pattern, replacement, key, count=1)
    return key


def _report(case: Case, problems: list[str], what: str) -> None:
    for problem in problems[:MAX_LISTED]:
        case.fail(f"{problem} (rank {case.rank})")
    if len(problems) > MAX_LISTED:
        case.fail(f"... and {len(problems) - MAX_LISTED} more {what} (rank {case.rank})")


def _run(case: Case, loads: list[Load]) -> None:
    _load_baselines(case, loads)
    for load in loads:
        _check_subject(case, load)
    case.metrics["loads"] = [load.what for load in loads]


def _saved_checkpoint(case: Case, name: str, class_name: str, config: Any) -> Path:
    """A checkpoint of another class of the case's type, written as the harness writes every checkpoint."""

    target = _scratch(case) / name
    try:
        model = seeded_checkpoint_model(class_name, config)
    except Exception as exc:  # noqa: BLE001 - a class that does not build without ZeRO has nothing to compare
        raise NotApplicable(f"{class_name} does not build without ZeRO: {exception_line(exc)}") from None
    # transformers writes only on rank 0 of an initialized process group; each rank writes its own copy here.
    model.should_save_on_this_rank = lambda is_main_process: True
    try:
        model.save_pretrained(target)
    except Exception as exc:  # noqa: BLE001 - a class that cannot be saved without ZeRO has nothing to compare
        raise NotApplicable(f"a {class_name} checkpoint cannot be written without ZeRO: {exception_line(exc)}") \
            from None
    if not (target / "config.json").is_file():
        raise RuntimeError(f"save_pretrained wrote no checkpoint to {target} on rank {case.rank}")
    saved_type = json.loads((target / "config.json").read_text()).get("model_type")
    if saved_type != config.model_type:  # another class loading it would be built from that config's defaults
        raise NotApplicable(f"a {class_name} checkpoint holds a {saved_type} config, not the type's "
                            f"{config.model_type} one: another class loading it is built at that config's "
                            f"default (full) size, not tiny")
    return target


def _scratch(case: Case) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"zero3-conformance-g8-rank{case.rank}-"))
    case.on_close(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


def _shrunk_list(name: str, values: list[int]) -> list[int]:
    if LIST_KEPT.search(name):
        return values
    limit = next((limit for pattern, limit in LIST_LIMITS if pattern.search(name)), None)
    return values if limit is None else [min(v, limit) for v in values]


def _split_targets(target: str, patterns: list[str]) -> list[str]:
    """The module keys of a one-to-many conversion: transformers names the key after the first target pattern
    and the operations return one tensor per pattern. Plain patterns only; others are NotConvertible."""
    if patterns[0] not in target or any(c in p for p in patterns for c in "*()[]^$\\"):
        raise NotConvertible(f"{target}: the reference cannot name the module tensors of a conversion into "
                             f"{', '.join(patterns)}")
    return [target.replace(patterns[0], p, 1) for p in patterns]


def _torch_dtypes() -> dict[str, Any]:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def auto_class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def base_and_head_checkpoints_cross_load(case: Case) -> None:
    """A base model's checkpoint loaded into a head class, and a head's checkpoint into the base class, give
    the loading report and weights they give without ZeRO."""

    config = case.model_config()
    base = base_class(config.model_type)
    head = _a_head(case, config, base)
    if head is None:
        raise NotApplicable(f"{config.model_type} has no class but its base model {base}")
    base_checkpoint = _saved_checkpoint(case, "base", base, config)
    head_checkpoint = _saved_checkpoint(case, "head", head, config)
    _run(case, [Load(f"a {base} checkpoint into {head}", auto_class(head), base_checkpoint, {},
                     reader=CheckpointReader(base_checkpoint)),
                Load(f"a {head} checkpoint into {base}", auto_class(base), head_checkpoint, {},
                     reader=CheckpointReader(head_checkpoint))])


def base_class(model_type: str) -> str:
    """The class AutoModel builds for the type (the first, where the mapping lists several)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    return _class_names(MODEL_MAPPING_NAMES[model_type])[0]


def baseline_matches_file(reader: Any, expected: dict[str, Any], model: Any) -> None:
    """The expected tensors come from the non-ZeRO loader; where a checkpoint key names a model key (directly,
    with the base model's prefix, or renamed by the model type's declared conversion), they must equal the
    file's bytes, or the baseline itself is broken (e.g. an init that writes over a loaded value)."""
    keys = reader.keys()
    sources = {key if key in expected else f"{model.base_model_prefix}.{key}": key for key in keys}
    conversion = checkpoint_conversion(model)
    if conversion is not None:
        sources.update(conversion.renamed_sources(keys))
    for target, key in sources.items():
        if target in expected:
            problem = exact_mismatch(target, reader.get(key).to(expected[target].dtype), expected[target])
            if problem:  # transformers' own loading without ZeRO changed it: nothing faithful to compare with
                raise NotApplicable(f"transformers without ZeRO does not load the checkpoint's tensor as the file "
                                    f"holds it, so the file cannot be compared through it: {problem}")


def build_from_config(model_class: Any, config: Any, dtype: Any = None) -> Any:
    """`from_config` of an Auto class, `_from_config` of a concrete one (which has no public from_config):
    the model the installed transformers builds from `config` in the current context."""
    if hasattr(model_class, "_model_mapping"):
        return model_class.from_config(config, **dtype_kwarg(dtype))
    return model_class._from_config(config, **dtype_kwarg(dtype))


def checkpoint_conversion(model: Any) -> Optional[CheckpointConversion]:
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


def choose_layout(path: Path, variant: Optional[str], use_safetensors: Optional[bool]) -> str:
    """Which of the directory's weight files a load with these options reads: safetensors first unless
    `use_safetensors=False`; only safetensors with `use_safetensors=True`."""
    if variant is None and use_safetensors is None:
        return detect_layout(path)
    allowed = ("bin",) if use_safetensors is False else ("sharded", "safetensors") if use_safetensors \
        else tuple(WEIGHT_FILES)
    for layout in allowed:
        if (path / with_variant(WEIGHT_FILES[layout], variant)).is_file():
            return layout
    wanted = " or ".join(with_variant(WEIGHT_FILES[layout], variant) for layout in allowed)
    raise FileNotFoundError(f"{path} has no {wanted}")


def compare_all(case: Case, expected: dict[str, Any], got: dict[str, Any],
                compare: Callable[[str, Any, Any], Optional[str]], what: str) -> None:
    """Compares every expected tensor with the ZeRO-3 model's; every rank must also see the same values. A
    tensor the baseline leaves undefined is not compared: it is listed in the record's metrics, and a case
    with nothing else to compare is a SKIP saying so."""
    unwritten = undefined(expected)
    if unwritten:
        listed = case.metrics.setdefault("undefined_without_zero", [])
        listed.extend(key for key in unwritten if key not in listed)
        if len(unwritten) == len(expected):
            raise NotApplicable(f"without ZeRO, transformers leaves {', '.join(unwritten)} uninitialized (memory "
                                f"no init wrote, filled with NaN here): there is nothing to compare with")
    problems = []
    for key, tensor in sorted(expected.items()):
        if key not in got:
            problems.append(f"{key}: missing from the ZeRO-3 model's state dict")
            continue
        if key in unwritten:
            case.agree(key, got[key])
            continue
        problem = compare(key, tensor, got[key])
        if problem:
            problems.append(problem)
        case.agree(key, got[key])
    _report(case, problems, what)


def concrete_class(model_class: Any, config: Any) -> Any:
    """An Auto class resolves to the concrete class registered for this config type."""
    mapping = getattr(model_class, "_model_mapping", None)
    return mapping[type(config)] if mapping is not None else model_class


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


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """from_config / from_pretrained take `dtype` from 4.56 on and `torch_dtype` before."""
    if dtype is None:
        return {}
    return {"dtype" if transformers_version() >= Version("4.56") else "torch_dtype": dtype}


def exact_mismatch(name: str, expected: Any, got: Any) -> Optional[str]:
    """None if `got` equals `expected` bit for bit (shape, dtype, values); else what differs."""

    if tuple(got.shape) != tuple(expected.shape):
        return f"{name}: shape expected {tuple(expected.shape)}, got {tuple(got.shape)}"
    if got.dtype != expected.dtype:
        return f"{name}: dtype expected {expected.dtype}, got {got.dtype}"
    if identical(got, expected):
        return None
    return f"{name}: {_first_difference(expected, got)}"


def exception_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def foreign_config_reason(model_type: str, head: str) -> Optional[str]:
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


def full_parameters(model: Any) -> dict[str, Any]:
    """name -> a detached copy of every parameter and persistent buffer (call inside a gather)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def gathered_state(model: Any) -> dict[str, Any]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return full_parameters(model)


def head_classes(model_type: str) -> list[str]:
    """Every class the auto mappings list for the type, its base class first, each once; only those the
    installed transformers exports (a listed class it does not export cannot be built by name)."""
    import transformers

    names = [base_class(model_type)]
    for mapping in _auto_mappings().values():
        names += [n for n in _class_names(mapping.get(model_type)) if n not in names]
    return [n for n in names if hasattr(transformers, n)]


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


def identical(a: Any, b: Any) -> bool:
    """Equal element for element, NaN matching NaN in the same place (a bit-for-bit copy of a NaN is exact)."""
    import torch

    if a.is_floating_point() and b.is_floating_point():
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))
    return torch.equal(a, b)


def init_mismatch(name: str, baseline: Any, got: Any, deterministic: bool) -> Optional[str]:
    """None if `got` is initialized as the baseline's own init would have initialized it."""
    import torch

    if tuple(got.shape) != tuple(baseline.shape):
        return f"{name}: shape expected {tuple(baseline.shape)}, got {tuple(got.shape)}"
    if got.dtype != baseline.dtype:
        return f"{name}: dtype expected {baseline.dtype}, got {got.dtype}"
    b, g = baseline.detach().double(), got.detach().double()
    unexpected = ~torch.isfinite(g) & (g != b)  # an init may set a bound to +-inf on purpose, as the baseline does
    if unexpected.any():
        return f"{name}: {int(unexpected.sum())} non-finite values (uninitialized memory?)"
    finite = torch.isfinite(b)
    if not finite.all():
        b, g = b[finite], g[finite]
    if deterministic:
        if torch.allclose(g, b, rtol=DETERMINISTIC_RTOL, atol=DETERMINISTIC_ATOL):
            return None
        return f"{name} (deterministic init): {_first_difference(baseline, got)}"
    for value in (0.0, 1.0):
        fixed = b == value
        if fixed.any() and not torch.equal(g[fixed], b[fixed]):
            wrong = int((g[fixed] != value).sum())
            return f"{name}: {wrong} of the {int(fixed.sum())} elements the baseline sets to exactly {value:g} are not"
    free = ~((b == 0) | (b == 1))
    if not free.any():
        return None
    b, g = b[free], g[free]
    n = b.numel()
    if n < MIN_STATISTICS:  # a few random draws (e.g. a scalar gate) say nothing about the distribution they came from
        return None
    b_std = float(b.std()) if n > 1 else 0.0
    g_std = float(g.std()) if n > 1 else 0.0
    mean_tol = SIGMAS * b_std * math.sqrt(2.0 / n) + 1e-12
    std_tol = SIGMAS * b_std / math.sqrt(max(n - 1, 1)) + 1e-12
    if abs(float(g.mean()) - float(b.mean())) > mean_tol or abs(g_std - b_std) > std_tol:
        return (f"{name}: init statistics differ from the baseline's: mean {float(g.mean()):.4g} (baseline "
                f"{float(b.mean()):.4g}, tolerance {mean_tol:.2g}), std {g_std:.4g} (baseline {b_std:.4g}, "
                f"tolerance {std_tol:.2g}), n={n}")
    return None


def initialized_keys(report: dict[str, Any]) -> set[str]:
    """Keys a load initializes instead of reading: missing from the checkpoint, or of another size."""
    return {*map(str, report.get("missing_keys", [])), *(str(key) for key, *_ in report.get("mismatched_keys", []))}


def loading_report(info: dict[str, Any]) -> dict[str, list[str]]:
    """A loading report in one comparable form (releases give lists or sets, shapes as torch.Size or tuples)."""
    return {"missing_keys": sorted(map(str, info.get("missing_keys", []))),
            "unexpected_keys": sorted(map(str, info.get("unexpected_keys", []))),
            "mismatched_keys": sorted(f"{key}: checkpoint {tuple(stored)}, model {tuple(wanted)}"
                                      for key, stored, wanted in info.get("mismatched_keys", []))}


def loss_head(model_type: str) -> Optional[str]:
    """The head the N and S clauses run on, or None where the type has none the harness can train."""
    return _first_head(model_type, LOSS_MAPPINGS)


def precision(config: dict[str, Any]) -> str:
    """The training dtype the config enables: 'bf16' or 'fp16' where its section is enabled, else 'fp32'."""
    for dtype, section in DTYPE_SECTIONS.items():
        if config.get(section, {}).get("enabled") is True:
            return dtype
    return "fp32"


def report_differences(expected: dict[str, Any], got: dict[str, Any]) -> list[str]:
    want, have = loading_report(expected), loading_report(got)
    return [f"{field}: expected {want[field]} (without ZeRO), got {have[field]}" for field in want
            if want[field] != have[field]]


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


def tiny_config(model_type: str) -> Any:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        config_class = CONFIG_MAPPING[model_type]
        return config_class.from_dict(shrink(config_class().to_dict()))
    except Exception as exc:  # noqa: BLE001 - any failure is the reason this type is not available tiny
        raise ArchitectureUnavailable(f"its config does not shrink: {exception_line(exc)}") from None


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


def whole_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Every parameter's (under each of its names) and buffer's shape as without ZeRO: a partitioned parameter's
    `ds_shape`, not its empty local tensor (which state_dict() returns, without ds_shape)."""
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {key: tuple(getattr(t, "ds_shape", t.shape)) for key, t in tensors}


def with_variant(file_name: str, variant: Optional[str]) -> str:
    """`model.safetensors` -> `model.VARIANT.safetensors`, as transformers names a variant's files."""
    if not variant:
        return file_name
    stem, extension = file_name.rsplit(".", 1)
    return f"{stem}.{variant}.{extension}"


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
    sys.exit(main(base_and_head_checkpoints_cross_load))
