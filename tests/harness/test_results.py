import json

from zero3_conformance.results import (
    FAIL,
    PASS,
    SKIP,
    XFAIL,
    Record,
    RecordWriter,
    read_records,
    run_succeeded,
)


def test_records_have_every_schema_field(tmp_path, make_record):
    with RecordWriter(tmp_path / "results.jsonl") as writer:
        writer.write(make_record())
    data = json.loads((tmp_path / "results.jsonl").read_text())
    for field in ("schema", "clause", "check", "subject", "model", "layout", "world_size", "dtype", "status",
                  "message", "duration_s", "cell", "case_id", "outcomes", "intermittent", "raw_status", "expected"):
        assert field in data, field
    assert data["schema"] == 2
    assert set(data["cell"]) == {"python", "torch", "deepspeed", "transformers", "accelerate", "backend", "device",
                                 "harness"}


def test_each_record_is_on_disk_when_write_returns(tmp_path, make_record):
    writer = RecordWriter(tmp_path / "results.jsonl")
    writer.write(make_record())
    assert len(read_records(tmp_path / "results.jsonl")) == 1  # readable before close
    writer.close()


def test_torn_last_line_is_ignored(tmp_path, make_record):
    path = tmp_path / "results.jsonl"
    path.write_text(make_record().to_json() + "\n" + make_record().to_json()[:40])
    assert len(read_records(path)) == 1


def test_run_success_rules(make_record):
    assert run_succeeded([make_record(PASS), make_record(SKIP), make_record(XFAIL)])
    assert not run_succeeded([make_record(PASS), make_record(FAIL)])


def test_a_schema_1_record_reads_with_its_outcomes_derived_from_its_status(make_record):
    old = {k: v for k, v in json.loads(make_record(XFAIL).to_json()).items()
           if k not in ("outcomes", "intermittent", "raw_status", "expected")}
    record = Record.from_dict({**old, "schema": 1})
    assert (record.raw_status, record.outcomes, record.intermittent) == (FAIL, [FAIL], False)
