"""Correctness against the float64 oracle, with the project's one tolerance rule.

The rule (flash-attention's): an implementation's error against the float64 reference may be
at most ``factor`` times the error of a same-precision baseline against that reference --
:data:`FORWARD_FACTOR` (2x) for outputs and the lse, :data:`GRADIENT_FACTOR` (3x) for
gradients -- plus a floor derived from the computation (:func:`rounding_floor`): the typical
rounding of a float32-accumulated sum of ``terms`` products (unit roundoff x sqrt(terms) x
the largest reference value; float64 for float64 inputs). The floor covers the accumulation
noise that a baseline may happen to avoid on its worst entry; the rounding of the result
into its dtype needs no floor, since a baseline in that dtype already carries it (no value
of the dtype is closer to the exact answer than its rounding).

The baselines: PyTorch's SDPA with the pattern's dense mask
(:func:`~powerattn.ops.dense.sdpa_attention`) for outputs and gradients; for the lse
(SDPA returns none), the float32 log-sum-exp of the scores of the input-precision q, k
(:func:`baseline_lse`: what a kernel accumulating in float32 gets).

Tests, the experiments' backend checks and the benchmarks' checks all call this module:

>>> report = compare_attention(my_attention, q, k, v, pattern)   # doctest: +SKIP
>>> assert report["ok"], report

Tolerances are never widened to make a check pass: a failure is a bug to find.
"""

from __future__ import annotations

import math
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


