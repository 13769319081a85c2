"""The N checks' comparison can fail: fp32 elementwise, and low precision against the baseline's own error."""

from types import SimpleNamespace

import pytest
import torch

from zero3_conformance.catalog import build_cases
from zero3_conformance.checks.numerics import _compare
from zero3_conformance.dsconfig import DEFAULT_ZERO3_CONFIG, with_dtype
from zero3_conformance.execution.checkpoints import write_checkpoints
from zero3_conformance.execution.runner import RANK_PRELOAD
from zero3_conformance.worlds.world import WorldPool
from zero3_conformance.zoo import ensure_checkpoint


def _case(dtype):
    findings = []

    def fail(message, kind, *fields):
        assert kind == "outside_tolerance"  # the kind a known issue matches these findings by
        findings.append(message)

    return SimpleNamespace(dtype=dtype, rank=1, fail=fail), findings


def test_fp32_is_elementwise_against_the_baseline():
    case, findings = _case("fp32")
    baseline = {"w": torch.tensor([1.0, -2.0, 3.0])}
    _compare(case, "gradients", baseline, {"w": baseline["w"] * (1 + 1e-6)})
    assert findings == []
    _compare(case, "gradients", baseline, {"w": baseline["w"] + torch.tensor([0.0, 1e-3, 0.0])}, step=3)
    assert len(findings) == 1
    assert "gradients after step 3 (rank 1, fp32, rtol=1e-05, atol=1e-06)" in findings[0]
    assert "worst w" in findings[0]
    assert "at (1,)" in findings[0]


def test_bf16_is_held_to_the_baselines_own_error_against_fp32():
    generator = torch.Generator().manual_seed(0)
    exact = {"w": torch.randn(64, 64, generator=generator) * 1e-2}
    baseline = {"w": exact["w"].bfloat16()}  # its own error: one bf16 rounding
    case, findings = _case("bf16")
    # Rounded the other way where it can be (another summation order): within twice the baseline's error.
    other_rounding = (exact["w"] * (1 + 2.0**-9)).bfloat16()
    _compare(case, "gradients", baseline, {"w": other_rounding}, reference=exact)
    assert findings == []
    # One element off by 3% of the tensor's largest value: far beyond anything bf16 rounding does.
    wrong = baseline["w"].float().clone()
    wrong[5, 7] += 0.03 * float(exact["w"].abs().max())
    _compare(case, "gradients", baseline, {"w": wrong}, reference=exact)
    assert len(findings) == 1
    assert "expected: an fp32 computation" in findings[0]
    assert "worst w" in findings[0]
    assert "at (5, 7)" in findings[0]
    assert "allowed |diff|" in findings[0]


def test_bf16_leaves_a_tensor_of_pure_rounding_noise_uncompared_and_says_why():
    # An attention key bias's gradient: zero in exact arithmetic, rounding noise of cancelling terms in bf16 on
    # both sides (the nllb-moe case: fp32 3.6e-11, the baseline's noise 7.2e-7, the engine's 1.48e-6).
    exact = {"k_bias": torch.tensor([3.6e-11, -1e-11]), "w": torch.tensor([0.5, -0.25])}
    baseline = {"k_bias": torch.tensor([7.2e-7, 0.0]), "w": exact["w"].clone()}
    case, findings = _case("bf16")
    uncompared = _compare(case, "gradients", baseline, {"k_bias": torch.tensor([1.48e-6, 0.0]), "w": exact["w"]},
                          reference=exact)
    assert findings == []
    assert list(uncompared) == ["k_bias"]
    assert "no significant digit in bf16" in uncompared["k_bias"]
    # A tensor with a significant digit is compared as before: a wrong value in it still fails.
    uncompared = _compare(case, "gradients", baseline, {"k_bias": torch.tensor([1.48e-6, 0.0]),
                                                        "w": torch.tensor([0.5, -0.3])}, reference=exact)
    assert len(findings) == 1
    assert "worst w" in findings[0]
    # An exactly computed zero is not noise: the ZeRO-3 side must give zero too.
    case, findings = _case("bf16")
    assert _compare(case, "gradients", {"z": torch.zeros(2)}, {"z": torch.tensor([0.0, 1e-6])},
                    reference={"z": torch.zeros(2)}) == {}
    assert len(findings) == 1


