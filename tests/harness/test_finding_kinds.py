"""Findings with a kind: a failing check records what it found (kind, tensor or key, expected, observed, rank)
from a closed list; known-issues entries match on it, so a reworded message cannot un-meet an entry and an entry
cannot excuse a failure of another kind."""

import json

import pytest

from zero3_conformance import cli, finding_kinds, known_issues
from zero3_conformance.results import FAIL, PASS, XFAIL, read_records

ENTRY = """
[[issue]]
clause = "G1"
subject = "reference"
model = "llama"
reason = "demo"
link = "https://github.com/example/project/issues/1"
"""


def load(tmp_path, text):
    path = tmp_path / "k.toml"
    path.write_text(text)
    return known_issues.load(path)


def finding(kind, tensor="model.norm.weight", observed="1/64 elements differ"):
    return finding_kinds.make(kind, tensor, "equal bit for bit", observed, 0)


def test_the_kinds_are_a_closed_list_each_with_one_line():
    assert all(name.isidentifier() and name == name.lower() for name in finding_kinds.KINDS)
    assert all(line and "\n" not in line for line in finding_kinds.KINDS.values())
    with pytest.raises(ValueError, match="unknown finding kind 'values_wrong'"):
        finding_kinds.make("values_wrong")
    assert {kind for kind, _ in finding_kinds.RAISED_KINDS} <= set(finding_kinds.KINDS)


@pytest.mark.parametrize(("text", "kind"), [
    ("from_config: RuntimeError: self.dim() cannot be 0 to view Float as Byte (different element sizes)",
     "zero_dim_parameter"),
    ("from_pretrained(num_labels=4, ignore_mismatched_sizes=True on a 2-label checkpoint): RuntimeError: Error(s) "
     "in loading state_dict for X:\n\tsize mismatch for score.weight", "size_mismatch_ignored"),
    ("from_pretrained(safetensors): RuntimeError: size mismatch for score.weight", "raised"),
    ("from_config: IndexError: tuple index out of range", "raised"),
])
def test_a_subjects_exception_is_classified_once_by_its_own_words(text, kind):
    assert finding_kinds.raised_kind(text) == kind


def test_an_entry_matching_a_kind_is_met_only_when_every_finding_is_that_kind(tmp_path, make_record):
    issues = load(tmp_path, ENTRY + "match = { kind = \"values_differ\", tensor = '^model\\.norm\\.' }\n")
    ours = make_record(FAIL, message="reworded: anything", findings=[finding("values_differ")])
    assert known_issues.apply(ours, issues).status == XFAIL  # the message does not matter: the finding does
    other_tensor = make_record(FAIL, findings=[finding("values_differ", tensor="lm_head.weight")])
    assert known_issues.apply(other_tensor, issues).status == FAIL
    mixed = make_record(FAIL, findings=[finding("values_differ"), finding("raised", tensor="", observed="boom")])
    unmet = known_issues.apply(mixed, issues)
    assert (unmet.status, unmet.expected["met"]) == (FAIL, False)  # a second fault is not excused by the first's entry


def test_an_entry_may_match_alternatives_each_finding_meeting_one(tmp_path, make_record):
    """One cause, two faces: a raise on one model, wrong values on another; each finding must meet one table."""
    issues = load(tmp_path, ENTRY + "match = [{ kind = \"values_differ\", tensor = 'norm' },\n"
                                    "         { kind = \"raised\", observed = '^IndexError: ' }]\n")
    raised = finding("raised", tensor="", observed="IndexError: index 0 is out of bounds")
    assert known_issues.apply(make_record(FAIL, findings=[finding("values_differ"), raised]), issues).status == XFAIL
    other = finding("raised", tensor="", observed="TypeError: boom")
    assert known_issues.apply(make_record(FAIL, findings=[finding("values_differ"), other]), issues).status == FAIL


