import pytest

from zero3_conformance import known_issues
from zero3_conformance.errors import UsageError
from zero3_conformance.results import FAIL, PASS, XFAIL, XPASS

from .test_results import make

ENTRY = """
[[issue]]
clause = "G1"
subject = "reference"
versions = { transformers = ">=5.0,<6" }
reason = "demo"
link = "https://example.invalid/1"
"""


def test_fail_becomes_xfail_and_pass_becomes_xpass(tmp_path):
    path = tmp_path / "k.toml"
    path.write_text(ENTRY)
    issues = known_issues.load(path)
    assert known_issues.apply(make(FAIL, message="x"), issues).status == XFAIL
    assert "https://example.invalid/1" in known_issues.apply(make(FAIL), issues).message
    assert known_issues.apply(make(PASS), issues).status == XPASS
    outside = make(FAIL, cell={**make().cell, "transformers": "4.57.6"})
    assert known_issues.apply(outside, issues).status == FAIL


def test_stale_entries_are_reported(tmp_path):
    path = tmp_path / "k.toml"
    path.write_text(ENTRY)
    issues = known_issues.load(path)
    assert known_issues.stale(issues, [make(PASS, clause="G1", cell={**make().cell, "transformers": "4.0"})])


@pytest.mark.parametrize("text, message", [
    ("[[issue]]\nclause = 'G1'\n", "field 'subject' is required"),
    ("not toml = = 1", "not valid TOML"),
    (ENTRY.replace(">=5.0,<6", "five"), "not a version specifier"),
])
def test_bad_files_are_usage_errors(tmp_path, text, message):
    path = tmp_path / "k.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        known_issues.load(path)


def test_shipped_file_is_valid():
    for issue in known_issues.load():
        assert issue.link.startswith("https://")
