"""Using a model the reference built: what changes once its parameters are partitioned.

- generate: every forward pass gathers parameters with collectives, so a rank that is done generating
  must keep stepping until every rank is done (`synced_gpus`), or the others wait for it forever.
- resize_token_embeddings: the model's own method runs (it may resize more than the embedding), with the
  base-class steps it calls working on partitioned parameters. The new embedding (and untied head) is
  created under `zero.Init`, so it is partitioned at once; old rows are copied and new rows set to the
  mean of the old ones on rank 0, which re-partitions them to every rank (no per-rank randomness). The
  new embedding is held whole only while the model's own method runs, as that method may read its shape.
  Every alias of a replaced parameter (a tied head, an encoder's copy, a head's bias tied to its
  decoder's) is pointed at the new one, so a tied group stays one ZeRO parameter; a tied head's own bias
  is padded with zeros, as transformers pads it when it ties.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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


def _grown(old: Any, new: Any, dim: int) -> None:
    """new keeps old's rows along `dim`; the added ones = the mean of the old ones (in fp32, then cast)."""
    kept = min(old.shape[dim], new.shape[dim])
    new.narrow(dim, 0, kept).copy_(old.narrow(dim, 0, kept))
    added = new.narrow(dim, kept, new.shape[dim] - kept)
    added.copy_(old.float().mean(dim=dim, keepdim=True).expand_as(added).to(new.dtype))


def _rebind(model: Any, old: Any, new: Any) -> None:
    """Every module attribute holding the parameter `old` holds `new` instead (the aliases of a tied group)."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is old:
                module._parameters[name] = new


def _resized(model: Any, module: Any, new_rows: int, zero: Any, dim: int = 0) -> None:
    """Swaps `module`'s weight, and every alias of it, for a partitioned one with `new_rows` along `dim` (1 for
    a transposed head, whose input is the vocabulary); so too its bias where the bias is vocabulary-sized."""
    import deepspeed
    import torch

    weight = module.weight
    shape = list(weight.ds_shape)
    shape[dim] = new_rows
    bias = getattr(module, "bias", None) if dim == 0 else None
    with partitioned_construction(zero, weight.dtype):
        # Only parameters of a module constructed inside zero.Init are partitioned: build one to take them from.
        grown = torch.nn.Linear(shape[1], shape[0], bias=bias is not None, dtype=weight.dtype)
    pairs = [(weight, grown.weight)] + ([(bias, grown.bias)] if bias is not None else [])
    with deepspeed.zero.GatheredParameters([p for pair in pairs for p in pair], modifier_rank=0), torch.no_grad():
        for old, new in pairs:
            _grown(old, new, dim)
    for old, new in pairs:
        _rebind(model, old, new)
    for attribute in ("num_embeddings", "out_features") if dim == 0 else ("in_features",):
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


def _resize_partitioned(model: Any, new_num_tokens: int, zero: Any) -> Any:
    """The base class's resize_token_embeddings on partitioned parameters: embedding, untied head, config."""
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


def _padded(new_num_tokens: int | None, pad_to_multiple_of: int | None, old_rows: int) -> int:
    rows = old_rows if new_num_tokens is None else new_num_tokens
    return rows if pad_to_multiple_of is None else -(-rows // pad_to_multiple_of) * pad_to_multiple_of


@contextlib.contextmanager
def _partitioned_base_steps(zero: Any) -> Iterator[None]:
    """While a model's own resize_token_embeddings runs, the base-class steps it calls work on partitioned
    parameters. A model may resize more than its embedding and head (a `final_logits_bias`, a second output
    matrix), so its own method runs; only the steps that touch partitioned parameters are the reference's."""
    import deepspeed
    from transformers import PreTrainedModel

    def resize(self: Any, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
               mean_resizing: bool = True) -> Any:
        embeddings = self.get_input_embeddings()
        rows = _padded(new_num_tokens, pad_to_multiple_of, int(embeddings.weight.ds_shape[0]))
        embeddings = _resize_partitioned(self, rows, zero)
        # The model's own method may read the returned weight's shape (`new_embeddings.weight.shape[0]`), which
        # is empty on a partitioned parameter: the weight stays gathered until that method returns.
        held.enter_context(deepspeed.zero.GatheredParameters([embeddings.weight]))
        return embeddings

    def resized_embeddings(self: Any, old: Any, new_num_tokens: int | None = None,
                           pad_to_multiple_of: int | None = None, mean_resizing: bool = True) -> Any:
        _resized(self, old, _padded(new_num_tokens, pad_to_multiple_of, int(old.weight.ds_shape[0])), zero)
        return old

    def resized_lm_head(self: Any, old: Any, new_num_tokens: int | None = None, transposed: bool = False,
                        mean_resizing: bool = True) -> Any:
        dim = 1 if transposed else 0
        _resized(self, old, _padded(new_num_tokens, None, int(old.weight.ds_shape[dim])), zero, dim)
        return old

    steps = {"resize_token_embeddings": resize, "_get_resized_embeddings": resized_embeddings,
             "_get_resized_lm_head": resized_lm_head}
    originals = {name: PreTrainedModel.__dict__[name] for name in steps}
    with contextlib.ExitStack() as held:
        try:
            for name, step in steps.items():
                setattr(PreTrainedModel, name, step)
            yield
        finally:
            for name, original in originals.items():
                setattr(PreTrainedModel, name, original)


def resize_token_embeddings(model: Any, new_num_tokens: int) -> Any:
    zero = active_zero3()
    if zero is None or not _partitioned(model):
        return model.resize_token_embeddings(new_num_tokens)
    with _partitioned_base_steps(zero):
        return model.resize_token_embeddings(new_num_tokens)
