"""Loads every check module once, so REGISTRY is complete wherever it is read."""

from __future__ import annotations

import importlib

CHECK_MODULES = ("activation", "documented", "partition", "gathered", "loading", "numerics", "saving")


def load_checks() -> dict:
    from .checks.base import REGISTRY

    for name in CHECK_MODULES:
        importlib.import_module(f"zero3_conformance.checks.{name}")
    return REGISTRY
