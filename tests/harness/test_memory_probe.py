"""The memory probe P3 measures with: one process that imports once and measures builds one after another."""

import pytest

from zero3_conformance.memory.client import ProbeProcess
from zero3_conformance.zoo import MEMORY_FAMILY, MEMORY_WARMUP_FAMILY, ensure_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("harness-memory-probe")]


def _baseline_spec(build):
    return {"subject": "baseline", "build": build, "backend": "gloo", "ds_config": {},
            "auto_class": MEMORY_FAMILY.auto_class, "checkpoint": str(ensure_checkpoint(MEMORY_FAMILY, "safetensors")),
            "warmup_checkpoint": str(ensure_checkpoint(MEMORY_WARMUP_FAMILY, "safetensors"))}


def test_a_used_probe_measures_a_build_as_a_fresh_one_does():
    # What one build frees must not hide the next one's peak: the same build, measured first in a fresh probe
    # and again after other builds in the same probe, allocates the same.
    probe = ProbeProcess()
    try:
        first = probe.measure(_baseline_spec("from_config"), 300)
        probe.measure(_baseline_spec("from_pretrained"), 300)
        again = probe.measure(_baseline_spec("from_config"), 300)
    finally:
        probe.close()
    assert first["peak_anon_mb"] > 250, first  # a 263 MB model was really built
    assert abs(again["peak_anon_mb"] - first["peak_anon_mb"]) <= 2, (first, again)


def test_a_probe_that_dies_is_reported_with_its_stderr():
    probe = ProbeProcess()
    try:
        with pytest.raises(RuntimeError, match=r"(?s)exited with 1: .*KeyError: 'warmup_checkpoint'"):
            probe.measure({"subject": "baseline", "build": "from_config", "backend": "gloo"}, 300)
        assert not probe.alive()
    finally:
        probe.close()
