"""Tiny configs for model types beyond the zoo: every size-like field shrinks, the config's own consistency holds,
and a type that does not build tiny says why."""

import json

import pytest

from zero3_conformance import cli
from zero3_conformance.architectures import MAX_PARAMETERS, VOCAB, shrink, survey, tiny_config


def test_size_fields_shrink_in_sub_configs_too_and_geometry_stays():
    config = {"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 152064,
              "num_hidden_layers": 28, "intermediate_size": 11008, "rope_theta": 1_000_000,
              "vision_config": {"hidden_size": 1280, "depth": 32, "patch_size": 14, "image_size": 448},
              "depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048], "conv_kernel": [10, 3, 3]}
    tiny = shrink(config)
    assert (tiny["hidden_size"], tiny["num_attention_heads"], tiny["num_key_value_heads"]) == (64, 4, 2)
    assert (tiny["vocab_size"], tiny["num_hidden_layers"], tiny["intermediate_size"]) == (VOCAB, 2, 128)
    assert tiny["rope_theta"] == 1_000_000  # not a size
    assert tiny["vision_config"] == {"hidden_size": 64, "depth": 2, "patch_size": 8, "image_size": 32}
    assert (tiny["depths"], tiny["hidden_sizes"], tiny["conv_kernel"]) == ([1, 1, 1, 1], [32] * 4, [10, 3, 3])
    assert VOCAB % 2 == 1  # an odd vocabulary leaves the embedding's partition uneven


def test_per_layer_lists_follow_the_layer_count_and_token_ids_stay_inside_the_vocabulary():
    tiny = shrink({"num_hidden_layers": 4, "layer_types": ["sliding", "full", "sliding", "full"],
                   "per_layer_config": {"1": {"window": 4}, "3": {"window": 8}}, "id2label": {"0": "a", "2": "c"},
                   "stage_names": ["stem", "stage1", "stage2", "stage3", "stage4"], "out_features": ["stage4"],
                   "vocab_size": 32000, "bos_token_id": 1, "eos_token_id": 31999, "image_token_id": 32001,
                   "sep_token_id": VOCAB - 1, "pad_token_id": None})
    assert tiny["layer_types"] == ["sliding", "full"]
    assert tiny["per_layer_config"] == {"1": {"window": 4}}
    assert tiny["id2label"] == {"0": "a", "2": "c"}  # labels are not layers
    assert "stage_names" not in tiny
    assert "out_features" not in tiny
    ids = [tiny[k] for k in ("bos_token_id", "eos_token_id", "image_token_id", "sep_token_id")]
    assert all(0 <= i < VOCAB for i in ids)
    assert len(set(ids)) == 4
    assert tiny["pad_token_id"] is None


@pytest.mark.parametrize("model_type", ["llama", "bert", "t5", "vit", "whisper", "clip", "mixtral"])
def test_types_of_every_modality_build_tiny_for_real(model_type):
    import transformers

    model = transformers.AutoModel.from_config(tiny_config(model_type))  # on the CPU, with its own init
    assert sum(p.numel() for p in model.parameters()) <= MAX_PARAMETERS


def test_a_type_that_does_not_build_tiny_says_why(monkeypatch):
    from zero3_conformance import architectures

    (built,) = survey(["llama"])
    assert built.built
    assert built.parameters <= MAX_PARAMETERS
    assert not built.reason
    monkeypatch.setattr(architectures, "MAX_PARAMETERS", 1000)  # as if a size field escaped the shrink
    (too_big,) = survey(["llama"])
    assert not too_big.built
    assert f"{built.parameters:,} parameters after shrinking, more than 1,000" in too_big.reason

    def refuses(config):
        raise ValueError("The hidden size is not a multiple of the number of attention heads\nmore detail")

    monkeypatch.setattr("transformers.AutoModel.from_config", refuses)
    (refused,) = survey(["llama"])
    assert refused.reason == ("its AutoModel does not build: ValueError: The hidden size is not a multiple of the "
                              "number of attention heads")


def test_the_command_reports_each_type_and_refuses_an_unknown_one(tmp_path, capsys):
    out = tmp_path / "survey.json"
    assert cli.main(["architectures", "--types", "llama,vit", "--json", str(out)]) == 0
    assert "2 of 2 model types build tiny" in capsys.readouterr().out
    assert [(r["model_type"], r["parameters"] is not None) for r in json.loads(out.read_text())] == [
        ("llama", True), ("vit", True)]
    assert cli.main(["architectures", "--types", "llama,nonesuch"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "unknown model type 'nonesuch'" in err
