"""Finding kinds: the closed list of what a failing check can have found, each with the line the docs print.

A check that fails records a structured finding beside its message: `kind` (one of KINDS), the tensor or key it
is about, what was expected and what was observed, and the rank that saw it. Known-issues entries match on the
kind and those fields (`match`), so rewording a message cannot un-meet an entry, and an entry cannot excuse a
failure of another kind.

What a subject raised is classified here too, once (RAISED_KINDS): the exception's own words decide whether it is
a known kind of fault (a 0-dimensional parameter DeepSpeed cannot partition, a size mismatch raised although
`ignore_mismatched_sizes=True` was given) or just `raised`.
"""

from __future__ import annotations

import re
from typing import Any

KINDS: dict[str, str] = {
    # construction and partitioning (P)
    "not_partitioned": "a parameter ZeRO-3 should partition is an ordinary one, or holds local elements",
    "partition_wrong": "a partitioned parameter's ds_shape, shard, status or dtype is not what ZeRO-3 promises",
    "not_converted_at_initialize": "a parameter zero.Init left whole is still not a ZeRO-3 parameter after "
                                   "deepspeed.initialize",
    "parameters_missing": "a build lacks parameters or buffers its class has",
    "parameters_extra": "a build has parameters or buffers its class lacks",
    "shape_differs": "a tensor's shape differs from its class's",
    "dtype_differs": "a tensor's dtype differs from the baseline's, or from the config's precision",
    "leftover": "a ZeRO-3 build leaves something behind: ZeRO-3 on, or a later build unlike its class",
    "memory_over_bound": "peak memory during the build is above the contract's bound",
    # values (G)
    "values_differ": "a loaded, gathered, written or saved tensor's values differ from what it must equal",
    "init_differs": "a tensor the model's init sets differs from the baseline's init (statistics or values)",
    "non_finite": "non-finite values where the baseline has finite ones (uninitialized memory?)",
    "tie_broken": "tensors tied without ZeRO are not one parameter",
    "ranks_disagree": "ranks hold different values where every rank must see the same",
    "loading_report_differs": "the loading report or a config attribute differs from the load without ZeRO",
    "unexpected_keys_unreported": "the loading report lists no unexpected keys where the load without ZeRO does",
    "size_mismatch_ignored": "from_pretrained(ignore_mismatched_sizes=True) raises a size mismatch anyway",
    "zero_dim_parameter": "a 0-dimensional parameter cannot be partitioned (torch refuses to view it as bytes)",
    # numerics (N)
    "outside_tolerance": "an output, gradient or trained parameter is outside the tolerance of the baseline's",
    "gradient_missing": "a parameter gets no gradient where the baseline's does",
    "changed_without_gradient": "a parameter that got no gradient changed in an optimizer step",
    "generation_differs": "generated tokens differ from the baseline's",
    # saving and resizing (S)
    "reload_differs": "a saved checkpoint reloads with keys missing, other values or other ties",
    "resize_wrong": "resize_token_embeddings leaves the vocabulary, its partitions or its outputs wrong",
    # activation and documented usage (A)
    "zero3_state_wrong": "is_zero3_enabled() is not what the config objects alive say",
    "malformed_config_accepted": "a malformed config accepted at construction, or refused with an error that does "
                                 "not name it (A4 as first worded: records of runs before its rewording)",
    "stage_read_differently": "the config object and deepspeed.initialize read one config's ZeRO stage differently: "
                              "one partitions, the other does not",
    "launch_failed": "the documented usage under torchrun did not finish, or exited non-zero",
    # the harness's own accounting
    "compared_less": "the check compared less than the class has, for no stated reason",
    "raised": "the subject raised while doing what the clause asks",
}

# A subject's exception, classified by its own words, first match wins; anything else is `raised`.
RAISED_KINDS: tuple[tuple[str, str], ...] = (
    ("zero_dim_parameter", r"self\.dim\(\) cannot be 0 to view"),
    ("size_mismatch_ignored", r"(?s)ignore_mismatched_sizes=True.*size mismatch"),
)

FIELDS = ("kind", "tensor", "expected", "observed", "rank")


def raised_kind(text: str) -> str:
    """The kind of a subject's exception, from what was called and the exception's text."""
    return next((kind for kind, pattern in RAISED_KINDS if re.search(pattern, text)), "raised")


class Found(str):
    """A finding's message that carries its kind and fields, for code that composes messages (a comparison's
    problem, a structure's difference) before a check records them: `case.fail(found.text, *found.fields)`."""

    kind: str
    tensor: str
    expected: str
    observed: str

    def __new__(cls, text: str, kind: str, tensor: str = "", expected: Any = "", observed: Any = "") -> Found:
        if kind not in KINDS:
            raise ValueError(f"unknown finding kind {kind!r}")
        made = super().__new__(cls, text)
        made.kind, made.tensor, made.expected, made.observed = kind, str(tensor), _text(expected), _text(observed)
        return made

    def __reduce__(self) -> tuple[Any, tuple[str, str, str, str, str]]:
        # Findings cross processes (a rank's exception, pickled): rebuilt with their kind and fields.
        return Found, (str(self), self.kind, self.tensor, self.expected, self.observed)

    def reworded(self, text: str) -> Found:
        """The same finding under another message (a prefix naming the call, a suffix naming the rank)."""
        return Found(text, self.kind, self.tensor, self.expected, self.observed)

    @property
    def fields(self) -> tuple[str, str, str, str]:
        return self.kind, self.tensor, self.expected, self.observed


def make(kind: str, tensor: str = "", expected: Any = "", observed: Any = "",
         rank: int | None = None) -> dict[str, Any]:
    """One structured finding; a kind outside KINDS is the harness's own bug."""
    if kind not in KINDS:
        raise ValueError(f"unknown finding kind {kind!r}; known: {', '.join(KINDS)}")
    found: dict[str, Any] = {"kind": kind, "tensor": str(tensor), "expected": _text(expected),
                             "observed": _text(observed)}
    if rank is not None:
        found["rank"] = rank
    return found


def _text(value: Any, limit: int = 500) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"
