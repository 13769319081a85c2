"""Inputs for any model: token ids, pixel values or raw audio, and the labels that make its head return a
loss, derived from the config and the class's forward signature. What cannot be made is said by name
(`InputsUnavailable`), so a check reports a SKIP naming the missing input instead of breaking."""

from __future__ import annotations

import inspect
import math
from typing import Any

from .compat import concrete_class, text_config

SEQUENCE_LENGTH = 8
FIRST_ORDINARY_TOKEN = 3  # ids below are padding / bos / eos in some families: draw from ordinary tokens only
# Inputs a model may take that the harness can make; a required forward argument outside these (and the
# labels) is a missing input.
MADE = ("input_ids", "pixel_values", "input_values")
# Class-name endings -> the labels their loss takes.
TOKEN_LABELS = ("ForCausalLM", "LMHeadModel", "ForMaskedLM", "ForConditionalGeneration")
# Labels as long as the input, even where the config is an encoder-decoder's (e.g. WhisperForCausalLM).
DECODER_LABELS = ("ForCausalLM", "LMHeadModel", "ForMaskedLM")
CLASS_LABELS = ("ForSequenceClassification", "ForImageClassification", "ForAudioClassification")


class InputsUnavailable(Exception):
    """The harness cannot make the inputs this model needs (reported as a SKIP with this reason)."""


def forward_arguments(model_class: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(model_class.forward).parameters)


def training_batch(model_class: Any, config: Any, seed: int, length: int = SEQUENCE_LENGTH) -> dict[str, Any]:
    """One deterministic training example (batch of 1) with labels, so that the model returns a loss: the
    next tokens for language-model heads (encoder-decoders: a target half as long), a class for classifiers."""
    import torch

    cls = concrete_class(model_class, config)
    arguments = forward_arguments(cls)
    generator = torch.Generator().manual_seed(seed)
    batch = main_inputs(cls, config, arguments, generator, length)
    name = cls.__name__
    if "labels" not in arguments:
        raise InputsUnavailable(f"{name}.forward takes no labels: no loss to train on")
    if name.endswith(CLASS_LABELS):
        batch["labels"] = torch.randint(0, int(config.num_labels), (1,), generator=generator)
    elif "input_ids" in batch and name.endswith(TOKEN_LABELS) and not name.endswith(DECODER_LABELS) and \
            getattr(config, "is_encoder_decoder", False):
        batch["labels"] = torch.randint(FIRST_ORDINARY_TOKEN, vocabulary(config), (1, length // 2), generator=generator)
    elif "input_ids" in batch and name.endswith(TOKEN_LABELS):  # a decoder (of an encoder-decoder, too)
        batch["labels"] = batch["input_ids"].clone()
    else:
        raise InputsUnavailable(f"the harness makes no labels for {name} (labels known for class names ending in "
                                f"{', '.join(TOKEN_LABELS + CLASS_LABELS)})")
    return batch


def main_inputs(cls: Any, config: Any, arguments: dict[str, inspect.Parameter], generator: Any,
                length: int) -> dict[str, Any]:
    """Token ids where the model takes them (a multimodal model runs on text alone), else pixel values,
    else raw audio; a required argument the harness cannot make is named."""
    import torch

    required = [n for n, p in arguments.items() if n != "self" and p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [n for n in required if n not in MADE and n != "labels"]
    if missing:
        raise InputsUnavailable(f"the harness cannot make {', '.join(missing)}, which {cls.__name__}.forward requires")
    if "input_ids" in arguments and not set(required) - {"input_ids", "labels"}:
        vocab = vocabulary(config)
        return {"input_ids": torch.randint(FIRST_ORDINARY_TOKEN, vocab, (1, length), generator=generator)}
    if "pixel_values" in arguments:
        vision = getattr(config, "vision_config", None) or config
        size = getattr(vision, "image_size", None)
        height, width = (size, size) if isinstance(size, int) else tuple(size or ())[:2] or (None, None)
        if not (isinstance(height, int) and isinstance(width, int)):
            raise InputsUnavailable(f"pixel_values for {cls.__name__}: its config gives no image_size")
        channels = int(getattr(vision, "num_channels", 3))
        return {"pixel_values": torch.randn((1, channels, height, width), generator=generator)}
    if "input_values" in arguments:
        strides, kernels = getattr(config, "conv_stride", None), getattr(config, "conv_kernel", None)
        if not strides or not kernels:
            raise InputsUnavailable(f"input_values for {cls.__name__}: its config gives no conv_stride / conv_kernel")
        samples = math.prod(strides) * length + sum(kernels)  # enough raw audio for `length` frames
        return {"input_values": torch.randn((1, samples), generator=generator)}
    raise InputsUnavailable(f"the harness makes none of the inputs {cls.__name__}.forward takes "
                            f"({', '.join(n for n in arguments if n != 'self')})")


def vocabulary(config: Any) -> int:
    vocab = getattr(text_config(config), "vocab_size", None)
    if not isinstance(vocab, int) or vocab <= FIRST_ORDINARY_TOKEN:
        raise InputsUnavailable("token ids: the config gives no vocab_size")
    return vocab
