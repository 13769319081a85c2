"""The conformance suite: every case of the catalog, for both subjects, as one parametrized test.

`pytest` and `zero3-conformance run` take their cases from the same catalog, so they run identical
checks. Cases are grouped by world size so that, under `-n 2 --dist loadgroup`, each worker keeps
its worlds alive (where pytest-xdist groups them: pytest-dev/pytest-xdist#1386); a case's subjects are tried
together whichever worker runs which.
"""

import pytest

from zero3_conformance.catalog import build_cases
from zero3_conformance.pytest_plugin import report

CASES = build_cases()


@pytest.mark.conformance
@pytest.mark.slow
@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=pytest.mark.xdist_group(f"ws{c.world_size}")) for c in CASES]
)
def test_contract(case, conformance_session):
    report(conformance_session.run(case))
