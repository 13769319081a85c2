"""The reference config object: validated at construction, registered through a weak reference.

While a ZeroConfig with stage 3 is alive, `is_zero3_enabled()` is true and the builders in
`zero3_conformance.reference` partition at construction. Dropping the last reference turns ZeRO-3 off
again; a newer ZeroConfig replaces an older one.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from ..dsconfig import precision, read_config_source, torch_dtype

_active: weakref.ref[ZeroConfig] | None = None


class ZeroConfig:
    """Accepts a dict (deep-copied, so later changes to the caller's dict do not leak in), a path to a
    JSON file (str or pathlib.Path); raises ValueError naming the problem if the config is malformed."""

    def __init__(self, config_file_or_dict: str | Path | dict[str, Any]):
        global _active
        self.config = read_config_source(config_file_or_dict)
        _active = weakref.ref(self)

    @property
    def stage(self) -> int:
        return int(self.config.get("zero_optimization", {}).get("stage", 0))

    def is_zero3(self) -> bool:
        return self.stage == 3

    def torch_dtype(self) -> Any:
        """The dtype partitioned floating parameters take: the config's fp16/bf16 section, else fp32."""
        return torch_dtype(precision(self.config))


def active_config() -> ZeroConfig | None:
    return _active() if _active is not None else None


def unregister() -> None:
    """Forgets the active config (the harness's clean-up between checks; a user drops the object instead)."""
    global _active
    _active = None


def is_zero3_enabled() -> bool:
    config = active_config()
    return config is not None and config.is_zero3()
