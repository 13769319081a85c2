"""Injected into a process through PYTHONPATH: the fault of the perturbed_load mutant, applied to transformers'
own from_pretrained. Under ZeRO-3 the first parameter of every loaded model is moved by 1e-3 (on every rank
alike, as a lossy cast on the way in would), so the harness and a generated reproducer both see G1 broken."""

import transformers.modeling_utils as modeling_utils

_original = modeling_utils.PreTrainedModel.from_pretrained.__func__


def _from_pretrained(cls, *args, **kwargs):
    import deepspeed
    import torch
    from transformers.integrations import is_deepspeed_zero3_enabled

    loaded = _original(cls, *args, **kwargs)
    if is_deepspeed_zero3_enabled():
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        param = next(iter(model.parameters()))
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            param.add_(1e-3)
    return loaded


modeling_utils.PreTrainedModel.from_pretrained = classmethod(_from_pretrained)
