"""`repro`: standalone scripts and bug reports for findings, checked without and with a fault in transformers."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from zero3_conformance import cli, repro
from zero3_conformance.catalog import build_cases
from zero3_conformance.results import Record, RecordWriter
from zero3_conformance.zoo import FAMILIES

FAULT = Path(__file__).parent / "transformers_fault"
TORCHRUN = Path(sys.executable).with_name("torchrun")
SWEEP_SAMPLE = ["mistral", "vit", "whisper"]
STACK = {"torch", "deepspeed", "transformers", "safetensors", "packaging"}  # what a reproducer may import


def _run_dir(tmp_path, cases, status="PASS", message=""):
    """A run directory holding one record per case, as `run` writes them."""
    run_dir = tmp_path / "run"
    with RecordWriter(run_dir / "results.jsonl") as writer:
        for spec in cases:
            writer.write(Record(clause=spec.clause, check=spec.check, subject=spec.subject, model=spec.model,
                                layout=spec.layout, world_size=spec.world_size, dtype=spec.dtype, status=status,
                                message=message, duration_s=1.0, head=spec.head, case_id=spec.id,
                                cell={"transformers": "5.24.0", "deepspeed": "0.19.8", "torch": "2.13.0",
                                      "backend": "gloo", "device": "cpu"}))
    (run_dir / "run.json").write_text(json.dumps({"schema": 1, "selection": {}}))
    return run_dir


def _scripted_cases(**selection):
    clauses = sorted({entry.split("-")[0] for entry in repro.SCRIPTED})
    return [c for c in build_cases(subjects=["transformers"], clauses=clauses, world_sizes=[2], **selection)
            if not c.skip and repro.scripted(c.clause, c.check)]


def _imported_modules(script):
    tree = ast.parse(script)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0] if node.level == 0 else ".")
    return names


@pytest.mark.parametrize("selection", [{"models": list(FAMILIES)}, {"architectures": SWEEP_SAMPLE}],
                         ids=["zoo", "sweep-sample"])
def test_every_scripted_check_makes_a_script_that_imports_only_the_stack(tmp_path, selection):
    cases = _scripted_cases(**selection)
    zoo_only = set() if "models" in selection else {"G5"}  # G5 runs on the zoo's llama alone
    assert {c.clause for c in cases} == {entry.split("-")[0] for entry in repro.SCRIPTED} - zoo_only
    run_dir = _run_dir(tmp_path, cases)
    for spec in cases:
        made = repro.write(spec.id, run_dir, tmp_path / "out" / str(abs(hash(spec.id))))
        assert made.script is not None, (spec.id, made.why)
        compile(made.script, spec.id, "exec")
        imported = _imported_modules(made.script)
        assert "zero3_conformance" not in imported, (spec.id, imported)
        assert "." not in imported, (spec.id, imported)
        assert imported <= STACK | sys.stdlib_module_names, (spec.id, imported - sys.stdlib_module_names)
        assert f"sys.exit(main({spec.check_id.split('-', 1)[1]}))" in made.script


def test_the_report_holds_versions_clause_evidence_and_the_script(tmp_path):
    spec = next(c for c in _scripted_cases(models=["llama"]) if c.check_id == "G1-gathered_equals_checkpoint")
    evidence = "rank 0,1: model.embed_tokens.weight: 1/8384 elements differ, max |diff| 0.001"
    run_dir = _run_dir(tmp_path, [spec], status="FAIL", message=f"[{spec.id} on gloo, world size 2] {evidence}")
    made = repro.write(spec.id, run_dir, tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.startswith("# ZeRO-3: model.embed_tokens.weight: 1/8384 elements differ")
    for expected in ("transformers 5.24.0, deepspeed 0.19.8, torch 2.13.0", "G1: After `from_pretrained`, inside",
                     evidence, "DS_ACCELERATOR=cpu torchrun --nproc-per-node 2 repro.py", made.script.strip()):
        assert expected in report
    assert (tmp_path / "out" / "repro.py").read_text() == made.script


def test_a_check_without_a_script_gets_a_report_with_the_harness_command(tmp_path):
    spec = next(c for c in build_cases(subjects=["transformers"], clauses=["N2"], world_sizes=[2],
                                       models=["llama"]))
    run_dir = _run_dir(tmp_path, [spec], status="FAIL", message="gradients differ")
    made = repro.write(spec.id, run_dir, tmp_path / "out")
    assert made.script is None
    assert not (tmp_path / "out" / "repro.py").exists()
    report = (tmp_path / "out" / "report.md").read_text()
    assert "No standalone script: no standalone script exists for N2-gradients_match_baseline yet" in report
    assert "zero3-conformance run --subject transformers --clauses N2 --world-sizes 2 --models llama" in report


@pytest.mark.parametrize("problem", ["unknown case", "reference case", "not a run directory", "not a case id"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, problem):
    spec = next(c for c in build_cases(subjects=["reference"], clauses=["G1"], world_sizes=[2], models=["llama"]))
    run_dir = _run_dir(tmp_path, [spec])
    case_id, source = {"unknown case": ("G1-nothing[transformers-llama-ws2-fp32]", run_dir),
                       "reference case": (spec.id, run_dir),
                       "not a run directory": (spec.id.replace("reference", "transformers"), tmp_path),
                       "not a case id": ("G1 llama ws2", run_dir)}[problem]
    assert cli.main(["repro", case_id, "--from", str(source), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert error.startswith("zero3-conformance: error:"), error
    if problem == "not a case id":
        assert "'G1 llama ws2' is not a case id (CLAUSE-check[subject-model" in error


def _launch(script_dir, fault=False):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    if fault:
        env["PYTHONPATH"] = str(FAULT)
    done = subprocess.run([str(TORCHRUN), "--nproc-per-node", "2", "repro.py"], cwd=script_dir, env=env,
                          capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout


@pytest.mark.slow
def test_the_script_holds_on_this_stack_and_breaks_with_the_fault_naming_the_harness_tensor(tmp_path):
    """One launch per outcome (a sample; the nightly loops over every check and family): G1 on llama exits 0
    here, and 1 with transformers' loading moved by 1e-3 (the perturbed_load mutant's fault), naming the
    tensor the harness names under the same fault."""
    spec = next(c for c in _scripted_cases(models=["llama"]) if c.check_id == "G1-gathered_equals_checkpoint"
                and c.layout == "safetensors")
    repro.write(spec.id, _run_dir(tmp_path, [spec]), tmp_path / "repro")
    code, out = _launch(tmp_path / "repro")
    assert code == 0, out
    assert "HOLDS: no finding" in out, out
    code, out = _launch(tmp_path / "repro", fault=True)
    assert code == 1, out
    assert "BROKEN" in out, out
    assert "rank 1: model.embed_tokens.weight: 8384/8384 elements differ, max |diff| 0.001" in out, out
    env = {**os.environ, "PYTHONPATH": str(FAULT)}
    subprocess.run([sys.executable, "-m", "zero3_conformance.cli", "run", "--subject", "transformers", "--models",
                    "llama", "--clauses", "G1", "--world-sizes", "2", "--repeat", "0", "--quiet", "--out",
                    str(tmp_path / "harness")], env=env, check=False, timeout=600)
    records = [json.loads(line) for line in (tmp_path / "harness" / "results.jsonl").read_text().splitlines()]
    harness = next(r for r in records if r["case_id"] == spec.id)
    tensor = harness["findings"][0]["tensor"]
    assert harness["raw_status"] == "FAIL", (harness["message"], out)
    assert f"{tensor}:" in out, (harness["message"], out)


@pytest.mark.slow
def test_a_known_finding_of_this_stack_reproduces_with_the_tensor_its_entry_names(tmp_path):
    """bros's P5 finding against transformers 5.24.0 (known_issues.toml): the script exits 1, and what it
    prints meets the entry's message pattern, as the harness's record did."""
    import transformers

    from zero3_conformance import known_issues

    entry = next(i for i in known_issues.load() if "P5" in i.clauses and "bros" in dict(i.narrowing).get("model", ()))
    if not known_issues.versions_hold({"transformers": transformers.__version__, **_versions()}, entry.versions):
        pytest.skip(f"the entry describes other versions than the installed ones ({dict(entry.versions)})")
    spec = next(c for c in _scripted_cases(architectures=["bros"]) if c.clause == "P5" and c.dtype == "bf16")
    repro.write(spec.id, _run_dir(tmp_path, [spec], status="FAIL"), tmp_path / "repro")
    code, out = _launch(tmp_path / "repro")
    assert code == 1, out
    assert re.search(entry.message, out), out


def _versions():
    import deepspeed
    import torch

    return {"deepspeed": deepspeed.__version__, "torch": torch.__version__.split("+")[0]}


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("ZERO3_CONFORMANCE_NIGHTLY"),
                    reason="launches every scripted check on every zoo family (minutes): the nightly workflow "
                           "sets ZERO3_CONFORMANCE_NIGHTLY=1")
def test_every_script_of_the_zoo_gives_the_harness_verdict_on_this_stack(tmp_path):
    """Exit 0 where the harness's case passes here, 1 where it fails (a known finding of this stack, e.g.
    num-labels-mismatch-raises, is broken in the script as in the harness)."""
    cases = [c for c in _scripted_cases(models=list(FAMILIES)) if c.layout in (None, "safetensors")]
    clauses = ",".join(sorted({c.clause for c in cases}))
    assert cli.main(["run", "--subject", "transformers", "--clauses", clauses, "--world-sizes", "2", "--repeat",
                     "0", "--quiet", "--out", str(tmp_path / "harness")]) in (0, 1)
    harness = {r["case_id"]: r["raw_status"] for r in map(json.loads, (tmp_path / "harness" / "results.jsonl")
                                                             .read_text().splitlines())}
    run_dir = _run_dir(tmp_path, cases)
    differing = []
    for number, spec in enumerate(cases):
        assert harness[spec.id] in ("PASS", "FAIL", "SKIP"), (spec.id, harness[spec.id])
        repro.write(spec.id, run_dir, tmp_path / str(number))
        code, out = _launch(tmp_path / str(number))
        expected = {"PASS": 0, "FAIL": 1}.get(harness[spec.id])
        if expected is not None and code != expected:
            differing.append(f"{spec.id}: the harness says {harness[spec.id]}, the script exits {code}\n"
                             f"{out[-2000:]}")
    assert not differing, "\n".join(differing)
