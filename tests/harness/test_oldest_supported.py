"""The oldest transformers and deepspeed the harness declares, run for real: A1, P1, G1 and S2 on gpt2 in the
minimum profile's tox environment over this machine's torch. The checks import transformers inside the
ranks, so only a run catches a use of an API newer than the declared range, before a user on an older
stack gets the harness's own fault reported as a finding."""

import json
from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

from zero3_conformance import cli
from zero3_conformance.matrix import load
from zero3_conformance.matrix_runner import CELL_FILE, COMPLETE

ROOT = Path(__file__).resolve().parents[2]
CLAUSES = ("A1", "P1", "G1", "S2")
SUBJECTS = ("reference", "transformers")


def _oldest_cell_over_this_torch():
    matrix = load(ROOT / "matrix" / "matrix.toml")
    torch = Version(version("torch")).public
    cells = [c for c in matrix.profile("minimum") if c.torch == torch]
    assert cells, f"the minimum profile has no cell over this machine's torch {torch}"
    cell = cells[0]
    runnable = [c for c in matrix.profile("full") if c.torch == torch]
    for lib in ("deepspeed", "transformers"):
        oldest = min((getattr(c, lib) for c in runnable), key=Version)
        assert getattr(cell, lib) == oldest, f"{cell.name}: {lib} is not the oldest that runs on torch {torch}"
    return cell


def test_checks_run_on_the_oldest_supported_transformers_and_deepspeed(tmp_path, capsys):
    cell = _oldest_cell_over_this_torch()
    out = tmp_path / "runs"
    cli.main(["matrix", "--profile", "minimum", "--cells", cell.name, "--out", str(out), "--",
              "--clauses", ",".join(CLAUSES), "--models", "gpt2", "--world-sizes", "1,2"])
    info = json.loads((out / cell.name / CELL_FILE).read_text())
    assert info["status"] == COMPLETE, f"{cell.name}: {info['status']}\n{info['message']}"
    records = [json.loads(line) for line in (out / cell.name / "results.jsonl").read_text().splitlines()]
    assert {(r["cell"]["deepspeed"], r["cell"]["transformers"]) for r in records} == {
        (cell.deepspeed, cell.transformers)}
    problems = [f"{r['case_id']}: {r['status']}\n{r['message']}" for r in records
                if r["status"] == "ERROR" or (r["subject"] == "reference" and r["status"] == "FAIL")]
    assert not problems, "the harness's own faults on the oldest supported versions:\n" + "\n".join(problems)
    for clause in CLAUSES:
        for subject in SUBJECTS:
            ran = [r for r in records if r["clause"] == clause and r["subject"] == subject
                   and r["status"] != "SKIP"]
            assert ran, f"{clause} did not run for {subject} on {cell.name}"
