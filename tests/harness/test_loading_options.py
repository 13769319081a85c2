"""The reference's loading options (G8): which file a `variant` or `use_safetensors` selects, names renamed by
`key_mapping`, and what `dtype="auto"` resolves to, read from the checkpoint as transformers reads it."""

import pytest
import torch
from safetensors.torch import save_file

from zero3_conformance.reference.checkpoint import CheckpointReader, choose_layout, with_variant


@pytest.fixture
def checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    default = {"embed.weight": torch.zeros(3, 2), "head.bias": torch.zeros(3, dtype=torch.bfloat16)}
    save_file(default, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    save_file({k: v + 1 for k, v in default.items()}, str(tmp_path / "model.alt.safetensors"),
              metadata={"format": "pt"})
    torch.save({k: v + 2 for k, v in default.items()}, tmp_path / "pytorch_model.bin")
    return tmp_path


def test_a_variant_is_named_as_transformers_names_it():
    assert with_variant("model.safetensors", "fp16") == "model.fp16.safetensors"
    assert with_variant("model.safetensors.index.json", "fp16") == "model.safetensors.index.fp16.json"
    assert with_variant("pytorch_model.bin", None) == "pytorch_model.bin"


def test_options_select_the_file_that_from_pretrained_reads(checkpoint):
    assert float(CheckpointReader(checkpoint).get("embed.weight")[0, 0]) == 0
    assert float(CheckpointReader(checkpoint, variant="alt").get("embed.weight")[0, 0]) == 1
    assert float(CheckpointReader(checkpoint, use_safetensors=False).get("embed.weight")[0, 0]) == 2
    assert choose_layout(checkpoint, "alt", True) == "safetensors"


def test_a_missing_selected_file_is_an_error_naming_it(checkpoint):
    with pytest.raises(FileNotFoundError, match=r"model\.nonesuch\.safetensors"):
        CheckpointReader(checkpoint, variant="nonesuch", use_safetensors=True)
    (checkpoint / "pytorch_model.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin"):
        CheckpointReader(checkpoint, use_safetensors=False)


def test_key_mapping_renames_in_order_and_reads_the_stored_tensor(checkpoint):
    reader = CheckpointReader(checkpoint, key_mapping={r"^embed\.": "model.embed.", r"model\.": "base."})
    assert sorted(reader.keys()) == ["base.embed.weight", "head.bias"]
    assert reader.shape("base.embed.weight") == (3, 2)
    assert torch.equal(reader.get("base.embed.weight"), torch.zeros(3, 2))


def test_the_first_floating_tensor_gives_the_checkpoints_dtype(checkpoint):
    assert CheckpointReader(checkpoint).floating_dtype() == torch.float32
    save_file({"ids": torch.arange(3), "w": torch.ones(2, dtype=torch.bfloat16)}, str(checkpoint / "model.safetensors"),
              metadata={"format": "pt"})
    assert CheckpointReader(checkpoint).floating_dtype() == torch.bfloat16


@pytest.mark.parametrize("mismatched", [
    [("score.weight", torch.Size([2, 8]), torch.Size([4, 8]))],  # transformers 5.x
    ["score.weight"],  # 4.57: the key alone, its shapes kept out of the loading info
], ids=["with shapes", "key alone"])
def test_a_loading_report_is_read_in_every_release_format(mismatched):
    """G8's label options read the mismatched keys of every release's loading info (4.57's raised ValueError)."""
    from zero3_conformance.checks.gathered import initialized_keys, loading_report, report_differences

    info = {"missing_keys": [], "unexpected_keys": set(), "mismatched_keys": mismatched}
    assert loading_report(info)["mismatched_keys"][0].startswith("score.weight")
    assert report_differences(info, {**info, "mismatched_keys": []})[0].kind == "loading_report_differs"
    assert initialized_keys(info) == {"score.weight"}


def test_a_report_naming_keys_alone_agrees_with_one_adding_shapes():
    """4.57's report (keys alone) against the reference's (keys with shapes): the same keys agree, others do not."""
    from zero3_conformance.checks.gathered import report_differences

    alone = {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": ["score.weight"]}
    shaped = {**alone, "mismatched_keys": [("score.weight", torch.Size([2, 8]), torch.Size([4, 8]))]}
    assert report_differences(alone, shaped) == []
    assert report_differences(shaped, {**shaped, "mismatched_keys": [("score.weight", (2, 8), (5, 8))]})
    assert report_differences(alone, {**shaped, "mismatched_keys": [("score.bias", (2,), (4,))]})


@pytest.mark.parametrize(("baseline_error", "report", "why"), [
    ("", {"missing_keys": [], "unexpected_keys": []}, ""),
    ("ValueError: The state dictionary of the model you are trying to load is corrupted.",
     None, "it raises ValueError"),
    ("", {"missing_keys": [], "unexpected_keys": ["legacy.embed.weight"]}, "1 stored names reported unexpected"),
    # transformers 4.57 on a base model stored under a prefix: every renamed key reported missing
    ("", {"missing_keys": ["embed.weight", "head.bias"], "unexpected_keys": []}, "2 renamed names"),
    ("", {"missing_keys": ["not.in.the.file"], "unexpected_keys": []}, ""),
], ids=["applied", "raises", "unexpected", "missing", "missing but not stored"])
def test_key_mapping_is_judged_only_where_transformers_applies_it_without_zero(checkpoint, baseline_error, report,
                                                                               why):
    """G8's key_mapping compares ZeRO-3 with a load without ZeRO only where that load read the renamed names."""
    from safetensors.torch import save_file as save

    from zero3_conformance.checks.loading import LEGACY_PREFIX, Load, key_mapping_unapplied

    save({LEGACY_PREFIX + "embed.weight": torch.zeros(3, 2), LEGACY_PREFIX + "head.bias": torch.zeros(3)},
         str(checkpoint / "model.safetensors"), metadata={"format": "pt"})
    mapping = {r"^legacy\.": ""}
    load = Load("key_mapping", None, checkpoint, {"key_mapping": mapping}, expected=report,
                baseline_error=baseline_error, reader=CheckpointReader(checkpoint, key_mapping=mapping))
    unapplied = key_mapping_unapplied(load)
    assert unapplied.startswith(why)
    assert bool(unapplied) == bool(why)
