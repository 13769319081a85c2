"""Expectations: entries expect any status or a set of them, narrow by case and cell, are applied to raw
outcomes (so a run can be triaged again), and bad entries are one-line usage errors naming the entry."""

import pytest

from zero3_conformance import cli, known_issues
from zero3_conformance.errors import UsageError
from zero3_conformance.results import CRASH, ERROR, FAIL, PASS, SKIP, TIMEOUT, XFAIL, XPASS

LINK = "https://github.com/example/project/issues/1"
ENTRY = f"""
[[issue]]
clause = "G1"
subject = "reference"
versions = {{ transformers = ">=5.0,<6" }}
reason = "demo"
link = "{LINK}"
"""


def load(tmp_path, text):
    path = tmp_path / "k.toml"
    path.write_text(text)
    return known_issues.load(path)


def with_fields(**fields):
    """ENTRY with fields added (TOML values given as text)."""
    return ENTRY + "".join(f"{k} = {v}\n" for k, v in fields.items())


def test_fail_becomes_xfail_pass_becomes_xpass_and_the_raw_status_is_kept(tmp_path, make_record):
    issues = load(tmp_path, ENTRY)
    xfail = known_issues.apply(make_record(FAIL, message="x"), issues)
    assert (xfail.status, xfail.raw_status, xfail.message) == (XFAIL, FAIL, "x")  # nothing the subject did is lost
    assert xfail.expected["link"] == LINK
    assert xfail.expected["met"]
    assert xfail.expected["kind"] == "known upstream"
    assert xfail.expected["entry"] == "k.toml #1 (G1 reference)"  # the file's name: records travel between machines
    xpass = known_issues.apply(make_record(PASS), load(tmp_path, with_fields(model='"llama"')))
    assert (xpass.status, xpass.raw_status, xpass.expected["met"]) == (XPASS, PASS, False)
    outside = make_record(FAIL, cell={**make_record().cell, "transformers": "4.57.6"})
    assert known_issues.apply(outside, issues).status == FAIL


@pytest.mark.parametrize("status", [ERROR, TIMEOUT, CRASH])
def test_an_entry_may_expect_any_status(tmp_path, status, make_record):
    issues = load(tmp_path, with_fields(expected=f'"{status}"'))
    assert known_issues.apply(make_record(status), issues).status == XFAIL
    unmet = known_issues.apply(make_record(FAIL), issues)  # expected another status: left as it was, entry named
    assert unmet.status == FAIL
    assert unmet.expected["met"] is False
    assert "not met" in known_issues.note(unmet)


def test_an_intermittent_case_meets_an_entry_only_when_every_outcome_is_expected(tmp_path, make_record):
    flaky = make_record(FAIL, outcomes=[FAIL, PASS, FAIL], intermittent=True)
    assert known_issues.apply(flaky, load(tmp_path, with_fields(expected='["PASS", "FAIL"]'))).status == XFAIL
    assert known_issues.apply(flaky, load(tmp_path, ENTRY)).status == FAIL  # FAIL alone: the PASS is unexpected
    crashed = make_record(CRASH, outcomes=[FAIL, CRASH], intermittent=True)
    assert known_issues.apply(crashed, load(tmp_path, with_fields(expected='["PASS", "FAIL"]'))).status == CRASH
    # A case that passed meets an entry that lists PASS: it stays PASS, and the entry is not stale.
    issues = load(tmp_path, with_fields(expected='["PASS", "FAIL"]'))
    passed = known_issues.apply(make_record(PASS), issues)
    assert passed.status == PASS
    assert passed.expected["met"]
    assert known_issues.stale(issues, [passed]) == []


def test_an_entry_with_a_message_is_met_only_by_failures_whose_message_matches(tmp_path, make_record):
    # The gloo race entry's own pattern: wrong values, never a call that raised.
    issues = load(tmp_path, with_fields(expected='["PASS", "FAIL"]', message="'(?s)^(?!.*raised during)'"))
    wrong_values = make_record(FAIL, message="rank 0: a.weight: 1/4 elements differ, max |diff| 3e+35")
    assert known_issues.apply(wrong_values, issues).status == XFAIL
    raised = make_record(FAIL, message="rank 0,1: reference raised during from_config: RuntimeError: no support")
    unmet = known_issues.apply(raised, issues)
    assert unmet.status == FAIL
    assert unmet.expected["met"] is False
    assert known_issues.apply(make_record(PASS), issues).status == PASS
    assert known_issues.stale(issues, [raised]) == issues


