"""What the harness reads and where it talks: weights never unpickle code, remote code never runs,
worlds meet on loopback, temporary files are private. (HTML escaping: test_matrix_report.py.)"""

import ipaddress
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch

from zero3_conformance.reference.checkpoint import CheckpointReader
from zero3_conformance.worlds.world import World

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
    with pytest.raises(ValueError, match="contains custom code which must be executed"):
        from_pretrained(auto_class("AutoModelForCausalLM"), ckpt)
    del config
    assert not marker.exists(), "a checkpoint's own code ran"


def _loopback(ip):
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, an IPv4 loopback peer of an IPv6 socket
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.slow
def test_worlds_meet_on_loopback_and_keep_their_files_private():
    """Seen from inside the ranks, after a collective: every socket a rank holds is on loopback, and the files
    a rank writes (its stack file) are in a directory only its user can enter."""
    world = World(2)
    try:
        world.start()
        outcome = world.run("harness.faults:where_this_rank_talks", None, 120)
    finally:
        world.close()
    assert sorted(outcome.replies) == [0, 1]
    for rank, reply in outcome.replies.items():
        assert reply.ok, reply.error
        seen = reply.value
        assert seen["master_addr"] == "127.0.0.1", (rank, seen)
        assert seen["socket_addresses"], (rank, seen)
        assert all(_loopback(ip) for ip in seen["socket_addresses"]), (rank, seen)
        assert any(path.startswith(os.path.join(tempfile.gettempdir(), "zero3-world-"))
                   for path in seen["written_dirs"]), (rank, seen)  # the stack file's directory is among them
        assert all(int(mode, 8) & 0o077 == 0 for mode in seen["written_dirs"].values()), (rank, seen)
