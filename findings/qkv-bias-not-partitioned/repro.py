"""Reproduces G1-gathered_equals_checkpoint[transformers-blip-2.Blip2Model-safetensors-ws2-fp32]
with transformers, deepspeed and torch alone (no zero3-conformance).

Run it on a CPU machine:   DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 repro.py
On GPUs (NCCL):            torchrun --nproc-per-node 2 repro.py
Exit status 1: the clause is broken here, with the evidence printed; 0: it holds.
"""

from __future__ import annotations

import sys
import contextlib
import hashlib
import importlib
import inspect
import json
import os
import re
import tempfile
import traceback
from packaging.version import Version
from pathlib import Path
from typing import Any, Callable, Iterator, Optional


# The case, as the harness made it.
CASE_ID = 'G1-gathered_equals_checkpoint[transformers-blip-2.Blip2Model-safetensors-ws2-fp32]'
MODEL_TYPE = 'blip-2'
CONFIG = {'vision_config': {'hidden_size': 64,
                   'intermediate_size': 128,
                   'num_hidden_layers': 2,
                   'num_attention_heads': 4,
                   'image_size': 32,
                   'patch_size': 8},
 'qformer_config': {'vocab_size': 131,
                    'hidden_size': 64,
                    'num_hidden_layers': 2,
                    'num_attention_heads': 4,
                    'intermediate_size': 128,
                    'max_position_embeddings': 128,
                    'encoder_hidden_size': 64},
 'text_config': {'vocab_size': 131,
                 'hidden_size': 64,
                 'num_hidden_layers': 2,
                 'ffn_dim': 128,
                 'max_position_embeddings': 128,
                 'word_embed_proj_dim': 64,
                 'num_attention_heads': 4}}
MODEL_CLASS = 'Blip2Model'
CHECKPOINT_CLASS = 'Blip2Model'
LAYOUT = 'safetensors'
WORLD_SIZE = 2
DTYPE = 'fp32'
DS_CONFIG = {'train_micro_batch_size_per_gpu': 1,
 'gradient_accumulation_steps': 1,
 'zero_optimization': {'stage': 3, 'stage3_param_persistence_threshold': 128}}
SHARD_SIZE = '40KB'


# The harness's check and every helper it calls, as the harness has them.


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


MAX_LISTED = 8


class NotApplicable(Exception):
    """The check does not apply to this case (becomes SKIP with this reason)."""


class NotConvertible(NotImplementedError):
    """A conversion the installed transformers declares that the reference does not re-implement: the
    reference cannot load that checkpoint (a SKIP that says so, not a finding about the subject)."""


SEED = 20260101


class SubjectRaised(Exception):
    """The subject raised while doing what the clause asks (becomes FAIL carrying that exception)."""


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


def _natural_key(key: str) -> list[tuple[int, int, str]]:
    """Numbers in numeric order (2 before 10); a number and a name at one position compare too."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split(".")]


def _position(flat_index: int, shape: Any) -> tuple[int, ...]:
    import torch

    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), tuple(shape))) if len(shape) else ()


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


def _split_targets(target: str, patterns: list[str]) -> list[str]:
    """The module keys of a one-to-many conversion: transformers names the key after the first target pattern
    and the operations return one tensor per pattern. Plain patterns only; others are NotConvertible."""
    if patterns[0] not in target or any(c in p for p in patterns for c in "*()[]^$\\"):
        raise NotConvertible(f"{target}: the reference cannot name the module tensors of a conversion into "
                             f"{', '.join(patterns)}")
    return [target.replace(patterns[0], p, 1) for p in patterns]


def auto_class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


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


def full_parameters(model: Any) -> dict[str, Any]:
    """name -> a detached copy of every parameter and persistent buffer (call inside a gather)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def gathered_equals_checkpoint(case: Case) -> None:
    """Inside GatheredParameters, every checkpoint tensor equals the gathered parameter or buffer bit for bit."""
    baseline, info = case.baseline_from_pretrained()
    not_from_checkpoint = initialized_keys(info)
    expected = {k: v for k, v in full_parameters(baseline).items() if k not in not_from_checkpoint}
    baseline_matches_file(CheckpointReader(case.checkpoint_path), expected, baseline)
    config_object, model, _ = case.zero3_from_pretrained()
    compare_all(case, expected, gathered_state(model), exact_mismatch, "tensors differ")
    case.metrics["tensors_compared"] = len(expected)


def gathered_state(model: Any) -> dict[str, Any]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters())):
        return full_parameters(model)


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


def initialized_keys(report: dict[str, Any]) -> set[str]:
    """Keys a load initializes instead of reading: missing from the checkpoint, or of another size."""
    return {*map(str, report.get("missing_keys", [])), *(str(key) for key, *_ in report.get("mismatched_keys", []))}


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
    sys.exit(main(gathered_equals_checkpoint))
