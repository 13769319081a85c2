"""The contract's text as shipped with the package (CONTRACT.md): what each clause ID says."""

from __future__ import annotations

import re
from pathlib import Path

CONTRACT = Path(__file__).with_name("CONTRACT.md")


def clause_ids() -> list[str]:
    """Every clause ID, in the contract's order."""
    return re.findall(r"^- \*\*([A-Z]\d+)\*\*", CONTRACT.read_text(encoding="utf-8"), flags=re.M)


def clause_text(clause: str) -> str:
    """The clause's own words (its bullet, continuation lines joined), e.g. "G1 After `from_pretrained`, ..."."""
    text = CONTRACT.read_text(encoding="utf-8")
    found = re.search(rf"^- \*\*{re.escape(clause)}\*\* (.*?)(?=^- \*\*|^\S|\Z)", text, flags=re.M | re.S)
    if not found:
        raise KeyError(f"no clause {clause} in {CONTRACT.name}")
    return f"{clause}: " + " ".join(found.group(1).split())
