"""Correctness of ``sparse_attention`` / ``power_attention`` against the float64 reference.

Tolerance: the project's rule, :mod:`powerattn.testing` (the operator's error against the
float64 reference at most 2x (forward, lse) / 3x (gradients) that of a same-precision
baseline, plus a floor derived from the reduction length). Runs on CUDA when present
(FlexAttention + the Triton decode kernel, via ``backend="auto"``), otherwise on the CPU
(dense backend; FlexAttention's compiled CPU kernel in a few forward-only cases; the decode
kernel in test_decode.py).
"""

from __future__ import annotations

import zlib

import pytest
import torch
from tile_lists import tile_layout, tile_masks

from powerattn import get_pattern, pattern_names, power_attention, reference_attention
from powerattn.ops import api, flex
from powerattn.ops.dense import sdpa_attention
from powerattn.patterns import PATTERNS
from powerattn.testing import assert_close_to_reference, compare_attention, reduction_terms

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# A few pattern blocks, Sk not a multiple of the block size. On CUDA the blocks are 128
# tokens (FlexAttention's tile), on the CPU 16 (the dense path does not care).
BLOCK = 128 if DEVICE == "cuda" else 16
SK = 5 * BLOCK + BLOCK // 2 + 11
# Each (dtype, head layout) costs FlexAttention one compile on CUDA (tens of seconds): there
# the GQA x dtype grid is a Latin square; the CPU runs all of it.
CUDA_GQA_DTYPES = {(1, torch.float32), (4, torch.bfloat16), (7, torch.float16)}


def _pattern(name: str, block_size: int = BLOCK):
    # Each pattern's small long-range parameters: it differs from full inside a few blocks.
    return get_pattern(name, block_size=block_size, **PATTERNS[name].small_params)


def _inputs(B, Hq, Hkv, Sq, Sk, D, dtype, grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype).requires_grad_(grad)  # noqa: E731
    return mk(B, Hq, Sq, D), mk(B, Hkv, Sk, D), mk(B, Hkv, Sk, D)


def _poison_allocator():
    """Fill freed CUDA memory with NaN, so an output the backend allocates but does not fully
    write shows NaN (the caching allocator hands the same blocks out again)."""
    if DEVICE == "cuda":
        junk = torch.full((1 << 26,), float("nan"), device=DEVICE)
        del junk


def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


def _checked(pattern, dtype, **kw):
    """``sparse_attention(..., return_lse=True)`` on a NaN-poisoned allocator (poisoned again
    when the backward starts), with its output contract (dtypes, shapes, finite values)
    asserted, for :func:`compare_attention` (a gradient left unwritten shows as NaN there)."""

    def fn(q, k, v):
        _poison_allocator()
        out, lse = api.sparse_attention(q, k, v, pattern, return_lse=True, **kw)
        assert out.dtype == dtype and out.shape == q.shape
        assert lse.dtype == torch.float32 and lse.shape == q.shape[:3]
        assert torch.isfinite(out).all()
        if out.requires_grad:
            out.register_hook(lambda grad: _poison_allocator())
        return out, lse

    return fn


def _assert_ok(report):
    bad = {k: v for k, v in report.items() if isinstance(v, dict) and not v["ok"]}
    assert report["ok"], f"outside the tolerance rule: {bad}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("sq", [1, 17, SK], ids=lambda s: f"sq{s}")
@pytest.mark.parametrize("gqa", [1, 4, 7], ids=lambda g: f"gqa{g}")
@pytest.mark.parametrize("name", pattern_names())
def test_matches_reference(name, gqa, sq, dtype):
    if DEVICE == "cuda" and (gqa, dtype) not in CUDA_GQA_DTYPES:
        pytest.skip("CUDA runs a Latin square of GQA x dtype (compile time)")
    pattern = _pattern(name)
    Hkv = 2
    seed = zlib.crc32(f"{name}{gqa}{sq}".encode())
    q, k, v = _inputs(2, Hkv * gqa, Hkv, sq, SK, 64, dtype, grad=False, seed=seed)
    fn = _checked(pattern, dtype)
    if sq <= api.DECODE_MAX_Q:  # no grad: the decode kernel on CUDA
        _assert_ok(compare_attention(fn, q, k, v, pattern, grads=False))
    # Forward + backward (flex on CUDA, dense on CPU); the gradients' finiteness too.
    report = compare_attention(fn, q, k, v, pattern, seed=seed)
    _assert_ok(report)
    assert set(report) == {"out", "lse", "dq", "dk", "dv", "ok"}


