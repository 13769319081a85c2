"""G8's cross-load: where two keys of a head's checkpoint load onto one tensor of the base model (a head-level key
named like a base model's, beside the prefixed one), that tensor has no value to compare with: left out, said why."""

import torch

from zero3_conformance.checks.loading import _loading_onto_one


class _Base(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.layernorm = torch.nn.LayerNorm(4)
        self.dense = torch.nn.Linear(4, 4)


class _Head(torch.nn.Module):
    base_model_prefix = "pixio"

    def __init__(self, own_norm):
        super().__init__()
        self.pixio = _Base()
        if own_norm:
            self.layernorm = torch.nn.LayerNorm(4)  # PixioBackbone's own norm, named like the base model's
        self.classifier = torch.nn.Linear(4, 2)


def test_a_head_level_key_named_like_a_prefixed_one_makes_that_tensor_ambiguous():
    ambiguous = _loading_onto_one(_Head(own_norm=True))
    assert sorted(ambiguous) == ["layernorm.bias", "layernorm.weight"]
    assert "two keys of the checkpoint load onto it (pixio.NAME and NAME)" in ambiguous["layernorm.weight"]


def test_a_head_whose_keys_do_not_collide_leaves_everything_to_compare():
    assert _loading_onto_one(_Head(own_norm=False)) == {}
    assert _loading_onto_one(_Base()) == {}  # no base model prefix: nothing is stripped
