"""Bad input: one line naming the problem, exit status 2, no traceback, nothing written."""

import json

import pytest

from zero3_conformance.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.mark.parametrize("argv, words", [
    (["run", "--models", "gpt5"], "unknown model 'gpt5'"),
    (["run", "--clauses", "Q7"], "unknown clause 'Q7'"),
    (["run", "--subject", "mine"], "unknown subject 'mine'"),
    (["run", "--world-sizes", "two"], "invalid --world-sizes"),
    (["run", "--world-sizes", "0"], "invalid world size 0"),
    (["run", "--model", "/nonexistent/checkpoint"], "does not exist"),
    (["run", "--ds-config", "/nonexistent/ds.json"], "cannot read DeepSpeed config"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, argv, words):
    code, err = run_cli(capsys, *argv, *(["--out", str(tmp_path / "out")] if argv[0] == "run" else []))
    assert code == 2
    assert words in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "summary.md").exists()


@pytest.mark.parametrize("config, words", [
    ("{ not json", "not valid JSON"),
    (json.dumps({"zero_optimization": {"stage": 9}}), "stage must be 0, 1, 2 or 3"),
    (json.dumps({"zero_optimization": {"stage": 2}}), "must be 3 for ZeRO-3 builds"),
])
def test_malformed_ds_config(capsys, tmp_path, config, words):
    path = tmp_path / "ds.json"
    path.write_text(config)
    code, err = run_cli(capsys, "run", "--ds-config", str(path), "--out", str(tmp_path / "out"))
    assert (code, len(err.splitlines())) == (2, 1)
    assert words in err


def test_checkpoint_without_weights(capsys, tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    code, err = run_cli(capsys, "run", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"))
    assert code == 2 and "has no model.safetensors" in err


def test_env_prints_the_cell(capsys):
    assert main(["env"]) == 0
    cell = json.loads(capsys.readouterr().out)
    assert {"python", "torch", "deepspeed", "transformers", "accelerate", "backend", "device", "harness"} <= set(cell)
