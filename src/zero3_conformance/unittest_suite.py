"""unittest front end: the catalog's cases as a `unittest.TestCase` class, one test per case, generated with
`parameterized` (as transformers' own DeepSpeed tests are written), run through the same session as the
pytest plugin's: a case's subjects tried together, expectations applied, a run directory written.

In a suite of your own:

    from zero3_conformance.unittest_suite import conformance_tests

    class ZeroThreeConformance(conformance_tests(clauses="A1,P1", models="llama")):
        pass  # or override setUpClass, add tests of your own

From a shell: `python -m zero3_conformance.unittest_suite --clauses A1,P1 --out DIR [unittest's options]`.
A selection that names an unknown clause, model or subject is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import unittest
import warnings
from pathlib import Path
from typing import Any

from . import known_issues
from .catalog import CaseSpec
from .errors import UsageError
from .results import DEFAULT_REPEAT, Record


def conformance_tests(clauses: str = "", models: str = "", subjects: str = "", architectures: str = "",
                      world_sizes: str = "", variants: str = "", out: Path | str | None = None,
                      repeat: int = DEFAULT_REPEAT, issues: Path | str = known_issues.DEFAULT_FILE,
                      name: str = "ConformanceTest") -> type[unittest.TestCase]:
    """A TestCase class with one test per case the selection names (comma-separated, as `run` takes them;
    empty: the run's defaults). With `out`, the class's run writes a run directory there that `report`,
    `repro` and `findings` read. Raises UsageError (one line) where the selection names nothing known."""
    from parameterized import parameterized

    from .execution.selection import Selection

    chosen = Selection.parse(subjects, models, architectures, clauses, world_sizes, variants, issues=issues,
                             repeat=repeat)
    cases = chosen.cases()
    selection = {"front_end": "unittest", **chosen.to_plan()}
    run_dir = Path(out) if out is not None else None

    class Conformance(unittest.TestCase):
        session: Any = None

        @classmethod
        def setUpClass(cls) -> None:
            from .execution.session import Session, start
            from .rundir import RunDir

            if run_dir is not None:
                start(RunDir(run_dir), selection, resume=False)
            cls.session = Session(cases, run_dir, issues=Path(issues), repeat=repeat)

        @classmethod
        def tearDownClass(cls) -> None:
            from .execution.session import finish
            from .rundir import RunDir

            cls.session.close()
            if run_dir is not None:
                finish(RunDir(run_dir), len(cases))

        @parameterized.expand([(case.id, case) for case in cases], name_func=_test_name, doc_func=_test_doc)
        def test_case(self, case_id: str, case: CaseSpec) -> None:
            outcome(self, self.session.run(case))

    Conformance.__name__ = Conformance.__qualname__ = name
    return Conformance


def _test_name(func: Any, number: str, param: Any) -> str:
    """`test_case_3_A1_zero3_flag_follows_stage_transformers_none_ws1_fp32` (the number zero-padded):
    unittest's -k matches parts of it."""
    return f"{func.__name__}_{number}_{re.sub(r'[^0-9A-Za-z]+', '_', param.args[0]).strip('_')}"


def _test_doc(func: Any, number: str, param: Any) -> str:
    return str(param.args[0])  # the case id, as reports print it


def outcome(test: unittest.TestCase, record: Record) -> None:
    """Turns a record into the unittest outcome of the same meaning (unittest has no expected failure decided
    while a test runs: an XFAIL is a skip that says so)."""
    from .execution.session import FAILED, SKIPPED, XFAILED, XPASSED, framework_outcome

    kind, text = framework_outcome(record)
    if kind == SKIPPED:
        test.skipTest(text)
    elif kind == XFAILED:
        test.skipTest(f"XFAIL: {text}")
    elif kind == XPASSED:
        warnings.warn(text, stacklevel=2)
    elif kind == FAILED:
        test.fail(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zero3_conformance.unittest_suite",
                                     description="the conformance suite under unittest; options it does not know "
                                                 "go to unittest (-v, -k PATTERN, -f)")
    for option in ("clauses", "models", "subjects", "architectures", "world-sizes", "variants"):
        parser.add_argument(f"--{option}", default="")
    parser.add_argument("--out", type=Path, default=None, help="write the run directory here")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT)
    parser.add_argument("--known-issues", type=Path, default=known_issues.DEFAULT_FILE)
    args, rest = parser.parse_known_args(argv)
    try:
        from .mutation import mutants  # noqa: F401 - registers the mutant:NAME subjects a selection may name

        suite = conformance_tests(args.clauses, args.models, args.subjects, args.architectures, args.world_sizes,
                                  args.variants, args.out, args.repeat, args.known_issues)
    except UsageError as exc:
        print(f"zero3-conformance: error: {exc}", file=sys.stderr)
        return 2
    module = types.ModuleType("zero3_conformance_suite")  # what unittest loads the tests from
    setattr(module, suite.__name__, suite)
    program = unittest.main(module=module, argv=[parser.prog, *rest], exit=False)
    return 0 if program.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
