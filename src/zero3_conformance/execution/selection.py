"""What a run was asked to check: `Selection`, parsed once from a front end's options, kept in the run
directory's plan so that a resumed run checks the same, and turned into the catalog's cases.

Its errors name what is wrong with a value, never a front end's option: the CLI, the unittest front end and
a resumed plan each say it in their own words around it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..catalog import CaseSpec, build_cases
from ..dsconfig import DEFAULT_ZERO3_CONFIG, validate
from ..errors import UsageError
from ..known_issues import DEFAULT_FILE as DEFAULT_ISSUES
from ..results import DEFAULT_REPEAT
from ..zoo import detect_layout, user_family
from .runner import CHECK_TIMEOUT_S

# What a plan written before a key existed meant by leaving it out.
_BEFORE: dict[str, object] = {"repeat": 0, "architectures": "", "variants": ""}


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclasses.dataclass(frozen=True)
class Selection:
    subjects: tuple[str, ...] = ()  # empty: each of these, the catalog's defaults
    models: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    clauses: tuple[str, ...] = ()
    world_sizes: tuple[int, ...] = ()
    variants: tuple[str, ...] = ()
    model: str | None = None  # a checkpoint directory of the user's own
    ds_config: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(DEFAULT_ZERO3_CONFIG))
    known_issues: str = str(DEFAULT_ISSUES)
    timeout: float = CHECK_TIMEOUT_S
    repeat: int = DEFAULT_REPEAT

    @classmethod
    def parse(cls, subjects: str = "", models: str = "", architectures: str = "", clauses: str = "",
              world_sizes: str = "", variants: str = "", model: str | None = None,
              ds_config: dict[str, Any] | None = None, issues: str | Path = DEFAULT_ISSUES,
              timeout: float = CHECK_TIMEOUT_S, repeat: int = DEFAULT_REPEAT) -> Selection:
        """From comma-separated text, as a user types it."""
        try:
            sizes = tuple(int(part) for part in comma_list(world_sizes))
        except ValueError:
            raise UsageError(f"invalid world sizes {world_sizes!r}: expected comma-separated integers") from None
        if repeat < 0:
            raise UsageError(f"the further tries of a case must be 0 or more, not {repeat}")
        return cls(tuple(comma_list(subjects)), tuple(comma_list(models)), tuple(comma_list(architectures)),
                   tuple(comma_list(clauses)), sizes, tuple(comma_list(variants)), model,
                   dict(ds_config) if ds_config is not None else dict(DEFAULT_ZERO3_CONFIG), str(issues), timeout,
                   repeat)

    def to_plan(self) -> dict[str, Any]:
        """As the plan keeps it (the text a user would type, so that older readers read it)."""
        return {"subject": ",".join(self.subjects), "models": ",".join(self.models),
                "architectures": ",".join(self.architectures), "clauses": ",".join(self.clauses),
                "world_sizes": ",".join(map(str, self.world_sizes)), "variants": ",".join(self.variants),
                "model": self.model, "ds_config": self.ds_config, "known_issues": self.known_issues,
                "timeout": self.timeout, "repeat": self.repeat}

    @classmethod
    def from_plan(cls, plan: dict[str, Any], where: str) -> Selection:
        """The selection a plan keeps; a key a plan from before it existed leaves out means what it meant then.
        Raises UsageError naming `where` if it is not one."""
        try:
            kept: dict[str, Any] = {key: plan[key] if key in plan else _BEFORE[key] for key in cls().to_plan()}
            validate(kept["ds_config"], where)
            return cls.parse(kept["subject"], kept["models"], kept["architectures"], kept["clauses"],
                             kept["world_sizes"], kept["variants"], kept["model"], kept["ds_config"],
                             kept["known_issues"], kept["timeout"], kept["repeat"])
        except (KeyError, TypeError, AttributeError):
            raise UsageError(f"{where} is not a run plan") from None

    def cases(self, launched_size: int | None = None) -> list[CaseSpec]:
        """The cases it names; in a launched world of `launched_size` ranks, each at that size."""
        user_model = None
        if self.model is not None:
            detect_layout(Path(self.model))
            user_model = user_family(Path(self.model))
        if launched_size is not None and self.world_sizes and list(self.world_sizes) != [launched_size]:
            raise UsageError(f"world sizes {','.join(map(str, self.world_sizes))} asked for: the launched world has "
                             f"{launched_size} ranks, and every case runs at its size")
        return build_cases(list(self.subjects), list(self.models), list(self.clauses),
                           list(self.world_sizes) or None, user_model, list(self.architectures),
                           launched_size=launched_size, variants=list(self.variants))
