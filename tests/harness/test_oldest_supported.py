"""The oldest transformers and deepspeed the harness declares, run for real: A1, P1, G1, G4 and S2 on gpt2 in the
minimum profile's tox environment over this machine's torch. The checks import transformers inside the
ranks, so only a run catches a use of an API newer than the declared range, before a user on an older
stack gets the harness's own fault reported as a finding. There G4 meets a known finding (GPT-2's scaled
c_proj init skipped before transformers 4.57), whose standalone reproducer must fail in that cell and pass
on this environment."""

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.version import Version

from zero3_conformance import cli, repro
from zero3_conformance.cell import COMPLETE
from zero3_conformance.matrix import load
from zero3_conformance.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
# Both tests use the oldest cell's tox environment: one worker builds it, and runs them one after the other.
pytestmark = pytest.mark.xdist_group("harness-oldest-cell")
CLAUSES = ("A1", "P1", "G1", "G4", "S2")
FINDING = "G4-from_config_init_matches_baseline[transformers-gpt2-ws2-fp32]"  # known before transformers 4.57
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


@pytest.mark.slow
def test_checks_run_on_the_oldest_supported_transformers_and_deepspeed(tmp_path, capsys):
    cell = _oldest_cell_over_this_torch()
    out = tmp_path / "runs"
    cli.main(["matrix", "--profile", "minimum", "--cells", cell.name, "--out", str(out), "--",
              "--clauses", ",".join(CLAUSES), "--models", "gpt2", "--world-sizes", "1,2"])
    info = json.loads((out / cell.name / RunDir.CELL).read_text())
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

    _the_known_finding_reproduces_in_the_cell_only(cell, out / cell.name, records, tmp_path)


def _the_known_finding_reproduces_in_the_cell_only(cell, run_dir, records, tmp_path):
    (record,) = [r for r in records if r["case_id"] == FINDING]
    assert record["status"] == "XFAIL", record
    tensor = record["findings"][0]["tensor"]
    made = repro.write(FINDING, run_dir, tmp_path / "repro")
    assert made.script is not None, made.why
    cell_python = ROOT / ".tox" / cell.name / "bin" / "python"
    assert cell_python.is_file(), f"no tox environment for {cell.name} at {cell_python}"
    outcomes = {}
    for where, python in (("cell", cell_python), ("here", Path(sys.executable))):
        # As tox.ini gives each cell: DeepSpeed's ops built by one release must not be loaded by another.
        extensions = tmp_path / "torch_extensions" / where
        done = subprocess.run([str(python), "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                               str(29600 + len(outcomes)), "repro.py"], cwd=tmp_path / "repro", capture_output=True,
                              text=True, timeout=600, env={**os.environ, "DS_ACCELERATOR": "cpu",
                                                           "TORCH_EXTENSIONS_DIR": str(extensions)})
        outcomes[where] = (done.returncode, done.stdout + done.stderr)
    assert outcomes["cell"][0] == 1, (tensor, outcomes["cell"][1][-3000:])
    assert f"{tensor}: init statistics differ" in outcomes["cell"][1], (tensor, outcomes["cell"][1][-3000:])
    assert outcomes["here"][0] == 0, outcomes["here"][1][-3000:]
    assert "HOLDS: no finding" in outcomes["here"][1], outcomes["here"][1][-3000:]


@pytest.mark.slow
def test_two_deepspeed_releases_run_at_once_each_with_its_own_op(tmp_path):
    """`run` in this environment and in the oldest cell's (another deepspeed release), started together with
    TORCH_EXTENSIONS_DIR unset and an empty cache: each builds DeepSpeed's op in a directory of its own stack,
    and neither world loads the other's op."""
    cell = _oldest_cell_over_this_torch()
    assert cell.deepspeed != version("deepspeed")
    tox = subprocess.run([sys.executable, "-m", "tox", "run", "-e", cell.name, "--notest"], cwd=ROOT,
                         capture_output=True, text=True, timeout=1800)
    assert tox.returncode == 0, tox.stdout[-3000:] + tox.stderr[-3000:]
    cache = tmp_path / "cache"  # torch's default root for JIT ops is $XDG_CACHE_HOME/torch_extensions
    environment = {k: v for k, v in os.environ.items() if k not in ("TORCH_EXTENSIONS_DIR", "XDG_CACHE_HOME")}
    runs = {}
    for where, python in (("cell", ROOT / ".tox" / cell.name / "bin" / "python"), ("here", Path(sys.executable))):
        env = {**environment, "XDG_CACHE_HOME": str(cache), "ZERO3_CONFORMANCE_CACHE": str(tmp_path / where / "zoo")}
        runs[where] = subprocess.Popen([str(python), "-m", "zero3_conformance", "run", "--clauses", "P1", "--models",
                                        "gpt2", "--out", str(tmp_path / where / "run"), "--quiet"], env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for where, process in runs.items():
        output = process.communicate(timeout=1200)[0]
        records = [json.loads(line) for line in (tmp_path / where / "run" / "results.jsonl").read_text().splitlines()]
        errors = [f"{r['case_id']}: {r['message'][:1500]}" for r in records if r["status"] == "ERROR"]
        assert not errors, f"{where}: {len(errors)} ERRORs of {len(records)}:\n" + "\n".join(errors[:3])
        assert process.returncode in (0, 1), output[-3000:]
    built = sorted(path.name for path in (cache / "torch_extensions").iterdir())
    assert len(built) == 2, built
    for deepspeed in (cell.deepspeed, version("deepspeed")):
        assert any(name.endswith(f"-deepspeed{deepspeed}-cpu") for name in built), built
