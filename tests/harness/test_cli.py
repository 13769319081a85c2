"""Bad input: one line naming the problem, exit status 2, no traceback, nothing written."""

import json

import pytest

from zero3_conformance.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err.strip()


@pytest.mark.parametrize(("argv", "words"), [
    (["run", "--models", "gpt5"], "unknown model 'gpt5'"),
    (["run", "--clauses", "Q7"], "unknown clause 'Q7'"),
    (["run", "--subject", "mine"], "unknown subject 'mine'"),
    (["run", "--world-sizes", "two"], "invalid world sizes 'two'"),
    (["run", "--world-sizes", "0"], "invalid world size 0"),
    (["run", "--parallel-worlds", "0"], "--parallel-worlds must be 1 or more"),
    (["run", "--model", "/nonexistent/checkpoint"], "does not exist"),
    (["run", "--ds-config", "/nonexistent/ds.json"], "cannot read DeepSpeed config"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, argv, words):
    code, err = run_cli(capsys, *argv, *(["--out", str(tmp_path / "out")] if argv[0] == "run" else []))
    assert code == 2
    assert words in err
    assert len(err.splitlines()) == 1
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "summary.md").exists()


@pytest.mark.parametrize(("config", "words"), [
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
    assert code == 2
    assert "has no model.safetensors" in err


def test_env_prints_the_cell(capsys):
    assert main(["env"]) == 0
    cell = json.loads(capsys.readouterr().out)
    assert {"python", "torch", "deepspeed", "transformers", "accelerate", "backend", "device", "harness"} <= set(cell)


def _checkpoint(tmp_path, layout):
    import torch
    from safetensors.torch import save_file

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    tensors = {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8), "b": torch.zeros(8)}
    if layout == "bin":
        torch.save(tensors, ckpt / "pytorch_model.bin")
        return ckpt / "pytorch_model.bin"
    name = "model-00001-of-00001.safetensors" if layout == "sharded" else "model.safetensors"
    save_file(tensors, str(ckpt / name))
    if layout == "sharded":
        (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": name, "b": name}}))
    return ckpt / name


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-40])


def _garble_header(path):
    data = bytearray(path.read_bytes())
    data[8:12] = b"}}}}"
    path.write_bytes(bytes(data))


def _index(text):
    def write(path):
        (path.parent / "model.safetensors.index.json").write_text(text)
    return write


@pytest.mark.parametrize(("layout", "damage", "words"), [
    ("safetensors", _truncate, "is truncated: its tensors need 288 bytes of data, the file holds 248"),
    ("safetensors", _garble_header, "has a malformed safetensors header"),
    ("safetensors", lambda p: p.write_bytes(b"\x01\x02"), "no complete header"),
    ("bin", _truncate, "is not a readable torch.save archive"),
    ("sharded", _truncate, "is truncated"),
    ("sharded", _index("{ nope"), "checkpoint index"),
    ("sharded", _index('{"weight_map": {"w": "model-00002-of-00002.safetensors"}}'),
     "names a shard that is not there: model-00002-of-00002.safetensors"),
    ("sharded", _index('{"weight_map": []}'), "weight_map must map tensor names to shard files"),
])
def test_damaged_checkpoint_exits_2_naming_the_file(capsys, tmp_path, layout, damage, words):
    damage(_checkpoint(tmp_path, layout))
    code, err = run_cli(capsys, "run", "--model", str(tmp_path / "ckpt"), "--out", str(tmp_path / "out"))
    assert (code, len(err.splitlines())) == (2, 1), err
    assert words in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists(), "nothing is written for rejected input"


@pytest.mark.parametrize("layout", ["safetensors", "bin", "sharded"])
def test_an_undamaged_checkpoint_of_each_layout_is_accepted(tmp_path, layout):
    from zero3_conformance.zoo import detect_layout

    _checkpoint(tmp_path, layout)
    assert detect_layout(tmp_path / "ckpt") == layout


def test_unwritable_output_directory_exits_2(capsys, tmp_path):
    (tmp_path / "a-file").write_text("")
    code, err = run_cli(capsys, "run", "--clauses", "A1", "--out", str(tmp_path / "a-file" / "out"))
    assert (code, len(err.splitlines())) == (2, 1)
    assert "cannot write to output directory" in err
