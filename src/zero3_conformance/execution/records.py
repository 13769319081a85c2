"""A case's tries made into its record, and records written: the one place the known-issues file is applied
to a run's records (`Recorder`)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import TypedDict

from ..catalog import CaseSpec
from ..finding_kinds import make as make_finding
from ..known_issues import KnownIssue
from ..known_issues import apply as apply_known_issues
from ..results import FAIL, REPRODUCED_BY, Record, RecordWriter, most_severe
from .tries import Attempt

LEFTOVER_CHECK = "P4-leaves_no_leftover"  # the record of a world whose earlier cases spoiled its builds without ZeRO
UNATTRIBUTED = "unattributed"  # a leftover record's subject where no one subject's cases alone reproduce it


class Spoiled(TypedDict):
    """What a rank found changed in a world earlier cases spoiled (checks.execute.SPOILED)."""
    model_class: str
    differences: list[str]


def record_of(case: CaseSpec, tries: Sequence[Attempt], cell: dict[str, object], restarts: bool) -> Record:
    """One record of every try, as run (not triaged): the most severe outcome's status, message and metrics,
    all outcomes in order. The message is what the check said; the case, cell and world size are the record's
    own fields. `restarts`: whether a try could run in a freshly started world."""
    outcomes = [a.status for a in tries]
    status = most_severe(outcomes)
    worst = next(a for a in tries if a.status == status)
    message = worst.message
    if len(tries) > 1:
        fresh = " (the last in a freshly started world)" if tries[-1].fresh else \
            "" if restarts else " (all in the launched world, which cannot be started again)"
        tried = f"outcomes of {len(tries)} tries: {', '.join(outcomes)}{fresh}"
        message = f"{message}\n{tried}" if message else tried
    metrics = dict(worst.metrics)
    compared, expected = metrics.pop("compared", {}), metrics.pop("expected_to_compare", {})
    findings = metrics.pop("findings", [])
    return Record(clause=case.clause, check=case.check, subject=case.subject, model=case.model, head=case.head,
                  layout=case.layout, world_size=case.world_size, dtype=case.dtype, status=status, message=message,
                  duration_s=round(sum(a.seconds for a in tries), 3), cell=cell, metrics=metrics, case_id=case.id,
                  outcomes=outcomes, variant=case.variant, sweep=case.key.sweep, compared=compared,
                  expected_to_compare=expected, findings=findings if status == FAIL else [])


class LeftoverIds:
    """One id per spoiled world: the class and world it was found in, the case it kept from being judged, and
    which time that case was (a case tried again may meet a spoiled world again)."""

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()  # world lanes find spoiled worlds at once

    def next(self, case: CaseSpec, cases_before: int) -> str:
        key = (f"{LEFTOVER_CHECK}[{case.label}-ws{case.world_size}-after-{cases_before}-cases-before-{case.check_id}-"
               f"{case.subject}")
        with self._lock:
            self._seen[key] += 1
            nth = self._seen[key]
        return f"{key}{f'-{nth}' if nth > 1 else ''}]"


def leftover_record(case: CaseSpec, case_id: str, history: Sequence[CaseSpec], spoiled: Spoiled,
                    reproduced: Sequence[str], share: int, cell: dict[str, object], seconds: float) -> Record:
    """P4's record of a spoiled world: the cases it ran (`history`), what changed, and the subject whose share
    (`share` of the cases) alone, replayed in a fresh world, reproduced the change (`reproduced`: each subject
    whose share did; the record blames one only where exactly one did)."""
    subject = reproduced[0] if len(reproduced) == 1 else UNATTRIBUTED
    blamed = f"replaying only {subject}'s {share} of them in a fresh world reproduces it" \
        if subject != UNATTRIBUTED else \
        f"replaying each subject's share alone in a fresh world reproduces it for " \
        f"{' and '.join(reproduced) or 'neither'}: not attributed"
    after = "after this case" if len(history) == 1 else f"after these {len(history)} cases"
    message = (f"{after} in one world, {spoiled['model_class']} built without ZeRO and with no config alive is not "
               f"its clean structure ({case.id} was not judged there and ran again in a fresh world):\n"
               + "\n".join(spoiled["differences"]) + f"\n{blamed}\ncases: {', '.join(c.id for c in history)}")
    return Record(clause="P4", check=LEFTOVER_CHECK.split("-", 1)[1], subject=subject, model=case.model,
                  head=case.head, layout=None, world_size=case.world_size, dtype=case.dtype, status=FAIL,
                  message=message, duration_s=round(seconds, 3), cell=cell,
                  metrics={"spoiled_after": [c.id for c in history], "differences": spoiled["differences"],
                           REPRODUCED_BY: list(reproduced)},
                  case_id=case_id, variant=case.variant,
                  findings=[make_finding("leftover", spoiled["model_class"],
                                         "the class's clean structure, built without ZeRO",
                                         "; ".join(spoiled["differences"]))])


class Recorder:
    """Where a run's records go: each triaged against the known-issues file (a met entry makes a FAIL an XFAIL;
    the raw status stays in the record), then written through `writer` where there is one."""

    def __init__(self, issues: Sequence[KnownIssue], writer: RecordWriter | None = None):
        self.issues = list(issues)
        self.writer = writer

    def write(self, record: Record) -> Record:
        """The record triaged, as written."""
        triaged = apply_known_issues(record, self.issues)
        if self.writer is not None:
            self.writer.write(triaged)
        return triaged

