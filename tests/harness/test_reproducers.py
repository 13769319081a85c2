"""The reproducers in findings/: what a maintainer upstream can run and read without this project."""

import ast
import statistics
from pathlib import Path

import pytest

from zero3_conformance import known_issues
from zero3_conformance.repro.findings import reproducers

FINDINGS = Path(__file__).resolve().parents[2] / "findings"
SCRIPTS = [script for folder in sorted(FINDINGS.iterdir()) if folder.is_dir() for script in reproducers(folder)]
# What a reproducer may import: the libraries at fault and the standard library's plainest modules.
ALLOWED = {"os", "sys", "tempfile", "traceback", "math", "json", "datetime",
           "torch", "deepspeed", "transformers", "safetensors"}
MOST_LINES, MEDIAN_LINES = 60, 40


def test_there_are_reproducers_and_each_is_a_new_findings():
    new = {issue.short_name for issue in known_issues.load() if not issue.upstream}
    assert SCRIPTS
    assert {script.parent.name for script in SCRIPTS} <= new


@pytest.mark.parametrize("script", SCRIPTS, ids=[f"{s.parent.name}/{s.name}" for s in SCRIPTS])
def test_a_reproducer_is_short_plain_and_decides_its_own_verdict(script):
    text = script.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MOST_LINES
    imported = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
            # a private name of the libraries at fault is no API a report can rest on
            assert not [alias.name for alias in node.names if alias.name.startswith("_")], node.module
    assert imported <= ALLOWED, imported - ALLOWED
    for needed in ("FINDING REPRODUCED", "FINDING ABSENT", "destroy_process_group", "sys.exit("):
        assert needed in text, needed
    assert "/tmp/" not in text  # a checkpoint goes to the machine's temporary directory, wherever that is


def test_the_median_reproducer_is_at_most_40_lines():
    assert statistics.median(len(s.read_text(encoding="utf-8").splitlines()) for s in SCRIPTS) <= MEDIAN_LINES


REPORTS = sorted(FINDINGS.glob("*/report.md"))


@pytest.mark.parametrize("report", REPORTS, ids=[r.parent.name for r in REPORTS])
def test_a_report_carries_its_reproducers_verbatim_and_its_measured_range(report):
    text = report.read_text(encoding="utf-8")
    scripts = reproducers(report.parent)
    assert scripts, "a report without a reproducer to run"
    for script in scripts:  # what a maintainer runs is what the report shows
        assert script.read_text(encoding="utf-8").rstrip("\n") in text, script.name
    assert "RELEASE-RANGE" not in text  # the placeholder a measurement replaces
    assert "/tmp/" not in text  # nothing of the machine it was measured on
    assert "## Release range" in text or "### Release range" in text or "Release range:" in text
