"""Result records (schema 1): one JSON object per check outcome, appended and flushed as it happens."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Optional

SCHEMA = 1

PASS, FAIL, ERROR, SKIP = "PASS", "FAIL", "ERROR", "SKIP"
XFAIL, XPASS, TIMEOUT, CRASH = "XFAIL", "XPASS", "TIMEOUT", "CRASH"
STATUSES = (PASS, FAIL, ERROR, SKIP, XFAIL, XPASS, TIMEOUT, CRASH)
# Statuses that make a run (and its exit status) unsuccessful.
BAD_STATUSES = (FAIL, ERROR, TIMEOUT, CRASH)


@dataclasses.dataclass
class Record:
    clause: str
    check: str
    subject: str
    model: str
    layout: Optional[str]
    world_size: int
    dtype: str
    status: str
    message: str
    duration_s: float
    cell: dict[str, Any]
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    case_id: str = ""
    schema: int = SCHEMA

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class RecordWriter:
    """Appends records to results.jsonl; each line is written whole and flushed to disk at once."""

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

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_records(path: Path) -> list[Record]:
    """Reads results.jsonl, ignoring a torn last line left by a killed run."""
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
    """Replaces results.jsonl with exactly these records, all at once."""
    write_whole(path, "".join(r.to_json() + "\n" for r in records))


def run_succeeded(records: Iterable[Record]) -> bool:
    return not any(r.status in BAD_STATUSES for r in records)
