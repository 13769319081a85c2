"""The reference implementation of the ZeRO-3 construction contract (see build.py for the recipe)."""

from .build import from_config, from_pretrained
from .config import ZeroConfig, active_config, is_zero3_enabled
from .runtime import generate, resize_token_embeddings

__all__ = [
           "ZeroConfig",
           "active_config",
           "from_config",
           "from_pretrained",
           "generate",
           "is_zero3_enabled",
           "resize_token_embeddings",
]
