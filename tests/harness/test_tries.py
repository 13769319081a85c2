"""The repeat and blame-pairing policy (execution/tries.py), a case's record of its tries (execution/records.py),
triage where records are written, and each checkpoint written once per run (execution/checkpoints.py): scripted,
no world started."""

import pytest

from zero3_conformance import known_issues
from zero3_conformance.catalog import build_cases
from zero3_conformance.execution import checkpoints
from zero3_conformance.execution.checkpoints import Checkpoints
from zero3_conformance.execution.records import Recorder, record_of
from zero3_conformance.execution.tries import Attempt, paired_tries, tries_of
from zero3_conformance.results import ERROR, FAIL, NOT_RUN, PASS, SKIP, TIMEOUT, XFAIL, RecordWriter, read_records
from zero3_conformance.zoo import FamilyUnavailable

CASE = build_cases(subjects=["transformers"], clauses=["G1"], models=["llama"], world_sizes=[2])[0]
BOTH = [c for c in build_cases(subjects=["transformers", "reference"], clauses=["G1"], models=["llama"],
                               world_sizes=[2]) if c.layout == "safetensors"]
CELL = {"backend": "gloo"}


def scripted(script):
    """A TryCase giving each subject's next scripted status; the tries it made, (subject, status, fresh)."""
    made = []

    def try_case(case, fresh):
        status = script[case.subject][sum(t[0] == case.subject for t in made)]
        metrics = {NOT_RUN: True} if status == "not run" else {}
        status = ERROR if status == "not run" else status
        made.append((case.subject, status, fresh))
        return Attempt(status, "" if status == PASS else f"{status.lower()} on try {len(made)}", metrics, 0.01, fresh)

    return try_case, made


@pytest.mark.parametrize(("script", "expected"), [
    ([PASS], [(PASS, False)]),
    ([SKIP], [(SKIP, False)]),
    ([FAIL, FAIL, FAIL], [(FAIL, False), (FAIL, False), (FAIL, True)]),  # the last try in a fresh world
    ([FAIL, PASS, FAIL], [(FAIL, False), (PASS, False), (FAIL, True)]),
    ([TIMEOUT, FAIL, FAIL], [(TIMEOUT, False), (FAIL, True)]),  # a TIMEOUT is tried again once at most
    ([FAIL, TIMEOUT, FAIL], [(FAIL, False), (TIMEOUT, False), (FAIL, True)]),
    ([TIMEOUT, TIMEOUT, FAIL], [(TIMEOUT, False), (TIMEOUT, True)]),
    (["not run"], [(ERROR, False)]),  # its world did not start: no try to repeat
    ([FAIL, "not run"], [(FAIL, False)]),  # the world broke since: what ran is the record
])
def test_a_case_that_did_not_pass_is_tried_again(script, expected):
    try_case, made = scripted({"transformers": script})
    record = record_of(CASE, tries_of(try_case, CASE, 2), CELL, restarts=True)
    assert [(status, fresh) for _, status, fresh in made][:len(expected)] == expected  # a try not run is no outcome
    assert record.outcomes == [status for status, _ in expected]
    assert record.intermittent == (len({status for status, _ in expected}) > 1)
    severity = [PASS, SKIP, FAIL, ERROR, TIMEOUT]
    assert record.status == max(record.outcomes, key=severity.index)  # the most severe outcome
    if len(expected) > 1:
        assert record.message.endswith(f"outcomes of {len(expected)} tries: {', '.join(record.outcomes)} "
                                       "(the last in a freshly started world)")


def test_no_repeats_when_asked():
    try_case, made = scripted({"transformers": [FAIL]})
    assert [a.status for a in tries_of(try_case, CASE, 0)] == [FAIL]
    assert len(made) == 1