def test_bf16_averaging_allowance_is_added_and_a_missing_tensor_fails():
    exact = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    case, findings = _case("bf16")
    got = {"w": torch.tensor([1.0, 2.5])}
    _compare(case, "gradients", exact, got, reference=exact, extra={"w": torch.tensor([0.0, 0.5]), "b": torch.zeros(1)})
    assert len(findings) == 1
    assert "1/2 tensors" in findings[0]
    assert "b: missing" in findings[0]


def split_baseline_gradients_against_one_process(ctx, task):
    """Run in every rank: the baseline gradients the N checks use (each rank backpropagates its own batch, the
    ranks exchange them) against one process backpropagating every rank's batch in turn. Returns the names
    of parameters whose average or magnitude differs in any bit, or that one side lacks."""
    from zero3_conformance.checks.base import Case
    from zero3_conformance.checks.numerics import _baseline, _baseline_gradients, batch_for

    case = Case(ctx, task)
    baseline = _baseline(case)
    average, magnitude = _baseline_gradients(case, baseline, step=1)
    total, size = {}, {}
    for rank in range(ctx.world_size):
        baseline.zero_grad(set_to_none=True)
        baseline(**batch_for(case, 1, rank)).loss.backward()
        for name, param in baseline.named_parameters():
            if param.grad is not None:
                grad = param.grad.float()
                total[name] = total[name] + grad if name in total else grad
                size[name] = size[name] + grad.abs() if name in size else grad.abs()
    differing = sorted(set(total) ^ set(average))
    for name in set(total) & set(average):
        if not (torch.equal(total[name] / ctx.world_size, average[name])
                and torch.equal(size[name] / ctx.world_size, magnitude[name])):
            differing.append(name)
    return differing


@pytest.mark.slow
@pytest.mark.xdist_group("harness-numerics-world")
@pytest.mark.parametrize(("model", "dtype"), [("llama", "fp32"), ("mixtral", "bf16")])
def test_split_baseline_gradients_are_bit_for_bit_one_process(model, dtype):
    # mixtral: experts a rank's batch does not route to get no gradient on that rank only.
    case = next(c for c in build_cases(subjects=["reference"], models=[model], clauses=["N2"], world_sizes=[3])
                if c.dtype == dtype)
    write_checkpoints([case])
    pool = WorldPool("gloo", RANK_PRELOAD)
    try:
        outcome = pool.get(3).run(f"{__name__}:split_baseline_gradients_against_one_process",
                                  case.task(with_dtype(DEFAULT_ZERO3_CONFIG, dtype),
                                               str(ensure_checkpoint(case.family, case.layout))), 120)
    finally:
        pool.close()
    assert sorted(outcome.replies) == [0, 1, 2], outcome
    for rank, reply in outcome.replies.items():
        assert reply.ok, reply.traceback
        assert reply.value == [], f"rank {rank}: {reply.value}"


def test_fp32_allows_the_baselines_own_error_against_fp64_only_where_the_fixed_tolerance_fails():
    exact = {"w": torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)}
    baseline = {"w": torch.tensor([1.0, -2.0 + 4e-4, 3.0])}  # an ill-conditioned tensor: its own fp32 error 4e-4
    calls = []

    def in_fp64():
        calls.append(1)
        return exact

    case, findings = _case("fp32")
    case.world_size = 1
    _compare(case, "gradients", baseline, {"w": baseline["w"] * (1 + 1e-6)}, in_fp64=in_fp64)
    assert findings == []
    assert calls == []
    _compare(case, "gradients", baseline, {"w": baseline["w"] + torch.tensor([0.0, 5e-4, 0.0])}, in_fp64=in_fp64)
    assert findings == []
    assert calls == [1]
    _compare(case, "gradients", baseline, {"w": baseline["w"] + torch.tensor([0.0, 2e-3, 0.0])}, in_fp64=in_fp64)
    assert len(findings) == 1
    assert "the baseline's own fp32 max error against an fp64 computation" in findings[0]
    _compare(case, "gradients", baseline, {"w": baseline["w"] + torch.tensor([0.0, 5e-4, 0.0])}, in_fp64=lambda: None)
    assert len(findings) == 2
    assert "an fp64 computation to measure the baseline's own fp32 error raised" in findings[1]
