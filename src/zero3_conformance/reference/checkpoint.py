"""Lazy, per-tensor access to a checkpoint directory in any of the three layouts.

Safetensors files are opened without reading tensors until asked; a legacy pytorch_model.bin is loaded
with `weights_only=True` and memory-mapped, so only the tensors a module needs are ever paged in.
The loading options that choose files (`variant`, `use_safetensors`) and rename keys (`key_mapping`) are
applied here, so the builder sees one set of names whatever the files are called.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..zoo import detect_layout


def with_variant(file_name: str, variant: str | None) -> str:
    """`model.safetensors` -> `model.VARIANT.safetensors`, as transformers names a variant's files."""
    if not variant:
        return file_name
    stem, extension = file_name.rsplit(".", 1)
    return f"{stem}.{variant}.{extension}"


WEIGHT_FILES = {"sharded": "model.safetensors.index.json", "safetensors": "model.safetensors",
                "bin": "pytorch_model.bin"}


def choose_layout(path: Path, variant: str | None, use_safetensors: bool | None) -> str:
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


class CheckpointReader:
    def __init__(self, path: Path, variant: str | None = None, use_safetensors: bool | None = None,
                 key_mapping: dict[str, str] | None = None):
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


def _renamed(key: str, key_mapping: dict[str, str] | None) -> str:
    """`key_mapping`'s regular expressions, in order, each replacing its first match."""
    for pattern, replacement in (key_mapping or {}).items():
        key = re.sub(pattern, replacement, key, count=1)
    return key
