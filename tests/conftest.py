"""Fixtures the harness's tests share."""

import pytest

from zero3_conformance.results import PASS, Record

CELL = {"python": "3.11", "torch": "2.13.0", "deepspeed": "0.19.8", "transformers": "5.24.0", "accelerate": "1.15.0",
        "backend": "gloo", "device": "cpu", "harness": "0.1.0"}


def _record(status=PASS, **fields):
    base = dict(clause="G1", check="gathered_equals_checkpoint", subject="reference", model="llama",
                layout="sharded", world_size=3, dtype="fp32", status=status, message="", duration_s=0.1, cell=CELL)
    base.update(fields)
    return Record(**base)


@pytest.fixture
def make_record():
    """A result record as `run` writes it: G1 of the reference on llama (sharded, world size 3, fp32, gloo) in
    the default cell, with the status and fields given."""
    return _record
