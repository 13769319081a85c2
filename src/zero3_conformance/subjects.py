"""Subjects: the implementations the contract is checked against, behind one small interface."""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from . import compat
from .errors import UsageError


class Subject(Protocol):
    """What the contract is checked against: anything with these methods (the reproducers' stand-in for
    transformers is one, without deriving from this)."""

    name: str

    def make_config(self, source: Any) -> Any:
        """The config object; ZeRO-3 is active while the caller keeps it alive."""
        ...

    def is_zero3_enabled(self) -> bool:
        ...

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        ...

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        """(model, loading report with missing_keys / unexpected_keys / mismatched_keys). `options` are
        transformers' own from_pretrained options (G8): variant, use_safetensors, key_mapping,
        ignore_mismatched_sizes, and config attributes to override such as num_labels."""
        ...

    def generate(self, model: Any, **kwargs: Any) -> Any:
        """`model.generate(**kwargs)` the way this subject makes it safe under ZeRO-3, where every rank must
        run as many forward passes as the rank that generates longest."""
        ...

    def resize_token_embeddings(self, model: Any, new_num_tokens: int) -> Any:
        """Grows the vocabulary of a model this subject built (embeddings, head, config)."""
        ...


class TransformersSubject:
    """The installed transformers: HfDeepSpeedConfig plus the Auto classes' from_config / from_pretrained."""

    name = "transformers"

    def make_config(self, source: Any) -> Any:
        return compat.hf_deepspeed_config_class()(source)

    def is_zero3_enabled(self) -> bool:
        return bool(compat.hf_is_deepspeed_zero3_enabled()())

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        return compat.build_from_config(model_class, config, dtype)

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        model, info = model_class.from_pretrained(path, output_loading_info=True, trust_remote_code=False,
                                                  **compat.dtype_kwarg(dtype), **options)
        return model, info

    def generate(self, model: Any, **kwargs: Any) -> Any:
        return model.generate(**kwargs)  # transformers syncs the ranks itself when it sees ZeRO-3

    def resize_token_embeddings(self, model: Any, new_num_tokens: int) -> Any:
        return model.resize_token_embeddings(new_num_tokens)


class ReferenceSubject:
    """This project's own implementation (zero3_conformance.reference)."""

    name = "reference"

    def make_config(self, source: Any) -> Any:
        from .reference import ZeroConfig

        return ZeroConfig(source)

    def is_zero3_enabled(self) -> bool:
        from .reference import is_zero3_enabled

        return is_zero3_enabled()

    def from_config(self, model_class: Any, config: Any, dtype: Any = None) -> Any:
        from .reference import from_config

        return from_config(model_class, config, dtype)

    def from_pretrained(self, model_class: Any, path: str, dtype: Any = None,
                        **options: Any) -> tuple[Any, dict[str, Any]]:
        from .reference import from_pretrained

        return from_pretrained(model_class, path, dtype, **options)

    def generate(self, model: Any, **kwargs: Any) -> Any:
        from .reference import generate

        return generate(model, **kwargs)

    def resize_token_embeddings(self, model: Any, new_num_tokens: int) -> Any:
        from .reference import resize_token_embeddings

        return resize_token_embeddings(model, new_num_tokens)


# Every subject a run can name, registered by the module that defines it (the mutants register themselves
# when their module is imported); the default ones are what a run checks when it names none.
SUBJECTS: dict[str, type[Subject]] = {}
DEFAULT_SUBJECTS: list[str] = []


def register(name: str, subject: type[Subject], default: bool = False) -> None:
    SUBJECTS[name] = subject
    if default:
        DEFAULT_SUBJECTS.append(name)


register("transformers", TransformersSubject, default=True)
register("reference", ReferenceSubject, default=True)


def get_subject(name: str, registered_in: str | None = None) -> Subject:
    """A new instance of the subject registered as `name`. `registered_in`: the module that registers it,
    imported first, for a process that may not have imported it yet (a rank, a memory probe, a script)."""
    if registered_in:
        importlib.import_module(registered_in)
    try:
        return SUBJECTS[name]()
    except KeyError:
        raise UsageError(f"unknown subject {name!r}; known: {', '.join(SUBJECTS)}") from None


def clear_leftover_zero3() -> list[str]:
    """Turns off ZeRO-3 registrations still alive in this process once a case's own objects are gone (a
    config object held somewhere it should not be), so one case's leak cannot decide the next one's
    result. Returns what it turned off."""
    from .reference import config as reference_config

    found = []
    if compat.hf_is_deepspeed_zero3_enabled()():
        compat.hf_unset_deepspeed_config()()
        found.append("transformers HfDeepSpeedConfig")
    if reference_config.is_zero3_enabled():
        reference_config.unregister()
        found.append("reference ZeroConfig")
    return found
