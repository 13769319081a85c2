"""Lazy, per-tensor access to a checkpoint directory in any of the three layouts.

Safetensors files are opened without reading tensors until asked; a legacy pytorch_model.bin is loaded
with `weights_only=True` and memory-mapped, so only the tensors a module needs are ever paged in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..zoo import detect_layout


class CheckpointReader:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.layout = detect_layout(self.path)
        if self.layout == "sharded":
            index = json.loads((self.path / "model.safetensors.index.json").read_text())
            self._file_of = {key: self.path / name for key, name in index["weight_map"].items()}
        elif self.layout == "safetensors":
            self._file_of = {key: self.path / "model.safetensors" for key in self._safetensors_keys(
                self.path / "model.safetensors")}
        else:
            import torch

            # A str, not a Path: torch 2.2 memory-maps only a filename given as a string.
            self._bin = torch.load(str(self.path / "pytorch_model.bin"), map_location="cpu", weights_only=True,
                                   mmap=True)
            self._file_of = {key: self.path / "pytorch_model.bin" for key in self._bin}
        self._open: dict[Path, Any] = {}

    @staticmethod
    def _safetensors_keys(file: Path) -> list[str]:
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as handle:
            return list(handle.keys())

    def keys(self) -> list[str]:
        return list(self._file_of)

    def get(self, key: str) -> Any:
        if self.layout == "bin":
            return self._bin[key]
        file = self._file_of[key]
        if file not in self._open:
            from safetensors import safe_open

            if not file.is_file():
                raise FileNotFoundError(f"checkpoint index names {file.name}, which does not exist")
            self._open[file] = safe_open(str(file), framework="pt")
        return self._open[file].get_tensor(key)
