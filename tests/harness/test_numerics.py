"""The N checks' comparison can fail: fp32 elementwise, and low precision against the baseline's own error."""

from types import SimpleNamespace

import torch

from zero3_conformance.checks.numerics import _compare


def _case(dtype):
    findings = []
    return SimpleNamespace(dtype=dtype, rank=1, fail=findings.append), findings


def test_fp32_is_elementwise_against_the_baseline():
    case, findings = _case("fp32")
    baseline = {"w": torch.tensor([1.0, -2.0, 3.0])}
    _compare(case, "gradients", baseline, {"w": baseline["w"] * (1 + 1e-6)})
    assert findings == []
    _compare(case, "gradients", baseline, {"w": baseline["w"] + torch.tensor([0.0, 1e-3, 0.0])}, step=3)
    assert len(findings) == 1
    assert "gradients after step 3 (rank 1, fp32, rtol=1e-05, atol=1e-06)" in findings[0]
    assert "worst w" in findings[0] and "at (1,)" in findings[0]


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
    assert "expected: an fp32 computation" in findings[0] and "worst w" in findings[0] and "at (5, 7)" in findings[0]
    assert "allowed |diff|" in findings[0]


def test_bf16_averaging_allowance_is_added_and_a_missing_tensor_fails():
    exact = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    case, findings = _case("bf16")
    got = {"w": torch.tensor([1.0, 2.5])}
    _compare(case, "gradients", exact, got, reference=exact, extra={"w": torch.tensor([0.0, 0.5]), "b": torch.zeros(1)})
    assert len(findings) == 1 and "1/2 tensors" in findings[0] and "b: missing" in findings[0]