def mean_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference, in float64 (``-inf == -inf`` counts as equal): the
    statistic of a check over many independent values (e.g. per-token losses), where one
    outlier should not decide."""
    a, b = a.detach().double(), b.detach().double()
    same_inf = torch.isinf(a) & (a == b)
    return float((a - b).masked_fill(same_inf, 0).abs().mean()) if a.numel() else 0.0


ERRORS: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "max": max_error,
    "mean": mean_error,
}


def _error_fn(statistic: str) -> Callable[[torch.Tensor, torch.Tensor], float]:
    if statistic not in ERRORS:
        raise ValueError(f"statistic must be one of {sorted(ERRORS)}, got {statistic!r}")
    return ERRORS[statistic]


def rounding_floor(ref: torch.Tensor, dtype: torch.dtype, terms: int = 1) -> float:
    """The floor of the tolerance: unit roundoff of the accumulation (float32, or float64
    for float64 ``dtype``) x ``sqrt(terms)`` x the reference's largest finite magnitude --
    the typical rounding of a sum of ``terms`` products (e.g. ``Sk`` for an attention
    output), which a baseline summing in another order may happen to avoid. ``terms=0``: no
    floor (e.g. a whole model's outputs, where the baseline runs the same computation)."""
    if terms < 0:
        raise ValueError(f"terms must be >= 0, got {terms}")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    finite = ref.detach()[torch.isfinite(ref.detach())]
    top = float(finite.abs().max()) if finite.numel() else 0.0
    return torch.finfo(acc).eps / 2 * math.sqrt(terms) * top


def tolerance(
    ref: torch.Tensor,
    baseline: torch.Tensor,
    dtype: torch.dtype,
    factor: float,
    terms: int = 1,
    statistic: str = "max",
) -> float:
    """``factor x |baseline - ref| + rounding_floor(ref, dtype, terms)``, the difference
    measured by ``statistic`` (``"max"``, or ``"mean"``: :func:`mean_error`)."""
    err = _error_fn(statistic)(baseline, ref)
    return factor * err + rounding_floor(ref, dtype, terms)


def check_close(
    out: torch.Tensor,
    ref: torch.Tensor,
    baseline: torch.Tensor,
    factor: float = FORWARD_FACTOR,
    terms: int = 1,
    statistic: str = "max",
) -> dict[str, Any]:
    """``{"err", "baseline_err", "tol", "ok"}`` for ``out`` against the float64 ``ref``, with
    the tolerance of the same-precision ``baseline`` (all tensors of one shape; ``terms``:
    the length of the reduction behind each entry, for the floor; ``statistic``: how the
    differences are summed up, ``"max"`` (default) or ``"mean"`` absolute)."""
    if out.shape != ref.shape or baseline.shape != ref.shape:
        raise ValueError(
            f"shapes differ: out {tuple(out.shape)}, ref {tuple(ref.shape)}, "
            f"baseline {tuple(baseline.shape)}"
        )
    error = _error_fn(statistic)
    err = error(out, ref)
    tol = tolerance(ref, baseline, out.dtype, factor, terms, statistic)
    base = error(baseline, ref)
    return {"err": err, "baseline_err": base, "tol": tol, "ok": bool(err <= tol)}


def assert_close_to_reference(
    out: torch.Tensor,
    ref: torch.Tensor,
    baseline: torch.Tensor,
    factor: float = FORWARD_FACTOR,
    name: str = "output",
    terms: int = 1,
) -> None:
    """Raise ``AssertionError`` (with the numbers) unless ``out`` is within ``factor`` times
    the baseline's error of the float64 ``ref`` (plus the floor of ``terms``)."""
    r = check_close(out, ref, baseline, factor, terms)
    if not r["ok"]:
        raise AssertionError(
            f"{name}: error {r['err']:.3g} against the float64 reference exceeds "
            f"{factor:g} x the same-precision baseline's {r['baseline_err']:.3g} + the "
            f"rounding floor (tolerance {r['tol']:.3g})"
        )


def baseline_lse(
    q: torch.Tensor, k: torch.Tensor, pattern: Pattern | str, scale: float | None = None
) -> torch.Tensor:
    """The lse baseline ``(B, Hq, Sq)`` float32: the masked scores of the input-precision
    ``q, k`` computed and reduced in float32 (float64 for float64 inputs), as a kernel that
    accumulates in float32 computes them."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k = q.detach().to(acc), k.detach().to(acc)
    _, lse = reference_attention(q, k, k.new_zeros(k.shape), pattern, scale, return_lse=True)
    return lse


def reduction_terms(q: torch.Tensor, k: torch.Tensor) -> dict[str, int]:
    """The length of the sums behind each entry of an attention's results: the ``Sk`` keys
    of the softmax for the output, the lse and dq; for dk and dv, those of the softmax plus the
    ``Sq x (Hq // Hkv)`` query rows summed over (rounding of chained sums adds in quadrature)."""
    sq, sk = q.shape[-2], k.shape[-2]
    rows = sq * (q.shape[1] // k.shape[1])
    return {"out": sk, "lse": sk, "dq": sk, "dk": sk + rows, "dv": sk + rows}


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
        fn: the attention to check, taking fresh leaf copies of ``q, k, v`` (in their dtype
            and on their device).
        q, k, v: ``(B, Hq, Sq, D)``, ``(B, Hkv, Sk, D)`` inputs (their values are used).
        pattern, scale: what ``fn`` computes (``scale=None``: ``1 / sqrt(D)``).
        grads: also compare ``dq, dk, dv`` for the upstream gradient ``dout`` (default: a
            standard normal drawn on the CPU with ``seed``).

    Returns:
        ``{"out": {...}, ["lse": {...}], ["dq", "dk", "dv": {...}], "ok": bool}``, each entry
        as :func:`check_close` gives it.

    Every query row must attend some key: SDPA, the baseline, gives NaN on a row without
    one (compare such patterns with :func:`reference_attention` directly).
    """
    pattern = get_pattern(pattern)
    dtype = q.dtype
    terms = reduction_terms(q, k)

    def leaves(dt: torch.dtype) -> list[torch.Tensor]:
        return [t.detach().to(dt).requires_grad_(grads) for t in (q, k, v)]

    xs, xs64, xsb = leaves(dtype), leaves(torch.float64), leaves(dtype)
    res = fn(*xs)
    out, lse = res if isinstance(res, tuple) else (res, None)
    ref, ref_lse = reference_attention(*xs64, pattern, scale, return_lse=True, upcast=True)
    base = sdpa_attention(*xsb, pattern, scale)
    report: dict[str, Any] = {"out": check_close(out, ref, base, FORWARD_FACTOR, terms["out"])}
    if lse is not None:
        bl = baseline_lse(q, k, pattern, scale)
        report["lse"] = check_close(lse, ref_lse, bl, FORWARD_FACTOR, terms["lse"])
    if grads:
        if dout is None:
            gen = torch.Generator().manual_seed(seed)
            dout = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
        dout = dout.to(ref.device, torch.float64)
        g_out = torch.autograd.grad(out, xs, dout.to(dtype))
        g_ref = torch.autograd.grad(ref, xs64, dout)
        g_base = torch.autograd.grad(base, xsb, dout.to(dtype))
        for name, a, r, b in zip(("dq", "dk", "dv"), g_out, g_ref, g_base, strict=True):
            report[name] = check_close(a, r, b, GRADIENT_FACTOR, terms[name])
    report["ok"] = all(v["ok"] for v in report.values() if isinstance(v, dict))
    return report
