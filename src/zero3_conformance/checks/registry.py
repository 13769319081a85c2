"""Loads every check module once, so REGISTRY is complete wherever it is read."""

from __future__ import annotations

import importlib

from .base import REGISTRY

CHECK_MODULES = ("activation", "documented", "partition", "gathered", "loading", "numerics", "saving")


def load_checks() -> dict:
    for name in CHECK_MODULES:
        importlib.import_module(f"zero3_conformance.checks.{name}")
    return REGISTRY
