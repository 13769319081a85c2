"""How often a case is tried, and where: the contract's repeat and blame-pairing policy, over any way of trying
a case once (`TryCase`: the runner's, in its worlds; a test's, scripted)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from ..catalog import CaseSpec
from ..results import NOT_RUN, PASS, SETTLED, TIMEOUT, most_severe


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One try of a case: its verdict, and whether it ran in a world started for it."""
    status: str
    message: str
    metrics: dict[str, Any]  # a rank's verdict's metrics, as a record keeps them (JSON)
    seconds: float
    fresh: bool

    @property
    def ran(self) -> bool:
        return not self.metrics.get(NOT_RUN)


TryCase = Callable[[CaseSpec, bool], Attempt]  # tries a case once; True: in a freshly started world


def tries_of(try_case: TryCase, case: CaseSpec, repeat: int) -> list[Attempt]:
    """A first try, and `repeat` more when it neither passed nor skipped: a timing race shows as outcomes
    that differ, and the last try runs in a freshly started world, so that state one world carried from
    case to case cannot decide every try."""
    first = [try_case(case, False)]
    if first[0].status in SETTLED or not first[0].ran:
        return first
    return first + more_tries(try_case, case, first, repeat)


def paired_tries(try_case: TryCase, cases: Sequence[CaseSpec], repeat: int) -> list[list[Attempt]]:
    """The tries of one case's subjects (`cases`, one per subject). Where one subject did not pass, a subject
    that passed at once is tried again as often, so that a report blames one subject only for a difference
    that held on every try of both."""
    tries = [tries_of(try_case, case, repeat) for case in cases]
    if repeat and any(most_severe(a.status for a in t) not in SETTLED for t in tries):
        for case, attempts in zip(cases, tries):
            if [a.status for a in attempts] == [PASS]:
                attempts += more_tries(try_case, case, attempts, repeat)
    return tries


def more_tries(try_case: TryCase, case: CaseSpec, tries: list[Attempt], more: int) -> list[Attempt]:
    """Up to `more` further tries, the last in a fresh world. A TIMEOUT is tried again once at most: a hang
    costs the whole limit, and a second one says what a third would."""
    added: list[Attempt] = []
    for number in range(more):
        so_far = [a.status for a in tries + added]
        if TIMEOUT in so_far and so_far.index(TIMEOUT) < len(so_far) - 1:
            break
        last = number == more - 1 or so_far[-1] == TIMEOUT
        again = try_case(case, last)
        if not again.ran:  # the world broke since: what ran is the record
            break
        added.append(again)
        if last:
            break
    return added
