import json
import unittest

from parameterized import parameterized

from zero3_conformance.dsconfig import load_user_zero3_config, read_config_source, with_dtype
from zero3_conformance.errors import UsageError


class MalformedConfigs(unittest.TestCase):
    @parameterized.expand([
        ("stage_out_of_range", {"zero_optimization": {"stage": 7}}, "stage"),
        ("stage_string", {"zero_optimization": {"stage": "3"}}, "stage"),
        ("stage_bool", {"zero_optimization": {"stage": True}}, "stage"),
        ("zero_not_object", {"zero_optimization": 3}, "zero_optimization"),
        ("bf16_enabled_string", {"bf16": {"enabled": "yes"}}, "bf16.enabled"),
        ("batch_zero", {"train_micro_batch_size_per_gpu": 0}, "train_micro_batch_size_per_gpu"),
        ("not_object", [1, 2], "JSON object"),
    ])
    def test_rejected_with_name(self, _name, config, word):
        with self.assertRaises(UsageError) as caught:
            read_config_source(config)
        self.assertIn(word, str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    def test_invalid_json_file_names_position(self):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "c.json"
            path.write_text('{"zero_optimization": ')
            with self.assertRaisesRegex(UsageError, r"not valid JSON.*line 1"):
                read_config_source(path)

    def test_missing_file(self):
        with self.assertRaisesRegex(UsageError, "cannot read DeepSpeed config /nonexistent.json"):
            read_config_source("/nonexistent.json")

    def test_user_config_must_be_stage3(self):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "c.json"
            path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
            with self.assertRaisesRegex(UsageError, "must be 3"):
                load_user_zero3_config(path)

    def test_dict_is_copied(self):
        source = {"zero_optimization": {"stage": 3}}
        config = read_config_source(source)
        source["zero_optimization"]["stage"] = 0
        self.assertEqual(config["zero_optimization"]["stage"], 3)

    def test_with_dtype_enables_exactly_one(self):
        config = with_dtype({"fp16": {"enabled": True}, "zero_optimization": {"stage": 3}}, "bf16")
        self.assertEqual(config["bf16"], {"enabled": True})
        self.assertNotIn("fp16", config)
        self.assertNotIn("bf16", with_dtype(config, "fp32"))


def test_precision_names_the_enabled_training_dtype():
    import torch

    from zero3_conformance.dsconfig import dtype_name, precision, torch_dtype, with_dtype

    base = {"zero_optimization": {"stage": 3}}
    assert [precision(with_dtype(base, d)) for d in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
    assert precision({**base, "bf16": {"enabled": False}}) == "fp32"
    assert torch_dtype(precision(with_dtype(base, "bf16"))) is torch.bfloat16
    assert [dtype_name(torch_dtype(d)) for d in ("fp32", "bf16", "fp16")] == ["fp32", "bf16", "fp16"]
