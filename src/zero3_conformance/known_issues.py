"""Known findings: recorded outside the checks, they turn a matching FAIL into XFAIL (and a PASS into XPASS).

Each entry in the TOML file names a clause, a subject, version conditions, what happens, and a link:

    [[issue]]
    clause = "A4"
    subject = "transformers"
    check = "malformed_config_rejected"        # optional
    model = "bert"                              # optional
    versions = { transformers = ">=5.0" }       # PEP 440 specifiers on the cell's versions
    reason = "..."
    link = "https://..."
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from .errors import UsageError, read_toml_file
from .results import FAIL, PASS, XFAIL, XPASS, Record

DEFAULT_FILE = Path(__file__).with_name("known_issues.toml")


@dataclasses.dataclass(frozen=True)
class KnownIssue:
    clause: str
    subject: str
    reason: str
    link: str
    check: Optional[str] = None
    model: Optional[str] = None
    versions: tuple[tuple[str, str], ...] = ()

    def matches(self, record: Record) -> bool:
        if (record.clause, record.subject) != (self.clause, self.subject):
            return False
        if self.check and record.check != self.check:
            return False
        if self.model and record.model != self.model:
            return False
        for library, spec in self.versions:
            try:
                if Version(str(record.cell.get(library, ""))) not in SpecifierSet(spec):
                    return False
            except InvalidVersion:
                return False
        return True


def load(path: Path = DEFAULT_FILE) -> list[KnownIssue]:
    data = read_toml_file(path, "known-issues file")
    issues = []
    for number, entry in enumerate(data.get("issue", []), 1):
        where = f"{path}: issue #{number}"
        for field in ("clause", "subject", "reason", "link"):
            if not isinstance(entry.get(field), str) or not entry[field]:
                raise UsageError(f"{where}: field '{field}' is required and must be a string")
        versions = entry.get("versions", {})
        for library, spec in versions.items():
            try:
                SpecifierSet(spec)
            except InvalidSpecifier:
                raise UsageError(f"{where}: versions.{library} = {spec!r} is not a version specifier") from None
        issues.append(KnownIssue(entry["clause"], entry["subject"], entry["reason"], entry["link"],
                                 entry.get("check"), entry.get("model"), tuple(sorted(versions.items()))))
    return issues


def apply(record: Record, issues: list[KnownIssue]) -> Record:
    """FAIL -> XFAIL and PASS -> XPASS when a known issue matches; the reason and link go into the message."""
    issue = next((i for i in issues if i.matches(record)), None)
    if issue is None or record.status not in (FAIL, PASS):
        return record
    note = f"known issue: {issue.reason} ({issue.link})"
    if record.status == FAIL:
        return dataclasses.replace(record, status=XFAIL, message=f"{note}\n{record.message}")
    return dataclasses.replace(record, status=XPASS, message=f"{note} -- but it passed: the entry may be stale")


def stale(issues: list[KnownIssue], records: list[Record]) -> list[KnownIssue]:
    """Entries that matched no record of the run's clauses and subjects (warned about in the summary)."""
    ran = {(r.clause, r.subject) for r in records}
    return [i for i in issues if (i.clause, i.subject) in ran and not any(i.matches(r) for r in records)]


def as_dict(issue: KnownIssue) -> dict[str, Any]:
    return dataclasses.asdict(issue)
