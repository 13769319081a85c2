"""What passes between the parent and a world's ranks for one case, and how the ranks' results become one
verdict. The worlds below carry a `RankTask` to every rank and a `RankResult` back without reading either.

A rank ends a case as one of `Status`; TIMEOUT and CRASH are the parent's to say, from what the world saw.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from .finding_kinds import make as make_finding
from .results import CRASH, ERROR, FAIL, PASS, SKIP, TIMEOUT, most_severe
from .worlds.world import RankReply, TaskOutcome


class Status(enum.Enum):
    """How one rank ended a case (the record's status of the same name)."""

    PASS = PASS
    FAIL = FAIL
    ERROR = ERROR
    SKIP = SKIP


@dataclasses.dataclass(frozen=True)
class RankTask:
    """What a rank needs to run one case: the check, the subject and the module registering it, the model
    family's fields (None where the case builds none), the checkpoint, the ZeRO-3 config as this run made it,
    and the class's clean structure (or why there is none)."""

    check: str
    subject: str
    subject_module: str
    family: dict[str, object] | None
    layout: str | None
    dtype: str
    ds_config: dict[str, Any]
    checkpoint: str | None
    variant: str
    structure: dict[str, object] | None = None


@dataclasses.dataclass(frozen=True)
class RankResult:
    """How one rank ended a case: what it found, the metrics it measured, the values every rank must agree on
    (`agreed`), and the structured findings of a FAIL (finding_kinds)."""

    status: Status
    message: str = ""
    metrics: dict[str, object] = dataclasses.field(default_factory=dict)
    agreed: dict[str, object] = dataclasses.field(default_factory=dict)
    findings: list[dict[str, object]] = dataclasses.field(default_factory=list)

    @property
    def gave_up(self) -> bool:
        """A rank that ends a case without passing may leave its peers waiting in a collective (a SKIP too: a
        limitation one rank meets, e.g. the reference converting what only rank 0 reads)."""
        return self.status is not Status.PASS


def gave_up(value: object) -> bool:
    """The world's test of a rank's reply: whether the others may be left waiting for it."""
    return isinstance(value, RankResult) and value.gave_up


def verdict(outcome: TaskOutcome, world_size: int) -> tuple[str, str, dict[str, Any]]:
    """Combines every rank's outcome into one (status, message, metrics)."""
    if outcome.exit_codes:
        codes = ", ".join(f"rank {r}: {_exit_text(c)}" for r, c in sorted(outcome.exit_codes.items()))
        return CRASH, f"rank died ({codes})", {}
    if outcome.timed_out:
        waiting = sorted(set(range(world_size)) - set(outcome.replies))
        stacks = "\n".join(f"--- rank {r} stack ---\n{s}" for r, s in outcome.stacks.items())
        # What the ranks that did finish ended with is usually why the others wait (one rank raised early).
        finished = "".join(f"rank {r} ended {_reply_text(reply)}\n" for r, reply in sorted(outcome.replies.items()))
        return TIMEOUT, f"ranks {waiting} did not finish within the limit\n{finished}{stacks}", {}
    results: dict[int, RankResult] = {}
    for rank, reply in sorted(outcome.replies.items()):
        if not reply.ok:
            return ERROR, f"rank {rank}: {reply.error}\n{reply.traceback[-3000:]}", {}
        if not isinstance(reply.value, RankResult):  # a task of this harness returned no result: its own fault
            return ERROR, f"rank {rank}: the task returned a {type(reply.value).__name__}, not a result", {}
        results[rank] = reply.value
    missing = sorted(set(range(world_size)) - set(results))
    status = most_severe(r.status.value for r in results.values())
    by_message: dict[str, list[int]] = {}
    for rank, result in results.items():
        if result.status.value == status and result.message:
            by_message.setdefault(result.message, []).append(rank)
    lines = [f"rank {_ranks(ranks)}: {message}" if world_size > 1 else message for message, ranks in by_message.items()]
    if missing:
        lines.append(f"ranks {missing} were still inside the check and were stopped")
    findings = [found for result in results.values() if result.status.value == status for found in result.findings]
    if status == PASS:
        lines, findings = _disagreements(results)
        if lines:
            status = FAIL
    metrics = dict(results[min(results)].metrics) if results else {}
    if findings:  # the structured findings of every rank that ended with the verdict's status (runner: record)
        metrics["findings"] = findings
    return status, "\n".join(lines), metrics


def _reply_text(reply: RankReply) -> str:
    if not reply.ok:
        return f"with an error: {reply.error}"
    if not isinstance(reply.value, RankResult):
        return f"with a {type(reply.value).__name__}, not a result"
    return f"{reply.value.status.value}: {reply.value.message[:2000]}".rstrip(": ")


def _disagreements(results: dict[int, RankResult]) -> tuple[list[str], list[dict[str, object]]]:
    """Where a rank saw another value than the first rank for a key every rank must agree on: the messages, and
    the findings."""
    first = min(results)
    lines, findings = [], []
    for rank, result in results.items():
        for key in sorted(set(result.agreed) | set(results[first].agreed)):
            expected, got = results[first].agreed.get(key), result.agreed.get(key)
            if expected != got:
                lines.append(f"{key}: rank {rank} saw {got}, rank {first} saw {expected}")
                findings.append(make_finding("ranks_disagree", key, f"rank {first}: {expected}", got, rank))
    return lines[:20], findings[:20]


def _ranks(ranks: list[int]) -> str:
    return ",".join(map(str, ranks))


def _exit_text(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