def test_a_record_without_findings_falls_back_to_the_message(tmp_path, make_record):
    """Records written before findings existed (and crashes, timeouts) carry none: `message` decides."""
    issues = load(tmp_path, ENTRY + "match = { kind = \"values_differ\" }\nmessage = 'elements differ'\n")
    assert known_issues.apply(make_record(FAIL, message="a: 1/4 elements differ"), issues).status == XFAIL
    assert known_issues.apply(make_record(FAIL, message="raised during from_config"), issues).status == FAIL


def test_an_every_model_entry_applies_where_its_kind_shows(tmp_path, make_record):
    issues = load(tmp_path, ENTRY.replace('model = "llama"\n', "") + 'match = { kind = "zero_dim_parameter" }\n')
    shown = make_record(FAIL, model="/home/me/ckpt", findings=[finding("zero_dim_parameter", "", "self.dim()...")])
    assert known_issues.apply(shown, issues).status == XFAIL
    other = known_issues.apply(make_record(FAIL, findings=[finding("values_differ")]), issues)
    assert (other.status, other.expected) == (FAIL, None)
    assert known_issues.apply(make_record(PASS), issues).expected is None


def test_a_record_keeps_its_findings_and_names_the_first(make_record):
    record = make_record(FAIL, findings=[finding("values_differ"), finding("non_finite")])
    again = type(record).from_dict(json.loads(record.to_json()))
    assert again.findings == record.findings
    assert again.finding == record.findings[0]
    assert make_record(PASS).finding is None


@pytest.mark.slow
def test_a_failing_check_records_its_findings_and_an_entry_matches_them_by_kind(tmp_path):
    run = tmp_path / "run"
    assert cli.main(["run", "--out", str(run), "--subject", "reference,mutant:perturbed_load", "--clauses", "G1",
                     "--models", "llama", "--world-sizes", "2", "--repeat", "0", "--quiet"]) == 1
    records = read_records(run / "results.jsonl")
    assert all(r.status == PASS and r.findings == [] for r in records if r.subject == "reference")
    failed = [r for r in records if r.subject == "mutant:perturbed_load" and r.status == FAIL]
    assert failed
    for record in failed:
        assert {f["kind"] for f in record.findings} == {"values_differ"}, record.findings
        assert {f["rank"] for f in record.findings} == {0, 1}  # every rank's own
        assert record.finding == record.findings[0]
        assert record.finding["tensor"] in record.message
    entry = ENTRY.replace('subject = "reference"', 'subject = "mutant:perturbed_load"')
    for kind, unexpected in (("values_differ", 0), ("init_differs", len(failed))):
        (tmp_path / "k.toml").write_text(entry + f'match = {{ kind = "{kind}" }}\n')
        assert cli.main(["report", str(run), "--out", str(tmp_path / kind), "--known-issues",
                         str(tmp_path / "k.toml")]) == 0
        report = json.loads((tmp_path / kind / "report.json").read_text())
        assert report["cells"][0]["triage"]["unexpected"] == unexpected, kind


def test_the_readme_prints_every_kind_with_its_line():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    listed = [line for line in readme.splitlines() if line.startswith("- `") and line[3:].split("`")[0]
              in finding_kinds.KINDS]
    assert listed == [f"- `{kind}`: {line}" for kind, line in finding_kinds.KINDS.items()]


