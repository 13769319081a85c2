"""The clean structure a build is judged against, and the counts that say what a check compared."""

import torch

from zero3_conformance.checks.base import Findings
from zero3_conformance.checks.partition import _rounded
from zero3_conformance.structure import NoStructure, StructureOracle, differences, structure_of
from zero3_conformance.zoo import FAMILIES


class _Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.head = torch.nn.Linear(3, 5, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("table", torch.ones(2))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)


def test_a_structure_names_parameters_once_persistent_buffers_and_tied_groups():
    structure = structure_of(_Tied(), "cpu")
    assert structure.parameters == {"embed.weight": ((5, 3), "float32")}
    assert structure.buffers == {"table": ((2,), "float32")}  # a non-persistent buffer is in no state dict
    assert structure.tied == (("embed.weight", "head.weight"),)
    assert structure.state_dict_keys() == {"embed.weight", "head.weight", "table"}


def test_a_build_that_lacks_adds_or_reshapes_a_tensor_differs_both_ways():
    structure = structure_of(_Tied(), "cpu")
    assert differences(structure, _Tied(), "the build", dtypes=True, partitioned=False) == []
    empty = _Tied()
    for module in empty.modules():
        module._parameters.clear()
    (found,) = differences(structure, empty, "the build", dtypes=True, partitioned=False)
    assert found == "the build lacks 1 of the 1 parameters of _Tied's clean structure: embed.weight"
    grown = _Tied()
    grown.extra = torch.nn.Linear(1, 1)
    assert differences(structure, grown, "the build", dtypes=True, partitioned=False) == [
        "the build has 2 parameters _Tied's clean structure lacks: extra.bias, extra.weight"]
    half = _Tied().half()
    assert "the build: embed.weight is torch.float16, its clean structure float32" in differences(
        structure, half, "the build", dtypes=True, partitioned=False)


def test_a_partitioned_parameter_is_judged_by_its_full_shape():
    structure = structure_of(_Tied(), "cpu")
    model = _Tied()
    model.embed.weight.data = torch.empty(0)  # what ZeRO-3 leaves locally
    model.embed.weight.ds_shape = torch.Size([5, 3])
    assert differences(structure, model, "the build", dtypes=False, partitioned=True) == []
    assert differences(structure, model, "the build", dtypes=False, partitioned=False) == [
        "the build: embed.weight has shape (0,), its clean structure (5, 3)"]


def test_the_oracle_derives_each_class_once_in_a_process_of_its_own():
    oracle = StructureOracle()
    try:
        first = oracle.get(FAMILIES["gpt2"])
        assert not isinstance(first, NoStructure)
        assert (first.model_class, first.built_on) == ("GPT2LMHeadModel", "cpu")
        assert first.tied == (("transformer.wte.weight", "lm_head.weight"),)
        assert oracle.get(FAMILIES["gpt2"]) is first  # cached for the run
    finally:
        oracle.close()


class _Counted(Findings):
    rank = 0


def test_a_count_that_leaves_a_tensor_out_needs_a_reason():
    case = _Counted()
    case.count("tensors", ["a"], ["a", "b", "c"], {"b": "not in the checkpoint"})
    assert (case.compared, case.expected_to_compare) == ({"tensors": 1}, {"tensors": 3})
    assert case.metrics["not_compared"] == {"not in the checkpoint": ["b"]}
    assert case.findings == ["compared 1 of the 3 tensors expected (rank 0); not compared, for no stated reason: c"]


def test_a_value_beyond_half_precision_may_overflow_or_saturate():
    limit = torch.tensor(1e10)
    assert _rounded(limit, torch.float16, torch.tensor(65504.0, dtype=torch.float16)) == 65504.0
    assert torch.isinf(_rounded(limit, torch.float16, torch.tensor(float("inf"), dtype=torch.float16)))
    assert torch.isinf(_rounded(limit, torch.float16, torch.tensor(7.0, dtype=torch.float16)))  # neither: a finding
