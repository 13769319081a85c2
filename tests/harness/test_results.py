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


def make(status=PASS, **kw):
    base = dict(clause="G1", check="gathered_equals_checkpoint", subject="reference", model="llama",
                layout="sharded", world_size=3, dtype="fp32", status=status, message="", duration_s=0.1,
                cell={"python": "3.11", "torch": "2.13.0", "deepspeed": "0.19.8", "transformers": "5.24.0",
                      "accelerate": "1.15.0", "backend": "gloo", "device": "cpu", "harness": "0.1.0"})
    base.update(kw)
    return Record(**base)


def test_records_have_every_schema_field(tmp_path):
    with RecordWriter(tmp_path / "results.jsonl") as writer:
        writer.write(make())
    data = json.loads((tmp_path / "results.jsonl").read_text())
    for field in ("schema", "clause", "check", "subject", "model", "layout", "world_size", "dtype", "status",
                  "message", "duration_s", "cell", "case_id", "outcomes", "intermittent", "raw_status", "expected"):
        assert field in data, field
    assert data["schema"] == 2
    assert set(data["cell"]) == {"python", "torch", "deepspeed", "transformers", "accelerate", "backend", "device",
                                 "harness"}


def test_each_record_is_on_disk_when_write_returns(tmp_path):
    writer = RecordWriter(tmp_path / "results.jsonl")
    writer.write(make())
    assert len(read_records(tmp_path / "results.jsonl")) == 1  # readable before close
    writer.close()


def test_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(make().to_json() + "\n" + make().to_json()[:40])
    assert len(read_records(path)) == 1


def test_run_success_rules():
    assert run_succeeded([make(PASS), make(SKIP), make(XFAIL)])
    assert not run_succeeded([make(PASS), make(FAIL)])


def test_a_schema_1_record_reads_with_its_outcomes_derived_from_its_status():
    old = {k: v for k, v in json.loads(make(XFAIL).to_json()).items()
           if k not in ("outcomes", "intermittent", "raw_status", "expected")}
    record = Record.from_dict({**old, "schema": 1})
    assert (record.raw_status, record.outcomes, record.intermittent) == (FAIL, [FAIL], False)
