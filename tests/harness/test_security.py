"""What the harness reads and where it talks: weights never unpickle code, remote code never runs,
worlds meet on loopback, temporary files are private. (HTML escaping: test_matrix_report.py.)"""

import os
import pickle
import re
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from zero3_conformance.reference.checkpoint import CheckpointReader
from zero3_conformance.world import World, free_loopback_port

SRC = Path(__file__).resolve().parents[2] / "src" / "zero3_conformance"


class _Payload:
    """Unpickling this runs code: it creates the file named by `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    marker = tmp_path / "code-ran"
    torch.save({"w": torch.zeros(2), "evil": _Payload(str(marker))}, ckpt / "pytorch_model.bin")
    assert zipfile.is_zipfile(ckpt / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError):
        CheckpointReader(ckpt)
    assert not marker.exists(), "loading a checkpoint ran code from it"


def test_no_source_file_allows_remote_code():
    offenders = [p for p in SRC.rglob("*.py") if re.search(r"trust_remote_code\s*=\s*True", p.read_text())]
    assert not offenders


def test_a_checkpoint_asking_for_its_own_code_is_refused_and_the_code_does_not_run(tmp_path):
    import json

    from zero3_conformance.reference.build import from_pretrained
    from zero3_conformance.reference.config import ZeroConfig
    from zero3_conformance.zoo import auto_class

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    marker = tmp_path / "code-ran"
    (ckpt / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (ckpt / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (ckpt / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                     "AutoModelForCausalLM": "modeling_evil.EvilModel"}}))
    torch.save({"w": torch.zeros(2)}, ckpt / "pytorch_model.bin")
    config = ZeroConfig({"zero_optimization": {"stage": 3}})
    with pytest.raises(ValueError):
        from_pretrained(auto_class("AutoModelForCausalLM"), ckpt)
    del config
    assert not marker.exists(), "a checkpoint's own code ran"


def test_worlds_meet_on_loopback_and_keep_their_files_private():
    port = free_loopback_port()
    assert 0 < port < 65536
    world = World(1)
    try:
        world.start()
        assert os.environ.get("MASTER_ADDR", "127.0.0.1") == "127.0.0.1"
        mode = stat.S_IMODE(os.stat(world._tmp.name).st_mode)
        assert mode & 0o077 == 0, oct(mode)
    finally:
        world.close()
