import json

import pytest

from zero3_conformance.dsconfig import load_user_zero3_config, read_config_source, with_dtype
from zero3_conformance.errors import UsageError


@pytest.mark.parametrize(("config", "word"), [
    pytest.param({"zero_optimization": {"stage": 7}}, "stage", id="stage_out_of_range"),
    pytest.param({"zero_optimization": {"stage": "3"}}, "stage", id="stage_string"),
    pytest.param({"zero_optimization": {"stage": True}}, "stage", id="stage_bool"),
    pytest.param({"zero_optimization": 3}, "zero_optimization", id="zero_not_object"),
    pytest.param({"bf16": {"enabled": "yes"}}, "bf16.enabled", id="bf16_enabled_string"),
    pytest.param({"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu", id="batch_zero"),
    pytest.param([1, 2], "JSON object", id="not_object"),
])
def test_a_malformed_config_is_rejected_naming_the_problem(config, word):
    with pytest.raises(UsageError) as caught:
        read_config_source(config)
    assert word in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_invalid_json_file_is_rejected_naming_the_position(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"zero_optimization": ')
    with pytest.raises(UsageError, match=r"not valid JSON.*line 1"):
        read_config_source(path)


def test_a_missing_file_is_named():
    with pytest.raises(UsageError, match=r"cannot read DeepSpeed config /nonexistent\.json"):
        read_config_source("/nonexistent.json")


def test_a_users_config_must_be_stage_3(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    with pytest.raises(UsageError, match="must be 3"):
        load_user_zero3_config(path)


def test_the_callers_dict_is_copied():
    source = {"zero_optimization": {"stage": 3}}
    config = read_config_source(source)
    source["zero_optimization"]["stage"] = 0
    assert config["zero_optimization"]["stage"] == 3


def test_with_dtype_enables_exactly_one():
    config = with_dtype({"fp16": {"enabled": True}, "zero_optimization": {"stage": 3}}, "bf16")
    assert config["bf16"] == {"enabled": True}
    assert "fp16" not in config
    assert "bf16" not in with_dtype(config, "fp32")


def test_precision_names_the_enabled_training_dtype():
    import torch

    from zero3_conformance.dsconfig import dtype_name, precision, torch_dtype, with_dtype

    base = {"zero_optimization": {"stage": 3}}
    assert [precision(with_dtype(base, d)) for d in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    assert precision({**base, "bf16": {"enabled": False}}) == "fp32"
    assert torch_dtype(precision(with_dtype(base, "bf16"))) is torch.bfloat16
    assert [dtype_name(torch_dtype(d)) for d in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
