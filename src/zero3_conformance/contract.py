"""The contract's text as shipped with the package (CONTRACT.md): what each clause ID says."""

from __future__ import annotations

import functools
import re
from pathlib import Path

CONTRACT = Path(__file__).with_name("CONTRACT.md")


@functools.cache
def _clause_ids() -> tuple[str, ...]:
    return tuple(re.findall(r"^- \*\*([A-Z]\d+)\*\*", CONTRACT.read_text(encoding="utf-8"), flags=re.M))


def clause_ids() -> list[str]:
    """Every clause ID, in the contract's order."""
    return list(_clause_ids())


def clause_groups() -> str:
    """The clause families' letters, in the contract's order ("APGNSE")."""
    return "".join(dict.fromkeys(clause[0] for clause in _clause_ids()))


def clause_key(clause: str) -> tuple[int, str]:
    """Where a clause sorts: in the contract's order; an ID the contract lacks after every clause."""
    ids = _clause_ids()
    return (ids.index(clause), "") if clause in ids else (len(ids), clause)


def clause_text(clause: str) -> str:
    """The clause's own words (its bullet, continuation lines joined), e.g. "G1 After `from_pretrained`, ..."."""
    text = CONTRACT.read_text(encoding="utf-8")
    found = re.search(rf"^- \*\*{re.escape(clause)}\*\* (.*?)(?=^- \*\*|^\S|\Z)", text, flags=re.M | re.S)
    if not found:
        raise KeyError(f"no clause {clause} in {CONTRACT.name}")
    return f"{clause}: " + " ".join(found.group(1).split())
