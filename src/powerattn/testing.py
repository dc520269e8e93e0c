"""Correctness against the float64 oracle, with the project's one tolerance rule.

The rule (flash-attention's): an implementation's error against the float64 reference may be
at most ``factor`` times the error of a same-precision dense baseline against that reference
-- :data:`FORWARD_FACTOR` (2x) for outputs and the lse, :data:`GRADIENT_FACTOR` (3x) for
gradients -- plus a floor derived from the dtype: the rounding of the reference itself into
the compared dtype (unit roundoff x the largest reference value), which no implementation
can beat. The baseline is PyTorch's SDPA with the pattern's dense mask
(:func:`~powerattn.ops.dense.sdpa_attention`) for outputs and gradients, and the lse of the
scores computed in the input precision for the lse (SDPA returns none).

Tests, the experiments' backend checks and the benchmarks' checks all call this module:

>>> report = compare_attention(my_attention, q, k, v, pattern)   # doctest: +SKIP
>>> assert report["ok"], report

Tolerances are never widened to make a check pass: a failure is a bug to find.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .ops.dense import sdpa_attention
from .ops.reference import reference_attention
from .patterns import Pattern, get_pattern

FORWARD_FACTOR = 2.0
GRADIENT_FACTOR = 3.0


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference, in float64 (``-inf == -inf`` counts as equal)."""
    a, b = a.detach().double(), b.detach().double()
    same_inf = torch.isinf(a) & (a == b)
    return float((a - b).masked_fill(same_inf, 0).abs().max()) if a.numel() else 0.0


def rounding_floor(ref: torch.Tensor, dtype: torch.dtype) -> float:
    """Half an ulp of ``dtype`` at the reference's largest finite magnitude: the error of
    merely rounding the exact answer into ``dtype``."""
    finite = ref.detach()[torch.isfinite(ref.detach())]
    top = float(finite.abs().max()) if finite.numel() else 0.0
    return torch.finfo(dtype).eps / 2 * top


def tolerance(
    ref: torch.Tensor, baseline: torch.Tensor, dtype: torch.dtype, factor: float
) -> float:
    """``factor x |baseline - ref| + rounding_floor(ref, dtype)``."""
    return factor * max_error(baseline, ref) + rounding_floor(ref, dtype)


def check_close(
    out: torch.Tensor,
    ref: torch.Tensor,
    baseline: torch.Tensor,
    factor: float = FORWARD_FACTOR,
) -> dict[str, Any]:
    """``{"err", "baseline_err", "tol", "ok"}`` for ``out`` against the float64 ``ref``, with
    the tolerance of the same-precision ``baseline`` (all tensors of one shape)."""
    err = max_error(out, ref)
    tol = tolerance(ref, baseline, out.dtype, factor)
    base = max_error(baseline, ref)
    return {"err": err, "baseline_err": base, "tol": tol, "ok": bool(err <= tol)}


def assert_close_to_reference(
    out: torch.Tensor,
    ref: torch.Tensor,
    baseline: torch.Tensor,
    factor: float = FORWARD_FACTOR,
    name: str = "output",
) -> None:
    """Raise ``AssertionError`` (with the numbers) unless ``out`` is within ``factor`` times
    the baseline's error of the float64 ``ref`` (plus the rounding floor)."""
    r = check_close(out, ref, baseline, factor)
    if not r["ok"]:
        raise AssertionError(
            f"{name}: error {r['err']:.3g} against the float64 reference exceeds "
            f"{factor:g} x the same-precision baseline's {r['baseline_err']:.3g} + the "
            f"rounding floor (tolerance {r['tol']:.3g})"
        )


def baseline_lse(
    q: torch.Tensor, k: torch.Tensor, pattern: Pattern | str, scale: float | None = None
) -> torch.Tensor:
    """The lse of the masked scores computed in the input precision (float32 result)."""
    v = k.new_zeros(k.shape)
    _, lse = reference_attention(q.detach(), k.detach(), v, pattern, scale, return_lse=True)
    return lse


def compare_attention(
    fn: Callable[..., Any],
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | str,
    *,
    scale: float | None = None,
    grads: bool = True,
    dout: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run ``fn(q, k, v)`` (an output, or ``(output, lse)``) and check it and, with ``grads``,
    the gradients of q, k, v against the float64 reference, under the tolerance rule.

    Args:
        fn: the attention to check, taking fresh leaf copies of ``q, k, v`` (in their dtype).
        q, k, v: ``(B, Hq, Sq, D)``, ``(B, Hkv, Sk, D)`` inputs (their values are used).
        pattern, scale: what ``fn`` computes (``scale=None``: ``1 / sqrt(D)``).
        grads: also compare ``dq, dk, dv`` for the upstream gradient ``dout`` (default: a
            standard normal drawn with ``seed``).

    Returns:
        ``{"out": {...}, ["lse": {...}], ["dq", "dk", "dv": {...}], "ok": bool}``, each entry
        as :func:`check_close` gives it.

    Every query row must attend some key: SDPA, the baseline, gives NaN on a row without
    one (compare such patterns with :func:`reference_attention` directly).
    """
    pattern = get_pattern(pattern)
    dtype = q.dtype

    def leaves(dt: torch.dtype) -> list[torch.Tensor]:
        return [t.detach().to(dt).requires_grad_(grads) for t in (q, k, v)]

    xs, xs64, xsb = leaves(dtype), leaves(torch.float64), leaves(dtype)
    res = fn(*xs)
    out, lse = res if isinstance(res, tuple) else (res, None)
    ref, ref_lse = reference_attention(*xs64, pattern, scale, return_lse=True, upcast=True)
    base = sdpa_attention(*xsb, pattern, scale)
    report: dict[str, Any] = {"out": check_close(out, ref, base, FORWARD_FACTOR)}
    if lse is not None:
        report["lse"] = check_close(lse, ref_lse, baseline_lse(q, k, pattern, scale))
    if grads:
        if dout is None:
            gen = torch.Generator().manual_seed(seed)
            dout = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        dout = dout.to(ref.device)
        g_out = torch.autograd.grad(out, xs, dout.to(dtype))
        g_ref = torch.autograd.grad(ref, xs64, dout)
        g_base = torch.autograd.grad(base, xsb, dout.to(dtype))
        for name, a, r, b in zip(("dq", "dk", "dv"), g_out, g_ref, g_base, strict=True):
            report[name] = check_close(a, r, b, GRADIENT_FACTOR)
    report["ok"] = all(v["ok"] for v in report.values() if isinstance(v, dict))
    return report