@pytest.mark.parametrize("bs", [16, 32, 64, 128, 256])
def test_block_sizes_and_offsets(bs):
    """Pattern blocks larger and smaller than the tile; Sk - Sq not a multiple of anything."""
    pattern = _pattern("power", bs)
    for sq, sk in [(1, 3 * bs + 5), (bs + 3, 4 * bs + 7), (5 * bs + 1, 5 * bs + 1)]:
        q, k, v = _inputs(1, 2, 2, sq, sk, 64, torch.float32, grad=False, seed=bs + sq)
        fn = _checked(pattern, torch.float32)
        _assert_ok(compare_attention(fn, q, k, v, pattern, grads=False))


def test_head_dim_128_and_batch():
    pattern = _pattern("power")
    q, k, v = _inputs(3, 8, 2, 40, 150, 128, torch.bfloat16, grad=False, seed=7)
    ref = reference_attention(q, k, v, pattern, upcast=True)
    base = sdpa_attention(q, k, v, pattern)
    out = power_attention(q, k, v, block_size=BLOCK, window=2, sink=1)
    assert_close_to_reference(out, ref, base, terms=reduction_terms(q, k)["out"])


def test_power_attention_is_power_pattern():
    q, k, v = _inputs(1, 2, 1, 9, 100, 64, torch.float32, grad=False, seed=3)
    a = power_attention(q, k, v, block_size=16, window=3, sink=2, scale=0.2)
    b = api.sparse_attention(
        q, k, v, get_pattern("power", block_size=16, window=3, sink=2), scale=0.2
    )
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_scale_is_applied():
    pattern = _pattern("power")
    q, k, v = _inputs(1, 2, 2, 5, 50, 64, torch.float32, grad=False, seed=4)
    out = api.sparse_attention(q, k, v, pattern, scale=0.05)
    ref = reference_attention(q, k, v, pattern, scale=0.05, upcast=True)
    assert _err(out, ref) < 1e-5
    assert _err(api.sparse_attention(q, k, v, pattern), ref) > 1e-3  # default 1/sqrt(D) differs


# ----------------------------------------------------------------------------- layout


@pytest.mark.parametrize("name", pattern_names())
@pytest.mark.parametrize("bs", [16, 32, 64, 128, 256])
def test_tile_layout_is_exact(name, bs):
    """Tile lists: every attended pair is in a listed tile, no unattended tile is listed,
    'full' tiles are exactly the fully attended ones, and the query side is the transpose."""
    pattern = _pattern(name, bs)
    for sq, sk, tile in [(1, 999, 128), (17, 1000, 64), (300, 1111, 128), (1000, 1000, 128)]:
        lay = tile_layout(pattern, sq, sk, tile, tile)
        computed, full = tile_masks(lay)
        nq, nk = lay.num_q_tiles, lay.num_kv_tiles
        dense = torch.zeros(nq * tile, nk * tile, dtype=torch.bool)
        dense[:sq, :sk] = pattern.dense_mask(sq, sk)
        valid = torch.zeros_like(dense)
        valid[:sq, :sk] = True
        tiles = dense.view(nq, tile, nk, tile)
        any_t = tiles.any(3).any(1).numpy()
        all_t = (tiles | ~valid.view(nq, tile, nk, tile)).all(3).all(1).numpy()
        assert (computed == any_t).all()
        assert (full == all_t).all()
        qt = torch.zeros(nk, nq, dtype=torch.bool)
        qf = torch.zeros(nk, nq, dtype=torch.bool)
        for j in range(nk):
            qt[j, lay.q_idx[j, : lay.q_count[j]]] = True
            qf[j, lay.full_q_idx[j, : lay.full_q_count[j]]] = True
        assert ((qt | qf).T.numpy() == computed).all()
        assert (qf.T.numpy() == full).all()


