"""The CI workflows and the scripts they call: valid workflow files, job matrices that come from
matrix/matrix.toml and match it, scripts that pass shellcheck, and the report script end to end."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from zero3_conformance import matrix as matrix_file
from zero3_conformance.cli import main

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
SCRIPTS = sorted((ROOT / "ci").glob("*.sh"))
MATRIX = matrix_file.load()


def _workflow(name):
    data = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def test_there_are_a_cpu_and_a_gpu_workflow_and_the_ci_scripts():
    assert [w.name for w in WORKFLOWS] == ["conformance-cpu.yml", "conformance-gpu.yml"]
    assert {s.name for s in SCRIPTS} >= {"setup-host.sh", "run-cell.sh", "report.sh", "step-summary.sh"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_valid_against_the_github_workflow_schema(workflow):
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or "check-jsonschema"
    done = subprocess.run([checker, "--builtin-schema", "vendor.github-workflows", str(workflow)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_an_invalid_workflow_is_rejected_by_the_same_check(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("name: x\non: [push]\njobs:\n  a:\n    runs-on: ubuntu-latest\n    stepz: []\n")
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or "check-jsonschema"
    done = subprocess.run([checker, "--builtin-schema", "vendor.github-workflows", str(bad)], capture_output=True,
                          text=True)
    assert done.returncode != 0
    assert "stepz" in done.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_ci_script_passes_shellcheck(script):
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck is part of the test extra"
    done = subprocess.run([shellcheck, str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.parametrize("profile", sorted(MATRIX.profiles))
def test_the_job_matrix_is_the_profiles_cells(profile, capsys):
    assert main(["matrix", "--profile", profile, "--github-matrix"]) == 0
    jobs = json.loads(capsys.readouterr().out)["include"]
    assert [job["cell"] for job in jobs] == [cell.name for cell in MATRIX.profiles[profile]]
    for job, cell in zip(jobs, MATRIX.profiles[profile]):
        for lib in matrix_file.LIBRARIES:
            assert job[lib] == getattr(cell, lib), (cell.name, lib)


def test_one_cell_can_be_picked_and_an_unknown_one_exits_2(capsys):
    cell = MATRIX.profiles["default"][3].name
    assert main(["matrix", "--profile", "default", "--cells", cell, "--github-matrix"]) == 0
    assert [job["cell"] for job in json.loads(capsys.readouterr().out)["include"]] == [cell]
    assert main(["matrix", "--profile", "smoke", "--cells", "torch0-ds0-tf0-acc0", "--github-matrix"]) == 2
    assert "'torch0-ds0-tf0-acc0' is not in profile 'smoke'" in capsys.readouterr().err


def test_the_cpu_workflow_takes_its_cells_and_profiles_from_the_matrix():
    workflow = _workflow("conformance-cpu.yml")
    jobs = workflow["jobs"]
    assert "ci/run-cell.sh smoke" in [step.get("run") for step in jobs["smoke"]["steps"]]
    assert jobs["smoke"]["if"] == "github.event_name == 'pull_request'"
    assert "--github-matrix" in jobs["cells"]["steps"][-1]["run"]
    assert jobs["cell"]["strategy"] == {"fail-fast": False, "matrix": "${{ fromJSON(needs.cells.outputs.matrix) }}"}
    choices = workflow["on"]["workflow_dispatch"]["inputs"]["profile"]["options"]
    assert sorted(choices) == sorted(set(MATRIX.profiles) - {"gpu"}), "dispatch choices drifted from the matrix"
    assert "schedule" in workflow["on"]
    assert "pull_request" in workflow["on"]
    nightly = jobs["cells"]["steps"][-1]["env"]["PROFILE"]
    assert nightly == "${{ inputs.profile || 'default,minimum' }}", "the nightly runs the default and minimum profiles"
    report_steps = [step.get("run", "") for step in jobs["report"]["steps"]]
    assert any(run.startswith("ci/report.sh report artifacts previous/report.json") for run in report_steps)
    assert jobs["report"]["if"].startswith("always()")


GPU_LABELS = ["self-hosted", "linux", "x64", "gpu", "zero3-conformance"]


def test_the_gpu_workflow_runs_the_gpu_profile_on_labelled_runners_one_run_at_a_time():
    workflow = _workflow("conformance-gpu.yml")
    cell = workflow["jobs"]["cell"]
    # One machine's runner, or for worlds across machines the rendezvous machine's (node 0) and the others'.
    runs_on = json.loads("[" + cell["runs-on"].split("'[", 1)[1].split("]'")[0] + "]")
    assert runs_on == [*GPU_LABELS, "zero3-conformance-rendezvous"]
    assert cell["runs-on"].endswith(f"|| '{json.dumps(GPU_LABELS, separators=(',', ':'))}') }}}}")
    assert '"zero3-conformance-worker"]' in cell["runs-on"]
    assert workflow["concurrency"] == {"group": "conformance-gpu", "cancel-in-progress": False}
    assert cell["timeout-minutes"] > 0
    assert cell["strategy"]["fail-fast"] is False
    runs = [step["run"] for step in cell["steps"] if "run" in step]
    assert runs[0] == "ci/gpu-cleanup.sh"
    assert runs[-1] == "ci/gpu-cleanup.sh"
    assert any("ci/gpu-world-sizes.sh" in run for run in runs)
    assert any(run.startswith('ci/run-cell.sh gpu "${{ matrix.cell }}"') for run in runs)
    assert "--profile gpu" in workflow["jobs"]["cells"]["steps"][-1]["run"]
    readme = (ROOT / "README.md").read_text()
    for label in [*GPU_LABELS, "zero3-conformance-rendezvous", "zero3-conformance-worker"]:
        assert f"`{label}`" in readme, f"the README does not explain the runner label {label}"


def test_the_gpu_workflow_can_launch_one_world_across_several_machines():
    workflow = _workflow("conformance-gpu.yml")
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert {"launcher", "nodes", "rendezvous"} <= set(inputs)
    cell = workflow["jobs"]["cell"]
    assert cell["strategy"]["max-parallel"] == "${{ fromJSON(needs.cells.outputs.max_parallel) }}"
    launch = next(step["run"] for step in cell["steps"] if "ZERO3_CONFORMANCE_LAUNCH" in step.get("run", ""))
    assert "--nnodes $NODES --rdzv-backend c10d --rdzv-endpoint $RENDEZVOUS" in launch
    upload = next(step for step in cell["steps"] if step.get("uses", "").startswith("actions/upload-artifact"))
    assert "served.json" in upload["if"]  # a node that only served rank 0's node has no records to upload


def test_the_job_matrix_has_a_job_per_cell_and_node_for_worlds_across_machines(capsys):
    assert main(["matrix", "--profile", "gpu", "--nodes", "2", "--github-matrix"]) == 0
    jobs = json.loads(capsys.readouterr().out)["include"]
    cells = [cell.name for cell in MATRIX.profiles["gpu"]]
    assert [(job["cell"], job["node"]) for job in jobs] == [(cell, node) for cell in cells for node in (0, 1)]
    assert main(["matrix", "--profile", "gpu", "--nodes", "0", "--github-matrix"]) == 2
    assert "--nodes must be at least 1, got 0" in capsys.readouterr().err


def _run_dir(make_record, root, cell_name, status, **record):
    from zero3_conformance.results import RecordWriter
    from zero3_conformance.rundir import RunDir

    run_dir = root / f"run-{cell_name}"
    run_dir.mkdir(parents=True)
    with RecordWriter(run_dir / "results.jsonl") as writer:
        writer.write(make_record(status=status, **record))
    RunDir(run_dir).mark_finished(planned=1, recorded=1)
    (run_dir / "cell.json").write_text(json.dumps({"cell": cell_name, "status": "COMPLETE", "message": ""}))
    return run_dir


def test_report_script_aggregates_uploaded_run_directories_into_the_job_summary(tmp_path, make_record):
    artifacts = tmp_path / "artifacts"
    _run_dir(make_record, artifacts, "cell-a", "PASS")
    _run_dir(make_record, artifacts, "cell-b", "FAIL", message="rank 0: w: expected 1, got 2")
    summary = tmp_path / "summary.md"
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # the zero3-conformance beside this Python
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary), "PATH": path}
    done = subprocess.run([str(ROOT / "ci" / "report.sh"), str(tmp_path / "report"), str(artifacts),
                           str(tmp_path / "no-previous.json")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "no baseline report" in done.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert sorted(c["name"] for c in report["cells"]) == ["cell-a", "cell-b"]
    assert "rank 0: w: expected 1, got 2" in summary.read_text()
    # The next night diffs against this one.
    shutil.rmtree(artifacts / "run-cell-b")
    _run_dir(make_record, artifacts, "cell-b", "PASS")
    done = subprocess.run([str(ROOT / "ci" / "report.sh"), str(tmp_path / "report2"), str(artifacts),
                           str(tmp_path / "report" / "report.json")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "newly fixed" in (tmp_path / "report2" / "report.md").read_text().lower()


def test_report_script_without_run_directories_exits_2(tmp_path):
    done = subprocess.run([str(ROOT / "ci" / "report.sh"), str(tmp_path / "r"), str(tmp_path)], capture_output=True,
                          text=True)
    assert done.returncode == 2
    assert "no run directories" in done.stderr
