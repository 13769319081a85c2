"""Result records: one JSON object per case, appended and flushed as it finishes.

Schema 2 adds, to schema 1's fields, every outcome of a case in the order tried (`outcomes`), whether they
differed (`intermittent`), the status before expectations were applied (`raw_status`) and the known-issues
entry that outcome met (`expected`); later, the class a case built (`head`, an addition). Readers of schema 1
keep working; schema 1 records read here get the new fields derived from their status.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .casekey import CaseKey
from .dsconfig import PLAIN

SCHEMA = 2

PASS, FAIL, ERROR, SKIP = "PASS", "FAIL", "ERROR", "SKIP"
XFAIL, XPASS, TIMEOUT, CRASH = "XFAIL", "XPASS", "TIMEOUT", "CRASH"
STATUSES = (PASS, FAIL, ERROR, SKIP, XFAIL, XPASS, TIMEOUT, CRASH)
# Statuses that make a run (and its exit status) unsuccessful.
BAD_STATUSES = (FAIL, ERROR, TIMEOUT, CRASH)
# What a check's run can end as, least severe first: a case's status is the most severe of its outcomes.
SEVERITY = (PASS, SKIP, FAIL, ERROR, TIMEOUT, CRASH)
# A case is tried again after any outcome but these, DEFAULT_REPEAT more times unless a run says otherwise:
# enough to tell a race (outcomes that differ) from a steady fault.
SETTLED = (PASS, SKIP)
DEFAULT_REPEAT = 2


def most_severe(outcomes: Iterable[str]) -> str:
    return max(outcomes, key=SEVERITY.index)


# A record's metric for a case that never ran (its world could not start, or a launched world broke
# earlier): `run --resume` runs it.
NOT_RUN = "not_run"
# A P4 leftover record's metric: the subjects whose cases alone, replayed in a fresh world, spoil it the same way.
REPRODUCED_BY = "reproduced_by"


@dataclasses.dataclass
class Record:
    clause: str
    check: str
    subject: str
    model: str
    layout: str | None
    world_size: int
    dtype: str
    status: str
    message: str
    duration_s: float
    cell: dict[str, Any]
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    case_id: str = ""
    outcomes: list[str] = dataclasses.field(default_factory=list)  # every try's status, in order
    intermittent: bool = False  # the outcomes differ: the verdict is not reproducible
    raw_status: str = ""  # the status before expectations were applied
    expected: dict[str, Any] | None = None  # the known-issues entry the raw outcome met
    head: str | None = None  # the class built (a sweep type has several); None where no model is built
    variant: str = PLAIN  # the ZeRO-3 configuration variant the case ran under (dsconfig.VARIANTS)
    sweep: bool = False  # a case of the architecture sweep (its id names the type with the class built)
    # What the check compared, per kind, and how many of each the class's clean structure says it covers.
    compared: dict[str, int] = dataclasses.field(default_factory=dict)
    expected_to_compare: dict[str, int] = dataclasses.field(default_factory=dict)
    # A failure's structured findings (finding_kinds: kind, tensor, expected, observed, rank), every rank's, in
    # order; `finding` is the first (none on a PASS, a SKIP, or a record written before findings existed).
    findings: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    finding: dict[str, Any] | None = None
    schema: int = SCHEMA

    def __post_init__(self) -> None:
        if not self.raw_status:  # a record of schema 1, or one made before expectations were applied
            self.raw_status = {XFAIL: FAIL, XPASS: PASS}.get(self.status, self.status)
        if not self.outcomes:
            self.outcomes = [self.raw_status]
        self.intermittent = len(set(self.outcomes)) > 1  # derived, so it cannot disagree with the outcomes
        self.finding = self.findings[0] if self.findings else None  # derived, as intermittent is

    @property
    def key(self) -> CaseKey:
        return CaseKey(self.clause, self.check, self.subject, self.model, self.head, self.layout, self.world_size,
                       self.dtype, self.variant, self.sweep)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        if data.get("schema", 1) == 1 and data.get("status") in (XFAIL, XPASS):
            # Schema 1 wrote the known issue into the message's first line; schema 2 keeps it in `expected`.
            fields["message"] = str(data.get("message", "")).split("\n", 1)[1] if "\n" in str(
                data.get("message", "")) else ""
        if "sweep" not in data:  # written before records said so: the id does
            try:
                fields["sweep"] = CaseKey.parse(str(data.get("case_id", ""))).sweep
            except ValueError:  # a P4 leftover's id names no one case
                fields["sweep"] = False
        return cls(**fields)


class RecordWriter:
    """Appends records to a result file; each line is written whole and flushed to disk at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, record: Record) -> None:
        self._file.write(record.to_json() + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: Path) -> list[Record]:
    """Reads a result file, ignoring a torn last line left by a killed run."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(Record.from_dict(json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return records


def write_whole(path: Path, text: str) -> None:
    """Writes `text` to a staging file beside `path`, then renames it over `path`: a reader, or a run killed
    while writing, sees the old file or the new one, never half of one."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    staging.replace(path)


def write_records(path: Path, records: Iterable[Record]) -> None:
    """Replaces a result file with exactly these records, all at once."""
    write_whole(path, "".join(r.to_json() + "\n" for r in records))


def run_succeeded(records: Iterable[Record]) -> bool:
    return not any(r.status in BAD_STATUSES for r in records)
