"""A case's identity: `CaseKey`, from which its id and a record's identity derive.

The catalog makes keys, records carry their fields (RESULTS.md: clause, check, subject, model, head, layout,
world_size, dtype, variant), and reports group, pair and count by them. A case id is text for people: the
one parser of it is `CaseKey.parse`, for an id a user types (and for records written before they carried
`sweep`).
"""

from __future__ import annotations

import dataclasses
import re

from .dsconfig import PLAIN, VARIANTS

LAYOUTS = ("safetensors", "sharded", "bin")  # how a checkpoint is written (the zoo writes each)
DTYPES = ("fp32", "bf16", "fp16")
_ID = re.compile(
    rf"(?P<clause>[A-Z]\d+)-(?P<check>[A-Za-z0-9_]+)\[(?P<subject>[^\]-]+)-(?P<label>.+?)"
    rf"(?:-(?P<layout>{'|'.join(LAYOUTS)}))?-ws(?P<world_size>\d+)-(?P<dtype>{'|'.join(DTYPES)})"
    rf"(?:-(?P<variant>{'|'.join(v for v in VARIANTS if v != PLAIN)}))?\]")


@dataclasses.dataclass(frozen=True)
class CaseKey:
    clause: str
    check: str
    subject: str
    model: str  # a zoo family's name, a sweep type, or "none" where the case builds no model
    head: str | None  # the class built; None where no model is built
    layout: str | None
    world_size: int
    dtype: str
    variant: str = PLAIN
    sweep: bool = False  # a type of the architecture sweep: a type has several heads, so its id names the one built

    @property
    def check_id(self) -> str:
        return f"{self.clause}-{self.check}"

    @property
    def label(self) -> str:
        """The model as the id names it: a sweep type with the class built."""
        return f"{self.model}.{self.head}" if self.sweep else self.model

    @property
    def id(self) -> str:
        parts = [self.subject, self.label, *([self.layout] if self.layout else []), f"ws{self.world_size}", self.dtype]
        parts += [self.variant] if self.variant != PLAIN else []
        return f"{self.check_id}[{'-'.join(parts)}]"

    def with_subject(self, subject: str) -> CaseKey:
        return dataclasses.replace(self, subject=subject)

    def across_subjects(self) -> CaseKey:
        """The case every subject is checked on: blame pairs subjects by it, and a runner tries them together."""
        return self.with_subject("")

    @classmethod
    def parse(cls, text: str) -> CaseKey:
        """The key an id names; ValueError, in one line, where `text` is not one. A zoo family's id does not name
        its class: `head` is None there."""
        found = _ID.fullmatch(text.strip())
        if found is None:
            raise ValueError(f"{text!r} is not a case id (CLAUSE-check[subject-model[-layout]-wsN-dtype[-variant]], "
                             "e.g. G1-gathered_equals_checkpoint[reference-llama-sharded-ws2-fp32])")
        label = found["label"]
        model, dot, head = label.rpartition(".") if "." in label else (label, "", "")
        return cls(found["clause"], found["check"], found["subject"], model, head or None, found["layout"],
                   int(found["world_size"]), found["dtype"], found["variant"] or PLAIN, sweep=bool(dot))
