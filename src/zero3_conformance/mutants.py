"""Deliberately broken variants of the reference: each a realistic integration bug. A conformance
suite that cannot tell them from the reference proves nothing, so the harness's tests run each one
against the clause that must catch it (subject name "mutant:NAME")."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from .subjects import ReferenceSubject

_strong_refs: list[Any] = []


@contextlib.contextmanager
def _patched(module: Any, name: str, replacement: Any) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


def _initialization_skipped() -> contextlib.AbstractContextManager:
    """The reference with its init step removed: parameters stay as zero.Init left them."""
    from .reference import build

    return _patched(build, "_initialize", lambda model, only=None: None)


class Mutant(ReferenceSubject):
    kills: tuple[str, ...] = ()  # the clauses that must catch this mutant
    family = "llama"


class StrongRegistration(Mutant):
    """The config object is also kept in a module-level list, so it never goes away."""

    kills = ("A2",)

    def make_config(self, source: Any) -> Any:
        config = super().make_config(source)
        _strong_refs.append(config)
        return config


class NoValidation(Mutant):
    """The config is taken as given: a bad stage only shows up later, if ever."""

    kills = ("A4",)

    def make_config(self, source: Any) -> Any:
        from .reference import config as reference_config

        with _patched(reference_config, "read_config_source", lambda s: s if isinstance(s, dict) else {}):
            return super().make_config(source)


class UnpartitionedFromConfig(Mutant):
    """from_config forgets zero.Init and builds the whole model on every rank."""

    kills = ("P1",)

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        return model_class.from_config(config)


class PerturbedLoad(Mutant):
    """One checkpoint tensor is loaded off by 1e-3 (e.g. a lossy cast on the way in)."""

    kills = ("G1", "N1", "N2", "N3")

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None) -> tuple[Any, dict[str, Any]]:
        import deepspeed
        import torch

        model, info = super().from_pretrained(model_class, path, dtype)
        param = next(iter(model.parameters()))
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            param.add_(1e-3)
        return model, info


class SkippedInit(Mutant):
    """Weights are never initialized after partitioned construction (left as zero.Init made them)."""

    kills = ("G4",)

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        with _initialization_skipped():
            return super().from_config(model_class, config, dtype)


class MissingKeysUninitialized(Mutant):
    """Keys missing from the checkpoint are left as constructed instead of initialized."""

    kills = ("G3",)
    family = "bert"

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None) -> tuple[Any, dict[str, Any]]:
        with _initialization_skipped():
            return super().from_pretrained(model_class, path, dtype)


class EmptyLoadingReport(Mutant):
    """The loading report is dropped: callers never learn which keys were missing."""

    kills = ("G7",)
    family = "bert"

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None) -> tuple[Any, dict[str, Any]]:
        model, _ = super().from_pretrained(model_class, path, dtype)
        return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": []}


MUTANTS: dict[str, type[Mutant]] = {
    "strong_registration": StrongRegistration,
    "no_validation": NoValidation,
    "unpartitioned_from_config": UnpartitionedFromConfig,
    "perturbed_load": PerturbedLoad,
    "skipped_init": SkippedInit,
    "missing_keys_uninitialized": MissingKeysUninitialized,
    "empty_loading_report": EmptyLoadingReport,
}
