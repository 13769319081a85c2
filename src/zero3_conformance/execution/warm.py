"""Imported where ranks start: what a world's first checks would otherwise import in every rank. DeepSpeed's
engine set-up imports its optimizers, and through them torch's compiler (about 2 s); each model family's
modeling module is imported on its first build. Best effort: what this version lacks is imported when used,
or fails there, in a check that says so."""

from __future__ import annotations

import importlib

FIRST_USE = ("deepspeed.runtime.engine", "deepspeed.runtime.zero.stage3", "deepspeed.runtime.zero.muon.muon_optimizer",
             "deepspeed.checkpoint.utils", "safetensors.torch")


def import_first_use() -> None:
    from ..compat import concrete_class
    from ..zoo import FAMILIES, auto_class

    for name in FIRST_USE:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - not in this version, or broken: the check that needs it will say
            pass
    for family in FAMILIES.values():
        try:  # the auto class's mapping imports the family's modeling module
            concrete_class(auto_class(family.auto_class), family.make_config())
        except Exception:  # noqa: BLE001 - as above
            pass


import_first_use()
