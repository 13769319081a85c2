"""Comparisons that say exactly what differs: which tensor, where, expected and observed."""

from __future__ import annotations

import math
from typing import Any

from ..finding_kinds import Found

# G3/G4 compare a ZeRO-built tensor's init with the baseline's init, which used other random draws.
# Sample mean and std of n draws wander by about std/sqrt(n); SIGMAS such wanderings are allowed,
# which keeps false alarms below one in a million per tensor while a wrong init (wrong std, a missing
# init left at zeros, torch.empty garbage) is off by far more.
SIGMAS = 6.0
# Values a deterministic init computes (equal across baseline seeds) must match to float32 rounding.
DETERMINISTIC_RTOL, DETERMINISTIC_ATOL = 1e-6, 1e-7


def identical(a: Any, b: Any) -> bool:
    """Equal element for element, NaN matching NaN in the same place (a bit-for-bit copy of a NaN is exact)."""
    import torch

    if a.is_floating_point() and b.is_floating_point():
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))
    return torch.equal(a, b)


def exact_mismatch(name: str, expected: Any, got: Any) -> Found | None:
    """None if `got` equals `expected` bit for bit (shape, dtype, values); else what differs."""

    if tuple(got.shape) != tuple(expected.shape):
        return Found(f"{name}: shape expected {tuple(expected.shape)}, got {tuple(got.shape)}", "shape_differs", name,
                     tuple(expected.shape), tuple(got.shape))
    if got.dtype != expected.dtype:
        return Found(f"{name}: dtype expected {expected.dtype}, got {got.dtype}", "dtype_differs", name,
                     expected.dtype, got.dtype)
    if identical(got, expected):
        return None
    difference = _first_difference(expected, got)
    return Found(f"{name}: {difference}", "values_differ", name, "equal bit for bit", difference)


def _first_difference(expected: Any, got: Any) -> str:
    import torch

    e, g = expected.detach().double().reshape(-1), got.detach().double().reshape(-1)
    differs = (e != g) & ~(torch.isnan(e) & torch.isnan(g))
    count = int(differs.sum())
    index = int(differs.nonzero()[0]) if count else 0
    position = _position(index, expected.shape)
    diff = (e - g).abs()
    return (f"{count}/{e.numel()} elements differ, max |diff| {float(diff[differs].max()) if count else 0:.3g}; "
            f"first at {position}: expected {float(e[index]):.9g}, got {float(g[index]):.9g}")


def _position(flat_index: int, shape: Any) -> tuple[int, ...]:
    import torch

    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), tuple(shape))) if len(shape) else ()


# Fewer random elements than this cannot be compared by their statistics: a scalar parameter drawn from a
# distribution has no spread to compare, and its value differs from the baseline's draw by construction.
MIN_STATISTICS = 16


def init_mismatch(name: str, baseline: Any, got: Any, deterministic: bool) -> Found | None:
    """None if `got` is initialized as the baseline's own init would have initialized it."""
    import torch

    if tuple(got.shape) != tuple(baseline.shape):
        return Found(f"{name}: shape expected {tuple(baseline.shape)}, got {tuple(got.shape)}", "shape_differs",
                     name, tuple(baseline.shape), tuple(got.shape))
    if got.dtype != baseline.dtype:
        return Found(f"{name}: dtype expected {baseline.dtype}, got {got.dtype}", "dtype_differs", name,
                     baseline.dtype, got.dtype)
    b, g = baseline.detach().double(), got.detach().double()
    unexpected = ~torch.isfinite(g) & (g != b)  # an init may set a bound to +-inf on purpose, as the baseline does
    if unexpected.any():
        return Found(f"{name}: {int(unexpected.sum())} non-finite values (uninitialized memory?)", "non_finite",
                     name, "finite values", f"{int(unexpected.sum())} non-finite")
    finite = torch.isfinite(b)
    if not finite.all():
        b, g = b[finite], g[finite]
    if deterministic:
        if torch.allclose(g, b, rtol=DETERMINISTIC_RTOL, atol=DETERMINISTIC_ATOL):
            return None
        difference = _first_difference(baseline, got)
        return Found(f"{name} (deterministic init): {difference}", "init_differs", name,
                     "the baseline's deterministic init", difference)
    for value in (0.0, 1.0):
        fixed = b == value
        if fixed.any() and not torch.equal(g[fixed], b[fixed]):
            wrong = int((g[fixed] != value).sum())
            return Found(f"{name}: {wrong} of the {int(fixed.sum())} elements the baseline sets to exactly {value:g} "
                         f"are not", "init_differs", name, f"{int(fixed.sum())} elements of {value:g}",
                         f"{wrong} not")
    free = ~((b == 0) | (b == 1))
    if not free.any():
        return None
    b, g = b[free], g[free]
    n = b.numel()
    if n < MIN_STATISTICS:  # a few random draws (e.g. a scalar gate) say nothing about the distribution they came from
        return None
    b_std = float(b.std()) if n > 1 else 0.0
    g_std = float(g.std()) if n > 1 else 0.0
    mean_tol = SIGMAS * b_std * math.sqrt(2.0 / n) + 1e-12
    std_tol = SIGMAS * b_std / math.sqrt(max(n - 1, 1)) + 1e-12
    if abs(float(g.mean()) - float(b.mean())) > mean_tol or abs(g_std - b_std) > std_tol:
        return Found(f"{name}: init statistics differ from the baseline's: mean {float(g.mean()):.4g} (baseline "
                     f"{float(b.mean()):.4g}, tolerance {mean_tol:.2g}), std {g_std:.4g} (baseline {b_std:.4g}, "
                     f"tolerance {std_tol:.2g}), n={n}", "init_differs", name,
                     f"mean {float(b.mean()):.4g}, std {b_std:.4g}", f"mean {float(g.mean()):.4g}, std {g_std:.4g}")
    return None


