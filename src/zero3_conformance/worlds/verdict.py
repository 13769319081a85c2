"""The parent's side of a case: how the outcomes of a world's ranks become one verdict."""

from __future__ import annotations

from typing import Any

from ..finding_kinds import make as make_finding
from ..results import CRASH, ERROR, FAIL, PASS, SKIP, TIMEOUT, most_severe
from .world import RankReply, TaskOutcome


def gave_up(value: Any) -> bool:
    """A rank that ends a case without passing may leave its peers waiting in a collective (a SKIP too: a
    limitation one rank meets, e.g. the reference converting what only rank 0 reads)."""
    return isinstance(value, dict) and value.get("status") in (FAIL, ERROR, SKIP)


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
    results: dict[int, dict[str, Any]] = {}
    for rank, reply in sorted(outcome.replies.items()):
        if not reply.ok:
            return ERROR, f"rank {rank}: {reply.error}\n{reply.traceback[-3000:]}", {}
        if not isinstance(reply.value, dict):  # a task of this harness returned no result: its own fault
            return ERROR, f"rank {rank}: the task returned a {type(reply.value).__name__}, not a result", {}
        results[rank] = reply.value
    missing = sorted(set(range(world_size)) - set(results))
    status = most_severe(r["status"] for r in results.values())
    by_message: dict[str, list[int]] = {}
    for rank, result in results.items():
        if result["status"] == status and result["message"]:
            by_message.setdefault(result["message"], []).append(rank)
    lines = [f"rank {_ranks(ranks)}: {message}" if world_size > 1 else message for message, ranks in by_message.items()]
    if missing:
        lines.append(f"ranks {missing} were still inside the check and were stopped")
    findings = [found for result in results.values() if result["status"] == status
                 for found in result.get("findings", [])]
    if status == PASS:
        lines, findings = _disagreements(results)
        if lines:
            status = FAIL
    metrics = dict(results[min(results)]["metrics"]) if results else {}
    if findings:  # the structured findings of every rank that ended with the verdict's status (runner: record)
        metrics["findings"] = findings
    return status, "\n".join(lines), metrics


def _reply_text(reply: RankReply) -> str:
    if not reply.ok:
        return f"with an error: {reply.error}"
    value = reply.value if isinstance(reply.value, dict) else {}
    return f"{value.get('status')}: {value.get('message', '')[:2000]}".rstrip(": ")


def _disagreements(results: dict[int, dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Where a rank saw another value than the first rank for a key every rank must agree on: the messages, and
    the findings."""
    first = min(results)
    lines, findings = [], []
    for rank, result in results.items():
        for key in sorted(set(result["agreed"]) | set(results[first]["agreed"])):
            expected, got = results[first]["agreed"].get(key), result["agreed"].get(key)
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