@pytest.mark.parametrize("sq, sk", [(17, 1000), (1000, 1000), (300, 1111)])
def test_block_mask_holds_the_layout(sq, sk):
    """The BlockMask tensors (filled by a scatter on the device) are the full-width tile lists
    of tile_layout, on both sides."""
    pattern = _pattern("stride_slash", 64)
    bm = flex.block_mask_for(pattern, sq, sk, "cpu")
    lay = tile_layout(pattern, sq, sk, full_width=True)
    got = [bm.kv_num_blocks, bm.kv_indices, bm.full_kv_num_blocks, bm.full_kv_indices]
    got += [bm.q_num_blocks, bm.q_indices, bm.full_q_num_blocks, bm.full_q_indices]
    want = [lay.kv_count, lay.kv_idx, lay.full_kv_count, lay.full_kv_idx]
    want += [lay.q_count, lay.q_idx, lay.full_q_count, lay.full_q_idx]
    for g, w in zip(got, want, strict=True):
        assert torch.equal(g[0, 0], torch.from_numpy(w))


def test_block_mask_is_cached_and_sized():
    pattern = _pattern("power")
    a = flex.block_mask_for(pattern, 17, 500, "cpu")
    assert flex.block_mask_for(pattern, 17, 500, "cpu") is a
    assert a.seq_lengths == (17, 500)
    assert flex.block_mask_for(pattern, 17, 501, "cpu") is not a


# ----------------------------------------------------------------------------- bad input


def _qkv(*shapes, dtype=torch.float32, device="cpu"):
    return [torch.randn(*s, dtype=dtype, device=device) for s in shapes]


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((2, 4, 8), (1, 2, 8, 16), (1, 2, 8, 16)), "q must have 4 dimensions"),
        (((1, 4, 8, 16), (1, 2, 8, 16), (1, 2, 9, 16)), "same shape"),
        (((1, 3, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), "multiple of key/value heads"),
        (((1, 4, 9, 16), (1, 2, 8, 16), (1, 2, 8, 16)), r"Sq \(9\) > Sk \(8\)"),
        (((2, 4, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), "batch sizes differ"),
        (((1, 4, 8, 32), (1, 2, 8, 16), (1, 2, 8, 16)), "head dims differ"),
    ],
)
def test_bad_shapes(shapes, match):
    with pytest.raises(ValueError, match=match):
        api.sparse_attention(*_qkv(*shapes), "power")


def test_bad_dtype_device_backend_pattern():
    q, k, v = _qkv((1, 2, 4, 16), (1, 2, 4, 16), (1, 2, 4, 16))
    with pytest.raises(ValueError, match="share a dtype"):
        api.sparse_attention(q, k.half(), v, "power")
    with pytest.raises(ValueError, match="dtype"):
        api.sparse_attention(q.int(), k.int(), v.int(), "power")
    with pytest.raises(ValueError, match="one device"):
        api.sparse_attention(q, k.to("meta"), v, "power")
    with pytest.raises(ValueError, match="backend must be one of"):
        api.sparse_attention(q, k, v, "power", backend="triton")
    with pytest.raises(ValueError, match="unknown pattern"):
        api.sparse_attention(q, k, v, "powerr")
    with pytest.raises(ValueError, match="float64"):
        api.sparse_attention(q.double(), k.double(), v.double(), "power", backend="flex")
    with pytest.raises(ValueError, match="block_size"):
        power_attention(q, k, v, block_size=0)


def test_explicit_backend_that_cannot_serve_raises():
    q, k, v = _qkv((1, 2, 17, 16), (1, 2, 40, 16), (1, 2, 40, 16))
    with pytest.raises(ValueError, match="Sq <= 16"):
        api.sparse_attention(q, k, v, "power", backend="decode")
    q1 = q[:, :, :1].clone().requires_grad_()
    with pytest.raises(ValueError, match="no backward"):
        api.sparse_attention(q1, k, v, "power", backend="decode")
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="runs on CUDA"):
            api.sparse_attention(q[:, :, :1], k, v, "power", backend="decode")
        with pytest.raises(ValueError, match="no backward on cpu"):
            api.sparse_attention(q1, k, v, "power", backend="flex")
        with pytest.raises(ValueError, match="lse on the CPU"):
            api.sparse_attention(q, k, v, "power", backend="flex", return_lse=True)


