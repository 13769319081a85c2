"""Using a model the reference built: what changes once its parameters are partitioned.

- generate: every forward pass gathers parameters with collectives, so a rank that is done generating
  must keep stepping until every rank is done (`synced_gpus`), or the others wait for it forever.
- resize_token_embeddings: the new embedding (and untied head) is created under `zero.Init`, so it is
  partitioned at once and no rank holds the whole new vocabulary; old rows are copied and new rows set
  to the mean of the old ones on rank 0, which re-partitions them to every rank (no per-rank randomness).
  Every alias of a replaced parameter (a tied head, an encoder's copy, a head's bias tied to its
  decoder's) is pointed at the new one, so a tied group stays one ZeRO parameter; a tied head's own bias
  is padded with zeros, as transformers pads it when it ties.
"""

from __future__ import annotations

from typing import Any

from .. import compat
from .build import active_zero3, partitioned_construction


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def _partitioned(model: Any) -> bool:
    return any(hasattr(p, "ds_id") for p in model.parameters())


def generate(model: Any, **kwargs: Any) -> Any:
    if _partitioned(model) and _world_size() > 1:
        kwargs.setdefault("synced_gpus", True)
    return model.generate(**kwargs)


def _grown(old: Any, new: Any, old_rows: int) -> None:
    """new[:old_rows] = old; the added rows = the mean of the old rows (in fp32, then cast)."""
    new[:old_rows].copy_(old[:old_rows])
    new[old_rows:].copy_(old.float().mean(dim=0, keepdim=True).expand_as(new[old_rows:]).to(new.dtype))


def _rebind(model: Any, old: Any, new: Any) -> None:
    """Every module attribute holding the parameter `old` holds `new` instead (the aliases of a tied group)."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is old:
                module._parameters[name] = new


def _resized(model: Any, module: Any, new_rows: int, zero: Any) -> None:
    """Swaps `module`'s weight (and bias), and every alias of them, for partitioned ones with `new_rows` rows."""
    import deepspeed
    import torch

    weight = module.weight
    old_rows, width = weight.ds_shape
    bias = getattr(module, "bias", None)
    with partitioned_construction(zero, weight.dtype):
        # Only parameters of a module constructed inside zero.Init are partitioned: build one to take them from.
        grown = torch.nn.Linear(width, new_rows, bias=bias is not None, dtype=weight.dtype)
    new_weight, new_bias = grown.weight, grown.bias
    pairs = [(weight, new_weight)] + ([(bias, new_bias)] if bias is not None else [])
    with deepspeed.zero.GatheredParameters([p for pair in pairs for p in pair], modifier_rank=0), torch.no_grad():
        for old, new in pairs:
            _grown(old, new, old_rows)
    for old, new in pairs:
        _rebind(model, old, new)
    for attribute in ("num_embeddings", "out_features"):
        if hasattr(module, attribute):
            setattr(module, attribute, new_rows)


def _zero_padded_bias(model: Any, module: Any, new_rows: int, zero: Any) -> None:
    """A tied head's own bias grown to the new vocabulary with zeros, as transformers pads it when it ties the
    head to the embedding (there it pads `bias.data`, which under ZeRO-3 is an empty partition)."""
    import deepspeed
    import torch

    bias = module.bias
    old_rows = int(bias.ds_shape[0])
    with partitioned_construction(zero, bias.dtype):
        new_bias = torch.nn.Linear(1, new_rows, dtype=bias.dtype).bias
    with deepspeed.zero.GatheredParameters([bias, new_bias], modifier_rank=0), torch.no_grad():
        new_bias[:old_rows].copy_(bias)
        new_bias[old_rows:].zero_()
    _rebind(model, bias, new_bias)


def resize_token_embeddings(model: Any, new_num_tokens: int) -> Any:
    zero = active_zero3()
    if zero is None or not _partitioned(model):
        return model.resize_token_embeddings(new_num_tokens)
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is embeddings.weight
    _resized(model, embeddings, new_num_tokens, zero)
    if head is not None and not tied:
        _resized(model, head, new_num_tokens, zero)
    compat.text_config(model.config).vocab_size = new_num_tokens
    if hasattr(model, "vocab_size"):
        model.vocab_size = new_num_tokens
    model.tie_weights()  # every alias of the embedding (a tied head, an encoder's copy) takes the new one
    bias = getattr(head, "bias", None) if tied else None
    if bias is not None and hasattr(bias, "ds_shape") and int(bias.ds_shape[0]) != new_num_tokens:
        _zero_padded_bias(model, head, new_num_tokens, zero)
    if head is not None and hasattr(head, "out_features"):
        head.out_features = new_num_tokens
    return embeddings