@pytest.mark.parametrize(("field", "matching", "other"), [
    ("model", '"llama"', '"bert"'),
    ("layout", '["sharded", "bin"]', '"safetensors"'),
    ("world_size", "3", "[1, 2]"),
    ("dtype", '"fp32"', '"bf16"'),
    ("backend", '"gloo"', '"nccl"'),
    ("check", '"gathered_equals_checkpoint"', '"other_check"'),
])
def test_an_entry_narrows_by_case_and_backend(tmp_path, field, matching, other, make_record):
    record = make_record(FAIL)  # llama, sharded, ws3, fp32, gloo
    assert known_issues.apply(record, load(tmp_path, with_fields(**{field: matching}))).status == XFAIL
    assert known_issues.apply(record, load(tmp_path, with_fields(**{field: other}))).status == FAIL


def test_expectations_apply_afresh_to_the_raw_outcomes(tmp_path, make_record):
    first = known_issues.apply(make_record(FAIL, message="x"), load(tmp_path, ENTRY))
    again = known_issues.apply(first, load(tmp_path, ENTRY))
    assert again == first
    assert known_issues.apply(first, []) == make_record(FAIL, message="x")  # no entry: the raw record, as it was run


def test_stale_only_where_the_entry_holds_a_case_it_applies_to_ran_and_none_met_it(tmp_path, make_record):
    issues = load(tmp_path, with_fields(model='"llama"'))
    other_versions = make_record(PASS, cell={**make_record().cell, "transformers": "4.57.6"})
    assert known_issues.stale(issues, [other_versions]) == []  # its conditions do not hold for this cell
    assert known_issues.stale(issues, [make_record(PASS, clause="G2")]) == []  # no case it applies to ran
    assert known_issues.stale(issues, [make_record(SKIP)]) == []  # a skipped case did not run
    assert known_issues.stale(issues, [known_issues.apply(make_record(FAIL), issues)]) == []  # met
    assert known_issues.stale(issues, [make_record(PASS)]) == issues  # it applies, ran, and passed


NEW_FINDING = """
[[issue]]
clause = "P5"
subject = "transformers"
upstream = false
reason = "buffers cast"
short_name = "rotary-inv-freq-dtype"
tensor = "model.rotary_emb.inv_freq"
expected_value = "float32 (baseline)"
observed_value = "bfloat16"
seen_in = "transformers 5.17.0"
not_seen_in = "transformers 5.24.0"
at_fault = "transformers 5.24.0: modeling_utils.py: f"
disposition = "file"
link = "https://github.com/huggingface/transformers/issues"
"""


def test_a_new_finding_describes_itself_and_links_its_tracker(tmp_path):
    (issue,) = load(tmp_path, NEW_FINDING)
    assert issue.kind == "new finding"
    assert dict(issue.finding)["observed_value"] == "bfloat16"
    with pytest.raises(UsageError, match="field 'seen_in' is required"):
        load(tmp_path, NEW_FINDING.replace('seen_in = "transformers 5.17.0"\n', ""))


@pytest.mark.parametrize(("change", "message"), [
    (('disposition = "file"', ""), "field 'disposition' is required"),
    (('disposition = "file"', 'disposition = "wontfix"'), "disposition 'wontfix' is not one of file, divergence, "
                                                           "harness"),
    (('disposition = "file"', 'disposition = "divergence"'), "not_filed_because is required with disposition "
                                                              "'divergence'"),
    (('disposition = "file"', 'disposition = "file"\nnot_filed_because = "no"'), "and only then"),
])
def test_a_new_finding_names_its_fault_and_what_is_to_become_of_it(tmp_path, change, message):
    with pytest.raises(UsageError, match=message):
        load(tmp_path, NEW_FINDING.replace(*change))
    (divergence,) = load(tmp_path, NEW_FINDING.replace('disposition = "file"', 'disposition = "divergence"\n'
                                                                               'not_filed_because = "by design"'))
    assert dict(divergence.finding)["not_filed_because"] == "by design"


