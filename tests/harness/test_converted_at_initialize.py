"""P1/P2/P4: parameters zero.Init leaves whole are, by DeepSpeed's design, converted by deepspeed.initialize; the
check builds an engine around such a model and fails where one is still whole afterwards."""

import contextlib
from types import SimpleNamespace

import deepspeed
import pytest
import torch
import torch.distributed as dist

from zero3_conformance.checks.partition import _converted_at_initialize


def _case():
    found, agreed, closers = [], {}, []

    def expect(condition, message, kind, *fields):
        if not condition:
            found.append((kind, message))
        return bool(condition)

    case = SimpleNamespace(rank=1, ds_config={"zero_optimization": {"stage": 3}}, metrics={}, expect=expect,
                           agree=agreed.__setitem__, on_close=closers.append,
                           subject_call=lambda what: contextlib.nullcontext())
    return case, found, agreed, closers


@pytest.fixture
def engine_built(monkeypatch):
    """deepspeed.initialize stood in for: `convert` says whether it makes the stray parameters ZeRO-3 ones."""
    built = []

    def initialize(model, config, convert):
        built.append(config)
        if convert:
            for param in model.parameters():
                param.ds_id = 0
        return SimpleNamespace(destroy=lambda: None), None, None, None

    monkeypatch.setattr(dist, "all_reduce", lambda tensor, op=None: None)
    monkeypatch.setattr(deepspeed.zero, "GatheredParameters", lambda params: contextlib.nullcontext())
    return built, lambda convert: monkeypatch.setattr(
        deepspeed, "initialize", lambda model, config: initialize(model, config, convert))


def test_a_stray_parameter_left_whole_by_initialize_is_a_finding_naming_it(engine_built):
    built, convert = engine_built
    convert(False)
    case, found, _, closers = _case()
    _converted_at_initialize(case, torch.nn.Linear(2, 2), ["bias"])
    assert built
    assert closers  # the engine is destroyed when the case ends
    assert [kind for kind, _ in found] == ["not_converted_at_initialize"]
    assert "bias (rank 1): not a ZeRO-3 parameter after deepspeed.initialize" in found[0][1]
    assert case.metrics["converted_at_initialize"] == []


def test_a_converted_parameter_is_gathered_for_every_rank_to_agree_on(engine_built):
    _, convert = engine_built
    convert(True)
    case, found, agreed, _ = _case()
    _converted_at_initialize(case, torch.nn.Linear(2, 2), ["bias"])
    assert found == []
    assert list(agreed) == ["bias after deepspeed.initialize"]
    assert case.metrics["converted_at_initialize"] == ["bias"]


def test_no_engine_is_built_where_construction_partitioned_everything(engine_built):
    built, convert = engine_built
    convert(True)
    case, found, _, _ = _case()
    _converted_at_initialize(case, torch.nn.Linear(2, 2), [])
    assert found == []
    assert built == []
    assert "converted_at_initialize" not in case.metrics
