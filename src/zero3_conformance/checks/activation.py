"""A — the config object turns ZeRO-3 on while alive, and only then."""

from __future__ import annotations

import gc
import json
import tempfile
from pathlib import Path
from typing import Any

from ..dsconfig import with_stage
from .base import Case, check, engine_config

# Activation does not depend on the model or the world: one rank, no model.
_NO_MODEL: dict[str, Any] = dict(world_sizes=(1,), families=())


def _enabled(case: Case) -> bool:
    with case.subject_call("is_zero3_enabled"):
        return case.subject.is_zero3_enabled()


def _make(case: Case, source: Any) -> Any:
    with case.subject_call("config construction"):
        return case.subject.make_config(source)


@check("A1", "zero3_flag_follows_stage", **_NO_MODEL)
def zero3_flag_follows_stage(case: Case) -> None:
    """While a config object is alive, ZeRO-3 is reported on for stage 3 and off for stages 0, 1, 2."""
    for stage in (0, 1, 2, 3):
        config = _make(case, with_stage(case.ds_config, stage))
        case.expect(_enabled(case) == (stage == 3),
                    f"stage {stage} config alive: is_zero3_enabled() expected {stage == 3}, got {_enabled(case)}",
                    "zero3_state_wrong", f"is_zero3_enabled() with a stage-{stage} config alive", stage == 3,
                    _enabled(case))
        del config
        gc.collect()


@check("A2", "registration_is_weak", **_NO_MODEL)
def registration_is_weak(case: Case) -> None:
    """Dropping the last reference turns ZeRO-3 off; a newer config object replaces an older one."""
    config = _make(case, with_stage(case.ds_config, 3))
    case.expect(_enabled(case), "stage-3 config alive: is_zero3_enabled() expected True, got False",
                "zero3_state_wrong", "is_zero3_enabled() with a stage-3 config alive", True, False)
    del config
    gc.collect()
    case.expect(not _enabled(case), "last reference to the stage-3 config dropped and collected: "
                                    "is_zero3_enabled() expected False, got True (registered strongly?)",
                "zero3_state_wrong", "is_zero3_enabled() after the last config was collected", False, True)
    older = _make(case, with_stage(case.ds_config, 3))
    newer = _make(case, with_stage(case.ds_config, 0))
    case.expect(not _enabled(case), "stage-3 config then stage-0 config alive: is_zero3_enabled() expected False "
                                    "(the newer replaces the older), got True",
                "zero3_state_wrong", "is_zero3_enabled() with stage 3 then stage 0 alive", False, True)
    del older, newer
    gc.collect()
    older = _make(case, with_stage(case.ds_config, 0))
    newer = _make(case, with_stage(case.ds_config, 3))
    case.expect(_enabled(case), "stage-0 config then stage-3 config alive: is_zero3_enabled() expected True, got False",
                "zero3_state_wrong", "is_zero3_enabled() with stage 0 then stage 3 alive", True, False)
    del older, newer
    gc.collect()


@check("A3", "config_forms_agree", **_NO_MODEL)
def config_forms_agree(case: Case) -> None:
    """A dict, a JSON path (str) and a JSON path (pathlib.Path) give the same result; mutating the
    caller's dict afterwards changes nothing."""
    config = with_stage(case.ds_config, 3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ds_config.json"
        path.write_text(json.dumps(config))
        for form, source in (("dict", config), ("str path", str(path)), ("pathlib.Path", path)):
            try:
                obj = case.subject.make_config(source)
            except Exception as exc:  # noqa: BLE001 - a rejected documented form is the finding
                case.fail(f"config given as {form}: construction raised {type(exc).__name__}: {exc}", "raised",
                          f"config given as {form}", "a config object", f"{type(exc).__name__}: {exc}")
                continue
            case.expect(_enabled(case), f"config given as {form}: is_zero3_enabled() expected True, got False",
                        "zero3_state_wrong", f"is_zero3_enabled() with a config given as {form}", True, False)
            del obj
            gc.collect()
    caller_dict = with_stage(case.ds_config, 3)
    obj = _make(case, caller_dict)
    caller_dict["zero_optimization"]["stage"] = 0  # a nested change: a shallow copy does not protect
    caller_dict["zero_optimization"] = {"stage": 1}
    case.expect(_enabled(case), "after the caller changed its dict's zero_optimization.stage from 3 to 0: "
                                "is_zero3_enabled() expected True (the config was copied), got False",
                "zero3_state_wrong", "is_zero3_enabled() after the caller changed its dict", True, False)
    del obj
    gc.collect()


MALFORMED = {
    # name: how to make the source. DeepSpeed refuses a stage not in 0..3 and reads the string "3" as stage 3.
    "unreadable file": lambda tmp: str(Path(tmp) / "missing.json"),
    "invalid JSON": lambda tmp: _write(tmp, "{ not json"),
    "stage 7": lambda tmp: {"zero_optimization": {"stage": 7}},
    "stage as a word": lambda tmp: {"zero_optimization": {"stage": "three"}},
    'stage as the string "3"': lambda tmp: {"zero_optimization": {"stage": "3"}},
    "zero_optimization not an object": lambda tmp: {"zero_optimization": 3},
}


def _write(tmp: str, text: str) -> str:
    path = Path(tmp) / "broken.json"
    path.write_text(text)
    return str(path)


def _stage_deepspeed_runs(case: Case, source: Any) -> int | None:
    """The ZeRO stage deepspeed.initialize runs a one-layer model with under this config source; None where
    DeepSpeed refuses it."""
    import deepspeed
    import torch

    config = source if not isinstance(source, dict) else {**engine_config(case.ds_config), **source}
    try:
        engine, *_ = deepspeed.initialize(model=torch.nn.Linear(4, 4), config=config)
    except Exception:  # noqa: BLE001 - refused: what A4 asks of a malformed config at the latest
        return None
    stage = int(engine.zero_optimization_stage())
    if hasattr(engine, "destroy"):  # releases the engine's hooks and buffers (not in older releases)
        engine.destroy()
    del engine
    gc.collect()
    return stage


@check("A4", "malformed_config_rejected", **_NO_MODEL)
def malformed_config_rejected(case: Case) -> None:
    """A malformed config never builds silently unpartitioned: the config object or, at the latest,
    deepspeed.initialize refuses it, and where deepspeed.initialize runs it as stage 3 the config object
    reports ZeRO-3 on."""
    with tempfile.TemporaryDirectory() as tmp:
        for what, make_source in MALFORMED.items():
            try:
                obj = case.subject.make_config(make_source(tmp))
            except Exception:  # noqa: BLE001 - refused at construction, the earliest: no build can follow
                continue
            enabled = _enabled(case)
            stage = _stage_deepspeed_runs(case, make_source(tmp))
            if stage is not None:
                case.expect(enabled == (stage == 3),
                            f"{what}: the config object accepted it with is_zero3_enabled() {enabled}, and "
                            f"deepspeed.initialize runs it as ZeRO stage {stage}: models built under the config "
                            f"object are {'not ' if stage == 3 else ''}partitioned where the engine "
                            f"{'partitions' if stage == 3 else 'does not'}",
                            "stage_read_differently", what, f"is_zero3_enabled() {stage == 3} (deepspeed.initialize "
                            f"runs stage {stage})", f"is_zero3_enabled() {enabled}")
            del obj
            gc.collect()