def test_where_the_subjects_differ_the_one_that_passed_is_tried_again():
    try_case, made = scripted({"transformers": [FAIL, FAIL, FAIL], "reference": [PASS, PASS, PASS]})
    tries = paired_tries(try_case, BOTH, 2)
    assert [[a.status for a in t] for t in tries] == [[FAIL] * 3, [PASS] * 3]
    assert [fresh for subject, _, fresh in made if subject == "reference"] == [False, False, True]
    try_case, made = scripted({"transformers": [PASS], "reference": [PASS]})
    assert [[a.status for a in t] for t in paired_tries(try_case, BOTH, 2)] == [[PASS], [PASS]]
    assert len(made) == 2


def test_a_record_is_the_checks_message_and_the_case_its_fields():
    """The message says what the check saw; case id, cell and world size are fields of the record, not a prefix
    every reader has to strip."""
    record = record_of(CASE, [Attempt(FAIL, "rank 0: w: 1/4 elements differ", {"findings": []}, 1.5, False)], CELL,
                       restarts=True)
    assert record.message == "rank 0: w: 1/4 elements differ"
    assert (record.case_id, record.world_size, record.cell, record.sweep) == (CASE.id, 2, CELL, CASE.key.sweep)
    launched = record_of(CASE, [Attempt(FAIL, "x", {}, 1.0, False)] * 3, CELL, restarts=False)
    assert launched.message.endswith("(all in the launched world, which cannot be started again)")


def test_records_are_triaged_where_they_are_written(tmp_path):
    issues = tmp_path / "k.toml"
    issues.write_text('[[issue]]\nclause = "G1"\nsubject = "transformers"\nmodel = "llama"\nreason = "r"\n'
                      'link = "https://github.com/o/r/issues/1"\nmessage = "elements differ"\n')
    raw = record_of(CASE, [Attempt(FAIL, "rank 0: w: 1/4 elements differ", {}, 1.0, False)], CELL, restarts=True)
    assert raw.status == FAIL
    assert raw.expected is None
    with RecordWriter(tmp_path / "results.jsonl") as writer:
        written = Recorder(known_issues.load(issues), writer).write(raw)
    assert (written.status, written.raw_status) == (XFAIL, FAIL)
    assert read_records(tmp_path / "results.jsonl") == [written]


class _Pool:
    """A started world's pool: no other node to write on."""
    def __init__(self):
        self.node_tasks = []

    def on_each_node(self, target, payload, timeout_s):
        self.node_tasks.append(payload)


def test_each_checkpoint_is_written_once_per_run(monkeypatch):
    written = []

    def ensure(family, layout):
        written.append((family.name, layout))
        if family.name == "gpt2":
            raise FamilyUnavailable("gpt2: cannot be written here")
        return f"/zoo/{family.name}/{layout}"

    monkeypatch.setattr(checkpoints, "ensure_checkpoint", ensure)
    cases = build_cases(subjects=["transformers", "reference"], clauses=["G1", "P2"], models=["llama", "gpt2"],
                        world_sizes=[1, 2])
    pool = _Pool()
    store = Checkpoints(pool)
    store.prepare(cases)
    keys = sorted({(c.family.name, c.layout) for c in cases if c.layout})
    assert sorted(written) == keys  # once each, however many cases, subjects and world sizes read it
    assert [sorted((f.name, layout) for f, layout in payload) for payload in pool.node_tasks] == [keys]
    llama = next(c for c in cases if c.model == "llama" and c.layout)
    assert store.path(llama) == f"/zoo/llama/{llama.layout}"
    gpt2 = next(c for c in cases if c.model == "gpt2" and c.layout)
    for _ in range(2):  # one that cannot be written is not tried again: every case that needs it says why
        with pytest.raises(FamilyUnavailable, match="cannot be written here"):
            store.path(gpt2)
    store.prepare(cases)
    assert sorted(written) == keys
    assert len(pool.node_tasks) == 1
    alone = Checkpoints(_Pool())  # a case asked for alone (a test framework's) writes its own on first use
    assert alone.path(llama) == f"/zoo/llama/{llama.layout}"
    assert len(written) == len(keys) + 1