@pytest.mark.parametrize(("text", "message"), [
    ("[[issue]]\nclause = 'G1'\n", "field 'subject' is required"),
    ("not toml = = 1", "not valid TOML"),
    (ENTRY.replace(">=5.0,<6", "five"), "not a version specifier"),
    (with_fields(expected='"FLAKY"'), r"issue #1 \(G1 reference\): unknown expected status 'FLAKY'"),
    (with_fields(expected='["PASS", "XFAIL"]'), "unknown expected status 'XFAIL'"),
    (with_fields(expected='"PASS"'), "expects nothing"),
    (with_fields(os='"linux"'), r"issue #1 \(G1 reference\): unknown field 'os'"),
    (with_fields(world_size='"two"'), "world_size must be a int"),
    (ENTRY.replace(LINK, ""), r"issue #1 \(G1 reference\): field 'link' is required"),
    (ENTRY.replace(LINK, "https://github.com/example/project/issues?q=zero3"), "must be an upstream issue or pull"),
    (ENTRY.replace("transformers =", "tensorflow ="), "versions.tensorflow: unknown library"),
    (with_fields(message="'(unclosed'"), "message '\\(unclosed' is not a regular expression"),
    (with_fields(match='{ kind = "values_wrong" }'), r"issue #1 \(G1 reference\): match.kind 'values_wrong' is not a "
                                                     "finding kind; known: not_partitioned"),
    (with_fields(match='{ kind = "values_differ", layer = "x" }'), r"match.layer: unknown field; known: kind, tensor"),
    (with_fields(match='{ tensor = "bias$" }'), "match needs a kind"),
    (with_fields(match='[{ kind = "raised" }, "x"]'), r"match\[1\]: match must be a table or a list of tables"),
    (with_fields(match='[{ kind = "raised" }, { kind = "boom" }]'), r"match\[1\]: match.kind 'boom' is not a"),
    (with_fields(match='{ kind = "values_differ", tensor = "(unclosed" }'), "match.tensor '\\(unclosed' is not a"),
    (with_fields(id='"Stage As String"'), r"issue #1: id 'Stage As String' must be lower-case words joined by '-'"),
    (with_fields(id='"x"') + with_fields(id='"x"'), r"issue #2: id 'x' is issue #1's already"),
])
def test_bad_files_are_usage_errors(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        load(tmp_path, text)


def test_a_bad_entry_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "k.toml"
    path.write_text(with_fields(expected='"FLAKY"'))
    assert cli.main(["run", "--known-issues", str(path), "--clauses", "A1", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "issue #1 (G1 reference): unknown expected status 'FLAKY'" in err


def test_shipped_file_is_valid():
    issues = known_issues.load()
    assert issues
    # Every entry has an id: records name it by that, and comparisons of runs do not shift when one is removed.
    assert [issue.name for issue in issues if "#" in issue.name.split(" (")[0]] == []
    for issue in issues:
        if issue.upstream:
            assert known_issues.UPSTREAM_LINK.match(issue.link), issue.name
        else:
            assert issue.link.startswith("https://"), issue.name
            assert {field for field, _ in issue.finding} >= set(known_issues.FINDING), issue.name


def test_an_entry_may_name_several_clauses_and_subjects(tmp_path, make_record):
    issues = load(tmp_path, ENTRY.replace('clause = "G1"', 'clause = ["G1", "N1"]').replace(
        'subject = "reference"', 'subject = ["reference", "transformers"]'))
    for clause in ("G1", "N1"):
        for subject in ("reference", "transformers"):
            assert known_issues.apply(make_record(FAIL, clause=clause, subject=subject), issues).status == XFAIL
    assert known_issues.apply(make_record(FAIL, clause="G2"), issues).status == FAIL
    assert "(G1,N1 reference,transformers)" in issues[0].name


def test_a_failure_that_meets_an_entry_but_for_its_versions_stays_a_fail_and_says_so(tmp_path, make_record):
    """A fixed finding failing again in a newer release is a regression to report, not an expected failure; one
    failing in an older release than recorded asks for the entry to be widened."""
    issues = load(tmp_path, ENTRY)  # transformers >=5.0,<6
    newer = known_issues.apply(make_record(FAIL, cell={**make_record().cell, "transformers": "6.1.0"}), issues)
    assert (newer.status, newer.expected["met"]) == (FAIL, False)
    assert known_issues.note(newer) == ("matches known finding k.toml #1 (G1 reference) in all but its versions: "
                                        f"recorded for transformers >=5.0,<6, here 6.1.0: a regression? ({LINK})")
    older = known_issues.apply(make_record(FAIL, cell={**make_record().cell, "transformers": "4.57.6"}), issues)
    assert older.status == FAIL
    assert "here 4.57.6: older than recorded: widen the entry?" in known_issues.note(older)
    passed = known_issues.apply(make_record(PASS, cell={**make_record().cell, "transformers": "6.1.0"}), issues)
    assert (passed.status, passed.expected) == (PASS, None)  # a pass outside the range says nothing
    other = known_issues.apply(make_record(FAIL, clause="G2", cell={**make_record().cell, "transformers": "6.1.0"}),
                               issues)
    assert other.expected is None  # another clause: no entry to name


def test_no_shipped_entry_stops_at_the_newest_release_of_its_axis():
    """An entry is open until a newer release is seen passing: an upper bound at (or a pin to) the newest
    release on a library's axis would make the next release read as broken for a bug nobody fixed."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    from zero3_conformance import matrix

    axes = matrix.load().axes
    for issue in known_issues.load():
        for library, spec in issue.versions:
            if library not in axes:
                continue
            newest = max(axes[library], key=Version)
            after = f"{newest}.post9999"  # a release after the newest on the axis, as a version
            holds_newest = newest in SpecifierSet(spec)
            assert not holds_newest or after in SpecifierSet(spec), \
                f"{issue.name}: versions.{library} = {spec!r} holds {newest}, the newest on its axis, but not the " \
                "next release: open the range above"


def test_an_every_model_entry_matches_by_its_evidence_and_leaves_passing_cases_alone(tmp_path, make_record):
    """A loader or DeepSpeed fault applies to every model, a user's checkpoint included, where its evidence
    shows; another model's passing case neither meets it nor becomes XPASS."""
    issues = load(tmp_path, with_fields(message="'unexpected_keys: expected'"))
    shown = make_record(FAIL, model="/home/me/my-checkpoint", message="unexpected_keys: expected ['x'], got []")
    assert known_issues.apply(shown, issues).status == XFAIL
    other = known_issues.apply(make_record(FAIL, model="/home/me/my-checkpoint", message="values differ"), issues)
    assert (other.status, other.expected) == (FAIL, None)  # another fault: neither excused nor named by this entry
    passed = known_issues.apply(make_record(PASS), issues)
    assert (passed.status, passed.expected) == (PASS, None)
    assert known_issues.stale(issues, [make_record(PASS), other]) == []  # nothing showed it: not a sign it is fixed
    crashed = make_record(CRASH, outcomes=[CRASH], message="unexpected_keys: expected ['x'], got [] then died")
    assert known_issues.apply(crashed, issues).expected["met"] is False  # its evidence, another status: named
    assert known_issues.stale(issues, [crashed]) == issues
    narrowed = load(tmp_path, with_fields(model='"llama"'))
    assert known_issues.apply(make_record(PASS, model="llama"), narrowed).status == XPASS  # a named model: fixed?


def test_every_shipped_entry_for_every_model_carries_its_evidence():
    """An entry that names no model or class must match the fault's own evidence, never the clause alone: without
    a matcher it would excuse any failure of its clauses on every model."""
    for issue in known_issues.load():
        if issue.every_model:
            assert issue.has_evidence, f"{issue.name} names no model or class and matches no evidence (match, message)"


def test_every_shipped_entry_matches_by_kind_or_says_why_not():
    """Entries name their findings by kind, so rewording a message un-meets none; one that cannot (its evidence is
    in no finding's fields) says why in a `# no match:` comment of its own."""
    import re

    text = known_issues.DEFAULT_FILE.read_text(encoding="utf-8")
    entries = re.split(r"(?m)^\[\[issue\]\]\n", text)[1:]
    assert len(entries) == len(known_issues.load())
    for number, (entry, issue) in enumerate(zip(entries, known_issues.load(), strict=True), 1):
        assert issue.match or re.search(r"(?m)^# no match: \S", entry), (
            f"known_issues.toml #{number} ({issue.reason[:60]}...): no `match` and no `# no match:` reason")


def test_an_entry_is_named_by_its_id_which_stays_when_another_is_removed(tmp_path, make_record):
    first = with_fields(id='"first-finding"', model='"gpt2"')
    second = with_fields(id='"second-finding"', model='"llama"')
    both = known_issues.apply(make_record(FAIL, model="llama"), load(tmp_path, first + second))
    alone = known_issues.apply(make_record(FAIL, model="llama"), load(tmp_path, second))
    assert both.expected["entry"] == alone.expected["entry"] == "k.toml second-finding (G1 reference)"
    unnamed = known_issues.apply(make_record(FAIL, model="llama"), load(tmp_path, ENTRY + second))
    assert unnamed.expected["entry"] == "k.toml #1 (G1 reference)"  # no id: its position
