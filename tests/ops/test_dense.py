"""The dense backend (chunked over query rows) and the tolerance rule of powerattn.testing:
exact against the float64 oracle at any chunking, float64 computed in float64, gradients with
O(chunk x Sk) saved memory, no length cap; SDPA with the pattern's mask; the checker itself
rejects wrong answers."""

from __future__ import annotations

import pytest
import torch

from powerattn import get_pattern, pattern_names, reference_attention, sparse_attention
from powerattn.ops.dense import chunk_rows, dense_sparse_attention, sdpa_attention
from powerattn.patterns import PATTERNS
from powerattn.testing import (
    assert_close_to_reference,
    check_close,
    compare_attention,
    max_error,
    rounding_floor,
)


def _small(name: str, block_size: int = 4):
    return get_pattern(name, block_size=block_size, **PATTERNS[name].small_params)


def _qkv(B, Hq, Hkv, Sq, Sk, D, dtype=torch.float64, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)  # noqa: E731
    q, k, v = mk(B, Hq, Sq, D), mk(B, Hkv, Sk, D), mk(B, Hkv, Sk, D)
    return [t.requires_grad_(grad) for t in (q, k, v)]


@pytest.mark.parametrize("name", pattern_names())
@pytest.mark.parametrize("chunk_scores", [1, 1000, 1 << 24])
def test_chunked_equals_the_float64_oracle_with_gradients(name, chunk_scores):
    """float64 in, float64 out: the chunked path is the oracle to rounding (out, lse and the
    gradients of q, k, v through both), whatever the chunking."""
    p = _small(name)
    q, k, v = _qkv(2, 6, 2, 29, 41, 8, grad=True, seed=len(name))
    out, lse = dense_sparse_attention(q, k, v, p, 0.3, chunk_scores=chunk_scores)
    ref, ref_lse = reference_attention(q, k, v, p, 0.3, return_lse=True, upcast=True)
    assert out.dtype == lse.dtype == torch.float64
    assert max_error(out, ref) < 1e-12 and max_error(lse, ref_lse) < 1e-12
    g = torch.Generator().manual_seed(1)
    w_out, w_lse = torch.randn(out.shape, generator=g, dtype=torch.float64), torch.rand(lse.shape)
    keep = torch.isfinite(ref_lse)
    loss = lambda o, s: (o * w_out).sum() + (s[keep] * w_lse[keep]).sum()  # noqa: E731
    got = torch.autograd.grad(loss(out, lse), (q, k, v))
    want = torch.autograd.grad(loss(ref, ref_lse), (q, k, v))
    for a, b in zip(got, want, strict=True):
        assert max_error(a, b) < 1e-11


def test_float64_through_the_api_is_computed_in_float64():
    p = _small("power")
    q, k, v = _qkv(1, 4, 2, 33, 50, 16)
    for backend in ("auto", "dense"):
        out, lse = sparse_attention(q, k, v, p, return_lse=True, backend=backend)
        ref, ref_lse = reference_attention(q, k, v, p, return_lse=True, upcast=True)
        assert max_error(out, ref) < 1e-13 and max_error(lse, ref_lse) < 1e-13