def test_dense_serves_any_length():
    # Meta tensors: past the old 2^28-score refusal, dense runs (chunked), nothing allocated.
    n = (1 << 14) + 1
    q, k, v = _qkv((1, 1, n, 16), (1, 1, n, 16), (1, 1, n, 16), device="meta")
    assert api.sparse_attention(q, k, v, "power", backend="dense").shape == q.shape


def test_auto_picks():
    q, k, v = _qkv((1, 2, 4, 16), (1, 2, 40, 16), (1, 2, 40, 16))
    assert api._pick_backend(q, k, v, _pattern("power"), return_lse=False) == "dense"
    n = 1 << 13  # B*Hq*Sq*Sk = 2^27 > CPU_DENSE_AUTO_MAX
    big = _qkv((1, 2, n, 16), (1, 2, n, 16), (1, 2, n, 16), device="meta")
    assert api._pick_backend(*big, _pattern("power"), return_lse=False) == "flex"
    assert (
        api._pick_backend(*big, _pattern("power"), return_lse=True) == "dense"
    )  # CPU flex has no lse
    assert (
        api._pick_backend(*[t.double() for t in big], _pattern("power"), return_lse=False)
        == "dense"
    )


# ----------------------------------------------------------------------------- compile


def test_inside_torch_compile_fullgraph():
    """The dense path (CPU) traces without graph breaks; aot_eager keeps CI fast."""
    pattern = _pattern("power")

    def layer(q, k, v):
        return api.sparse_attention(q, k, v, pattern, backend="dense") * 2

    q, k, v = _inputs(1, 4, 2, 33, 33, 64, torch.float32, grad=False, seed=11)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    ref = reference_attention(q, k, v, pattern, upcast=True) * 2
    assert _err(compiled(q, k, v), ref) < 1e-5


@pytest.mark.parametrize("backend", ["dense", "flex", "auto"])
def test_under_autocast_inputs_take_autocasts_dtype_like_sdpa(backend):
    """A Hugging Face layer under autocast hands over q, k in float32 (RoPE's float32
    cos/sin) and v in bfloat16; SDPA's inputs are cast by autocast, ours must be too
    (regression: the H200 trainer's compiled FlexAttention path raised "q, k, v must share
    a dtype"). Same result as the call with every input in bfloat16; gradients reach the
    float32 inputs; float64 stays float64."""
    torch.manual_seed(0)
    pat = get_pattern("power", block_size=16)
    q, k = (torch.randn(1, 2, 64, 16, requires_grad=backend != "flex") for _ in range(2))
    v = torch.randn(1, 2, 64, 16).bfloat16()
    want = api.sparse_attention(q.bfloat16(), k.bfloat16(), v, pat, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = api.sparse_attention(q, k, v, pat, backend=backend)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert got.dtype == sdpa.dtype == torch.bfloat16
    assert torch.equal(got, want)
    if backend != "flex":  # FlexAttention has no backward on the CPU
        got.float().sum().backward()
        assert q.grad is not None and q.grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q64, k64, v64 = (t.detach().double() for t in (q, k, v))
        assert api.sparse_attention(q64, k64, v64, pat, backend="dense").dtype == torch.float64


def test_under_autocast_inside_torch_compile():
    """The autocast cast is traced (no graph break) and gives the eager result."""
    torch.manual_seed(0)
    pat = get_pattern("power", block_size=16)
    q, k = torch.randn(1, 2, 64, 16), torch.randn(1, 2, 64, 16)
    v = torch.randn(1, 2, 64, 16).bfloat16()

    def f(q, k, v):
        return api.sparse_attention(q, k, v, pat, backend="dense")

    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = f(q, k, v)
        got = torch.compile(f, backend="aot_eager", fullgraph=True)(q, k, v)
    torch._dynamo.reset()
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want)
