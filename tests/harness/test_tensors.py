import torch

from zero3_conformance.checks.tensors import closeness_problem, exact_mismatch, init_mismatch


def test_exact_mismatch_names_tensor_position_and_values():
    expected = torch.zeros(3, 4)
    got = expected.clone()
    got[1, 2] = 1e-3
    message = exact_mismatch("layer.weight", expected, got)
    assert "layer.weight" in message
    assert "(1, 2)" in message
    assert "expected 0" in message
    assert "got 0.001" in message
    assert exact_mismatch("w", expected, expected.clone()) is None
    assert "dtype" in exact_mismatch("w", expected, expected.double())


def test_init_statistics_accept_another_draw_and_reject_a_wrong_init():
    torch.manual_seed(0)
    baseline = torch.randn(128, 64) * 0.02
    assert init_mismatch("w", baseline, torch.randn(128, 64) * 0.02, deterministic=False) is None
    assert "std" in init_mismatch("w", baseline, torch.randn(128, 64) * 0.04, deterministic=False)
    assert init_mismatch("w", baseline, torch.zeros(128, 64), deterministic=False) is not None


def test_exact_zeros_and_ones_are_required_where_the_baseline_has_them():
    baseline = torch.randn(10, 8) * 0.02
    baseline[0] = 0.0  # a padding row
    got = torch.randn(10, 8) * 0.02
    assert "exactly 0" in init_mismatch("emb", baseline, got, deterministic=False)
    got[0] = 0.0
    assert init_mismatch("emb", baseline, got, deterministic=False) is None
    assert "exactly 1" in init_mismatch("ln", torch.ones(8), torch.full((8,), 0.5), deterministic=False)


def test_uninitialized_garbage_and_deterministic_values():
    assert "non-finite" in init_mismatch("w", torch.zeros(4), torch.tensor([0, float("nan"), 0, 0]), False)
    table = torch.arange(8.0) / 8
    assert init_mismatch("inv_freq", table, table.clone(), deterministic=True) is None
    assert "deterministic" in init_mismatch("inv_freq", table, table + 1e-3, deterministic=True)


def test_rank_agreement_digests_any_tensor():
    from zero3_conformance.checks.base import describe_value

    for tensor in (torch.tensor(-1e4, dtype=torch.bfloat16), torch.ones(2, 2, dtype=torch.bool), torch.zeros(0)):
        assert describe_value(tensor) == describe_value(tensor.clone())
    assert describe_value(torch.tensor(1.0)) != describe_value(torch.tensor(2.0))
    assert describe_value(torch.tensor(1.0)).startswith("tensor() torch.float32")


def test_nan_copied_bit_for_bit_is_identical():
    from zero3_conformance.checks.tensors import identical

    a = torch.tensor([1.0, float("nan"), 3.0])
    assert identical(a, a.clone())
    assert exact_mismatch("w", a, a.clone()) is None
    assert not identical(a, torch.tensor([1.0, 2.0, 3.0]))
    assert exact_mismatch("w", a, torch.tensor([1.0, 2.0, 3.0])) is not None


def test_closeness_names_the_worst_tensor_and_honours_an_elementwise_allowance():
    expected = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([2.0])}
    got = {"a": torch.tensor([1.0, 1e-3]), "b": torch.tensor([2.0])}
    problem = closeness_problem(expected, got, rtol=1e-5, atol=1e-6)
    assert problem is not None
    assert "1/2 tensors" in problem
    assert "worst a" in problem
    assert "(1,)" in problem
    # The allowance covers exactly the element that needs it, and no more.
    assert closeness_problem(expected, got, 1e-5, 1e-6, extra={"a": torch.tensor([0.0, 1e-3])}) is None
    assert closeness_problem(expected, got, 1e-5, 1e-6, extra={"a": torch.tensor([1e-3, 0.0])}) is not None


def test_a_bound_the_init_sets_to_infinity_is_not_uninitialized_memory():
    import torch

    from zero3_conformance.checks.tensors import init_mismatch

    baseline = torch.tensor([float("inf"), -float("inf"), 0.0, 1.0])
    assert init_mismatch("clip.input_max", baseline, baseline.clone(), deterministic=True) is None
    garbage = torch.tensor([float("inf"), -float("inf"), float("nan"), 1.0])
    assert "1 non-finite values" in init_mismatch("clip.input_max", baseline, garbage, deterministic=True)


def test_a_few_random_draws_are_not_judged_by_their_statistics_but_many_are():
    import torch

    from zero3_conformance.checks.tensors import MIN_STATISTICS, init_mismatch

    generator = torch.Generator().manual_seed(0)
    scalar_gate = torch.randn(1, generator=generator)  # e.g. a gate drawn once: its value differs by construction
    assert init_mismatch("gate_attn", scalar_gate, torch.randn(1, generator=generator), deterministic=False) is None
    many = torch.randn(MIN_STATISTICS * 64, generator=generator)
    assert "init statistics differ" in init_mismatch("w", many, 10 * many, deterministic=False)


def test_memory_no_init_writes_shows_in_a_baseline_as_undefined():
    import torch

    from zero3_conformance.checks.tensors import undefined
    from zero3_conformance.compat import uninitialized_memory_filled

    before = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    with uninitialized_memory_filled():
        layer = torch.nn.Linear(4, 3, device="meta").to_empty(device="cpu")  # how a loader materializes
        torch.nn.init.zeros_(layer.bias)
        counts = torch.empty(2, dtype=torch.int64)
    assert (torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory) == before
    assert undefined({"weight": layer.weight, "bias": layer.bias, "counts": counts}) == ["weight"]