def test_compare_proves_a_migrated_file_triages_every_record_alike_and_says_how(tmp_path, make_record, capsys):
    """`known-issues compare OLD NEW RUNS`: every record triaged with both files; a difference is listed and
    exits 1; the summary says how many met an entry through kinds (a proof that compared nothing is none)."""
    from zero3_conformance.results import RecordWriter

    run = tmp_path / "run"
    with RecordWriter(run / "results.jsonl") as writer:
        writer.write(make_record(FAIL, message="[x] rank 0: model.norm.weight: 1/64 elements differ",
                                 findings=[finding("values_differ")], case_id="G1-a[reference-llama]"))
        writer.write(make_record(FAIL, message="raised during from_config: boom", case_id="G1-b[reference-llama]",
                                 findings=[finding("raised", tensor="", observed="RuntimeError: boom")]))
        writer.write(make_record(PASS, case_id="G1-c[reference-llama]"))
    (tmp_path / "old.toml").write_text(ENTRY + "message = 'elements differ'\n")
    (tmp_path / "new.toml").write_text(ENTRY + "match = { kind = \"values_differ\" }\n"
                                       "message = 'elements differ'  # fallback: records without findings\n")
    (tmp_path / "wrong.toml").write_text(ENTRY + "match = { kind = \"raised\" }\n")
    assert cli.main(["known-issues", "compare", str(tmp_path / "old.toml"), str(tmp_path / "new.toml"),
                     str(run)]) == 0
    assert "3 records re-triaged; with the new file 1 meet an entry through their findings' kinds, 0 through" in (
        capsys.readouterr().out)
    assert cli.main(["known-issues", "compare", str(tmp_path / "old.toml"), str(tmp_path / "wrong.toml"),
                     str(run)]) == 1
    out = capsys.readouterr().out
    assert "G1-a[reference-llama]: XFAIL -> FAIL" in out
    assert "G1-b[reference-llama]: FAIL -> XFAIL" in out
    assert out.rstrip().endswith("2 triaged otherwise than with the old file")


def test_a_record_showing_two_known_faults_is_met_by_their_entries_together(tmp_path, make_record):
    """One rank raises the loader's size mismatch, the other DeepSpeed's weight-norm error: each finding is owned
    by its own entry, so the record is met, naming both; a finding no entry owns leaves it a FAIL."""
    issues = load(tmp_path, ENTRY + 'match = { kind = "size_mismatch_ignored" }\n'
                  + ENTRY.replace("demo", "other") + "match = { kind = \"raised\", observed = '^IndexError' }\n")
    mismatch = finding_kinds.make("size_mismatch_ignored", "", "", "RuntimeError: size mismatch", 0)
    weight_norm = finding_kinds.make("raised", "", "", "IndexError: Dimension out of range", 1)
    triaged = known_issues.apply(make_record(FAIL, findings=[mismatch, weight_norm]), issues)
    assert (triaged.status, triaged.expected["entry"], triaged.expected["together_with"]) == (
        XFAIL, "k.toml #1 (G1 reference)", ["k.toml #2 (G1 reference)"])
    assert "with k.toml #2 (G1 reference) for its other findings" in known_issues.note(triaged)
    assert known_issues.stale(issues, [triaged]) == []
    stranger = finding_kinds.make("raised", "", "", "TypeError: boom", 1)
    assert known_issues.apply(make_record(FAIL, findings=[mismatch, stranger]), issues).status == FAIL


def test_entries_naming_a_records_findings_take_it_before_an_entry_matching_its_message_alone(tmp_path, make_record):
    """A broad message-only entry (a race that corrupts any value, listed first) does not take a record whose
    findings the loader's two entries name exactly, alone or together."""
    race = ENTRY.replace("demo", "race") + "expected = [\"PASS\", \"FAIL\"]\nmessage = '(?s)^(?!.*raised during)'\n"
    issues = load(tmp_path, race + ENTRY + 'match = { kind = "values_differ" }\n'
                  + ENTRY.replace("demo", "other") + 'match = { kind = "loading_report_differs" }\n')
    values = finding_kinds.make("values_differ", "w", "equal", "1/4 elements differ", 0)
    report = finding_kinds.make("loading_report_differs", "mismatched_keys", "['a']", "['a', 'b']", 0)
    alone = known_issues.apply(make_record(FAIL, message="w: 1/4 elements differ", findings=[values]), issues)
    assert alone.expected["entry"] == "k.toml #2 (G1 reference)"
    both = known_issues.apply(make_record(FAIL, message="w: differ", findings=[values, report]), issues)
    assert (both.status, both.expected["entry"], both.expected["together_with"]) == (
        XFAIL, "k.toml #2 (G1 reference)", ["k.toml #3 (G1 reference)"])
    unnamed = known_issues.apply(make_record(FAIL, message="w: differ"), issues)  # no findings: the message decides
    assert unnamed.expected["entry"] == "k.toml #1 (G1 reference)"