def test_rows_without_keys_give_zero_and_minus_inf():
    p = get_pattern("longnet", block_size=4, segments=((4, 2),))  # odd blocks attend nothing
    q, k, v = _qkv(1, 2, 1, 24, 24, 8, grad=True)
    out, lse = dense_sparse_attention(q, k, v, p, 0.5, chunk_scores=20)
    empty = torch.tensor([(i // 4) % 2 == 1 for i in range(24)])
    assert (out[..., empty, :] == 0).all() and torch.isneginf(lse[..., empty]).all()
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_low_precision_within_the_tolerance_rule(dtype):
    """The dense backend in every dtype, chunked, against the rule (2x SDPA's error forward,
    3x for gradients, the lse 2x that of scores in the input precision)."""
    p = _small("stride_slash", 8)
    q, k, v = _qkv(2, 4, 2, 61, 90, 32, dtype=dtype, seed=3)

    def fn(a, b, c):
        return dense_sparse_attention(a, b, c, p, 32**-0.5, chunk_scores=4 * 90 * 9)

    report = compare_attention(fn, q, k, v, p)
    assert report["ok"], report
    assert set(report) == {"out", "lse", "dq", "dk", "dv", "ok"}


def test_backward_saves_no_score_matrix():
    """With a gradient to compute, nothing of size Sq x Sk is kept for the backward: each
    chunk is recomputed (the memory of a long CPU training step is O(chunk x Sk))."""
    B, H, S, D = 1, 2, 600, 8
    q, k, v = _qkv(B, H, H, S, S, D, dtype=torch.float32, grad=True)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    chunk = 40 * H * S
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out, _ = dense_sparse_attention(q, k, v, get_pattern("full", block_size=16), 0.3, chunk)
    assert chunk_rows(q, k, chunk) == 40
    assert max(sizes) < B * H * S * S // 4, max(sizes)  # a 600 x 600 matrix per head is not kept
    got = torch.autograd.grad(out.sum(), (q, k, v))
    ref = reference_attention(q, k, v, "full", 0.3, upcast=True)
    want = torch.autograd.grad(ref.sum(), (q, k, v))
    for a, b in zip(got, want, strict=True):
        assert max_error(a, b) < 1e-4


def test_no_length_cap_and_gradients_past_the_old_limit():
    """Meta tensors (no memory): 16385 tokens (past the old 2^28-score refusal) forward and
    backward through backend='dense' and 'auto' on the CPU path."""
    n = 16385
    q, k, v = (torch.randn(1, 1, n, 16, device="meta", requires_grad=True) for _ in range(3))
    for backend in ("dense", "auto"):
        out = sparse_attention(q, k, v, "power", backend=backend)
        assert out.shape == q.shape
        out.sum().backward()
        assert q.grad.shape == q.shape


@pytest.mark.parametrize("name", pattern_names())
def test_sdpa_attention_is_the_masked_attention(name):
    p = _small(name)
    q, k, v = _qkv(1, 4, 2, 21, 37, 8)
    out = sdpa_attention(q, k, v, p, 0.4)
    assert max_error(out, reference_attention(q, k, v, p, 0.4)) < 1e-12
    if name == "full":  # the causal kernel, Sq == Sk
        q2 = q[:, :, :5]
        k2, v2 = k[:, :, :5], v[:, :, :5]
        assert max_error(sdpa_attention(q2, k2, v2, p), reference_attention(q2, k2, v2, p)) < 1e-12


# --------------------------------------------------------------------- the rule itself
def test_the_rule_rejects_wrong_answers():
    p = _small("power")
    q, k, v = _qkv(1, 2, 2, 30, 30, 16, dtype=torch.bfloat16, seed=5)
    ok = compare_attention(lambda a, b, c: sparse_attention(a, b, c, p), q, k, v, p)
    assert ok["ok"], ok
    # A wrong scale, a dropped sink block, outputs 3% off: all caught.
    wrong = [
        lambda a, b, c: sparse_attention(a, b, c, p, scale=0.26),
        lambda a, b, c: sparse_attention(a, b, c, get_pattern(p, sink=0)),
        lambda a, b, c: sparse_attention(a, b, c, p) * 1.03,
    ]
    for fn in wrong:
        assert not compare_attention(fn, q, k, v, p, grads=False)["ok"]


def test_assert_close_to_reference_and_floor():
    ref = torch.tensor([1.0, -3.0, 2.0], dtype=torch.float64)
    base = ref.float() + 1e-6
    assert rounding_floor(ref, torch.float32) == pytest.approx(3 * 2**-24)
    assert_close_to_reference(ref.float() + 2e-6, ref, base)
    assert check_close(ref.float() + 2e-6, ref, base)["ok"]
    with pytest.raises(AssertionError, match="exceeds 2 x"):
        assert_close_to_reference(ref.float() + 3e-6, ref, base)
    with pytest.raises(AssertionError, match="dq"):
        assert_close_to_reference(ref.float() + 4e-6, ref, base, factor=3.0, name="dq")
    inf = torch.tensor([float("-inf"), 0.0])
    assert max_error(inf, inf) == 0.0
