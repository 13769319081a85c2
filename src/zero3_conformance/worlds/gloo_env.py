"""Imported first by the server gloo ranks are forked from, before it imports DeepSpeed (which picks its
accelerator when imported)."""

from .world import gloo_environment

gloo_environment()