def full_parameters(model: Any) -> dict[str, Any]:
    """name -> a detached copy of every parameter and persistent buffer (call inside a gather)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def undefined(tensors: dict[str, Any]) -> list[str]:
    """Floating tensors holding NaN. Baselines are built with uninitialized memory filled with NaN
    (compat.uninitialized_memory_filled), so in a baseline these hold memory no init wrote: without ZeRO their
    values are undefined, and a ZeRO-3 model's cannot be compared with them."""
    import torch

    return sorted(k for k, t in tensors.items() if t.is_floating_point() and bool(torch.isnan(t).any()))


def closeness_problem(expected: dict[str, Any], got: dict[str, Any], rtol: float, atol: float,
                      extra: dict[str, Any] | None = None) -> Found | None:
    """None if every tensor is close (|got - expected| <= atol + rtol * |expected| + extra, elementwise, where
    `extra` optionally gives a tensor's own additional allowance); else how many are not and the worst of
    them: its name, max abs and rel difference, and where."""
    import torch

    worst: tuple[float, str] | None = None
    failing = []
    for name in sorted(expected):
        if name not in got:
            failing.append(name)
            worst = worst or (float("inf"), f"{name}: missing")
            continue
        e, g = expected[name].detach().double(), got[name].detach().double()
        if e.shape != g.shape:
            failing.append(name)
            worst = (float("inf"), f"{name}: shape expected {tuple(e.shape)}, got {tuple(g.shape)}")
            continue
        diff = (e - g).abs()
        allowed = atol + rtol * e.abs()
        if extra is not None and name in extra:
            allowed = allowed + extra[name].double()
        excess = diff / allowed  # > 1 where the tolerance is broken
        excess[torch.isnan(diff)] = float("inf")
        if e.numel() == 0 or not bool((excess > 1).any()):
            continue
        failing.append(name)
        index = int(excess.reshape(-1).argmax())
        score = float(excess.reshape(-1)[index])
        if worst is None or score > worst[0]:
            position = _position(index, e.shape)
            rel = diff / e.abs().clamp_min(1e-30)
            worst = (score, f"worst {name}: max |diff| {float(diff.max()):.3g}, max rel diff {float(rel.max()):.3g}; "
                            f"at {position} expected {float(e.reshape(-1)[index]):.9g}, got "
                            f"{float(g.reshape(-1)[index]):.9g}, allowed |diff| "
                            f"{float(allowed.expand_as(e).reshape(-1)[index]):.3g}")
    if not failing:
        return None
    return Found(f"{len(failing)}/{len(expected)} tensors outside tolerance ({', '.join(failing[:5])}"
                 f"{', ...' if len(failing) > 5 else ''}); {worst[1] if worst else ''}", "outside_tolerance",
                 ", ".join(failing[:20]), f"within rtol={rtol:g}, atol={atol:g}", worst[1] if worst else "")
