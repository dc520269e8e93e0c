"""The tolerance rule itself (powerattn.testing): the floor grows with the reduction length in
the accumulation precision, never with the output's 16-bit rounding; wrong answers fail."""

from __future__ import annotations

import math

import pytest
import torch

from powerattn import get_pattern, reference_attention
from powerattn.testing import (
    baseline_lse,
    check_close,
    mean_error,
    reduction_terms,
    rounding_floor,
    tolerance,
)


def test_floor_is_float32_accumulation_times_sqrt_terms():
    ref = torch.tensor([0.5, -4.0, 2.0], dtype=torch.float64)
    u32 = 2.0**-24
    assert rounding_floor(ref, torch.float32) == pytest.approx(4 * u32)
    # 16-bit outputs accumulate in float32 too: their own rounding is the baseline's business.
    assert rounding_floor(ref, torch.bfloat16, terms=100) == pytest.approx(10 * 4 * u32)
    assert rounding_floor(ref, torch.float64) == pytest.approx(4 * 2.0**-53)
    assert rounding_floor(torch.tensor([float("-inf"), 1.0]), torch.float32) == u32
    assert rounding_floor(ref, torch.float32, terms=0) == 0.0
    with pytest.raises(ValueError, match="terms"):
        rounding_floor(ref, torch.float32, terms=-1)


def test_tolerance_and_shapes():
    ref = torch.zeros(4, dtype=torch.float64)
    base = torch.full((4,), 1e-3)
    assert tolerance(ref, base, torch.float32, 3.0) == pytest.approx(3e-3)
    assert check_close(torch.full((4,), 2.9e-3), ref, base, 3.0)["ok"]
    assert not check_close(torch.full((4,), 3.1e-3), ref, base, 3.0)["ok"]
    with pytest.raises(ValueError, match="shapes differ"):
        check_close(torch.zeros(3), ref, base)


def test_mean_statistic():
    """``statistic="mean"``: one outlier among many values does not decide (max would)."""
    ref = torch.zeros(100, dtype=torch.float64)
    base = torch.full((100,), 1e-3)
    out = torch.zeros(100)
    out[0] = 0.15  # mean 1.5e-3 <= 2 x 1e-3; max 0.15 > 2 x 1e-3
    r = check_close(out, ref, base, 2.0, terms=0, statistic="mean")
    assert r["ok"] and r["err"] == pytest.approx(1.5e-3) and r["tol"] == pytest.approx(2e-3)
    assert not check_close(out, ref, base, 2.0, terms=0)["ok"]
    assert not check_close(out * 2, ref, base, 2.0, terms=0, statistic="mean")["ok"]
    assert mean_error(torch.tensor([float("-inf"), 1.0]), torch.tensor([float("-inf"), 0.0])) == 0.5
    with pytest.raises(ValueError, match="statistic"):
        check_close(out, ref, base, statistic="median")


def test_reduction_terms():
    q, k = torch.zeros(1, 8, 5, 4), torch.zeros(1, 2, 30, 4)
    assert reduction_terms(q, k) == {"out": 30, "lse": 30, "dq": 30, "dk": 50, "dv": 50}


def test_lse_baseline_accumulates_in_float32():
    """The lse baseline of 16-bit inputs: float32 scores of the rounded q, k (exact products),
    far closer to float64 than scores rounded to bf16 -- the yardstick a float32-accumulating
    kernel is held to."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, 64, 32, generator=g).bfloat16() for _ in range(2))
    p = get_pattern("power", block_size=8)
    _, exact = reference_attention(q, k, k, p, return_lse=True, upcast=True)
    _, in_bf16 = reference_attention(q, k, k, p, return_lse=True)
    base = baseline_lse(q, k, p)
    assert base.dtype == torch.float32
    err = (base.double() - exact).abs().max().item()
    assert err < 1e-5 < (in_bf16.double() - exact).abs().max().item()
    assert err <= 2 * math.sqrt(64) * 2.0**-24 * exact.abs().max().item()
