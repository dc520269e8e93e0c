"""FlexAttention backend on the CPU (compiled C++ kernel, forward only) and its guard
against the unfused fallback. Compiling is slow on the CPU (~10 s per variant), so the
cases share shapes; on CUDA the main suite (test_sparse_attention.py) exercises flex fully.
"""

from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from powerattn import get_pattern, reference_attention
from powerattn.ops import api, fa4, flex

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(hq, hkv, sq, sk, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, h, s, 64, generator=g).to(DEVICE, dtype)
        for h, s in ((hq, sq), (hkv, sk), (hkv, sk))
    ]


@pytest.mark.parametrize(
    "bs, sq, sk",
    [(32, 17, 333), (32, 333, 333), (256, 300, 700)],  # straddling tiles; blocks > tile
)
def test_flex_forward_matches_reference(bs, sq, sk):
    pattern = get_pattern("power", block_size=bs)
    q, k, v = _inputs(8, 2, sq, sk, seed=bs + sq)
    out = api.sparse_attention(q, k, v, pattern, backend="flex")
    ref = reference_attention(q, k, v, pattern, upcast=True)
    mask = pattern.dense_mask(sq, sk).to(DEVICE)
    base = F.scaled_dot_product_attention(
        q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), attn_mask=mask
    )
    err = (out.double() - ref).abs().max().item()
    assert err <= 2 * (base.double() - ref).abs().max().item() + 1e-5


def test_recompile_limit_fails_loudly(monkeypatch):
    """Past the recompile limit dynamo would silently run flex_attention eagerly (dense
    S x S scores); our guard must raise instead."""
    monkeypatch.setattr(flex, "RECOMPILE_LIMIT", 1)
    pattern = get_pattern("power", block_size=32)
    with pytest.raises(flex.FlexRecompileError, match="unfused fallback"):
        for dtype in (torch.float32, torch.bfloat16):  # a second variant must recompile
            q, k, v = _inputs(8, 2, 17, 333, dtype=dtype)
            flex.flex_sparse_attention(q, k, v, pattern, 0.125, need_lse=False)


def test_recompile_guard_restores_the_users_settings():
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    before = getattr(cfg, name), cfg.fail_on_recompile_limit_hit
    with flex.recompile_guard(3):
        assert getattr(cfg, name) == 3 and cfg.fail_on_recompile_limit_hit
    assert (getattr(cfg, name), cfg.fail_on_recompile_limit_hit) == before
    with pytest.raises(KeyError), flex.recompile_guard(5):
        raise KeyError("any error on the way out")
    assert (getattr(cfg, name), cfg.fail_on_recompile_limit_hit) == before


def test_inside_a_users_compile_the_mask_cache_is_not_guarded_on():
    """A compiled training step (mixed lengths) with eager calls in between (evaluations),
    as `experiment passkey --speed compile` runs it. Dynamo used to trace the mask cache
    (an LRU dict) and guard on its entries by position: each eager lookup reordered it and
    recompiled the caller (61 graphs for these 3 lengths; on the H200 the guards failed
    outright). The mask is now looked up outside the trace: a few graphs per length."""
    from torch._dynamo.utils import counters

    pattern = get_pattern("power", block_size=16)

    def f(q):
        return api.sparse_attention(q, q, q, pattern, backend="flex")

    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", dynamic=False)
    graphs_before = counters["stats"]["unique_graphs"]
    lengths = (64, 128, 256)
    for i, S in enumerate(lengths * 3):
        f(torch.randn(1, 2, 32 * (1 + i % 4), 16))  # eager: reorders / grows the cache
        q = torch.randn(1, 2, S, 16)
        torch.testing.assert_close(compiled(q), f(q))
    graphs = counters["stats"]["unique_graphs"] - graphs_before
    assert graphs <= 4 * len(lengths), f"{graphs} graphs for {len(lengths)} lengths"


def test_a_block_mask_built_outside_a_users_compile_traces_without_a_graph_break():
    """``block_mask=``: the caller builds the mask outside its compiled region and passes it
    in; the attention then traces as one graph per length (no look-up, no graph break),
    within the tolerance rule of the float64 reference. A mask for other lengths is refused."""
    from torch._dynamo.utils import counters

    from powerattn.testing import compare_attention

    pattern = get_pattern("power", block_size=16)

    def f(q, bm):
        return api.sparse_attention(q, q, q, pattern, backend="flex", block_mask=bm)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(f, backend="aot_eager", dynamic=False)
    lengths = (64, 128, 256)
    for S in lengths * 2:
        q = torch.randn(1, 2, S, 16)
        bm = flex.block_mask_for(pattern, S, S, q.device)
        report = compare_attention(
            lambda q, k, v, bm=bm: compiled(q, bm), q, q, q, pattern, grads=False
        )
        assert report["ok"], report
    assert counters["stats"]["unique_graphs"] == len(lengths)
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()
    q = torch.randn(1, 2, 64, 16)
    with pytest.raises(ValueError, match="block_mask is for"):
        f(q, flex.block_mask_for(pattern, 128, 128, q.device))


# --------------------------------------------------------------- FlashAttention-4 selection
# The selection logic runs on the CPU with the GPU's properties given explicitly; the kernel
# itself is exercised by the CUDA suite (scripts/gpu_kernel.sh) wherever it is installed.


def _flash_reason(dtype=torch.bfloat16, block_size=256, cap=(9, 0), importable=True, dev="cuda"):
    q = torch.empty(1, 4, 8, 64, dtype=dtype, device="meta")
    pattern = get_pattern("power", block_size=block_size)
    return flex.flash_unsupported(
        q, pattern, device_type=dev, capability=cap, importable=importable
    )


def test_flash_selected_on_hopper_and_blackwell_when_importable():
    assert _flash_reason(cap=(9, 0)) is None
    assert _flash_reason(cap=(10, 0), dtype=torch.float16) is None


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"importable": False}, "pip install 'powerattn[fa4]'"),
        ({"cap": (8, 0)}, "SM80"),  # Ampere
        ({"cap": (12, 0)}, "SM120"),  # consumer Blackwell: not a FlashAttention-4 target
        ({"dtype": torch.float32}, "float16/bfloat16"),
        ({"block_size": 64}, "multiple of the 128-token tile"),
        ({"dev": "cpu"}, "CUDA"),
    ],
)
def test_flash_refusals_name_the_reason(kwargs, words):
    reason = _flash_reason(**kwargs)
    assert reason is not None and words in reason


def test_explicit_flash_backend_refuses_with_a_way_out():
    """Without a Hopper/Blackwell GPU and flash-attn-4, backend='flash' says why and names
    backend='flex'; 'auto' never picks it here."""
    pattern = get_pattern("power", block_size=256)
    q, k, v = _inputs(4, 2, 300, 300)
    with pytest.raises(ValueError, match="backend='flex'"):
        api.sparse_attention(q, k, v, pattern, backend="flash")
    if DEVICE == "cpu":
        assert flex.pick_kernel(q, pattern) == "flex"


def test_pick_kernel_follows_flash_unsupported(monkeypatch):
    q = torch.empty(1, 4, 8, 64, dtype=torch.bfloat16, device="meta")
    pattern = get_pattern("power")
    monkeypatch.setattr(flex, "flash_unsupported", lambda q, p: None)
    assert flex.pick_kernel(q, pattern) == "flash"
    # An lse that takes part in a backward goes to the Triton kernels.
    assert flex.pick_kernel(q, pattern, lse_with_grad=True) == "flex"
    monkeypatch.setattr(flex, "flash_unsupported", lambda q, p: "no GPU")
    assert flex.pick_kernel(q, pattern) == "flex"


def _route_flash(monkeypatch, sq, sk, *, direct=True):
    """Where flex_sparse_attention sends backend='flash' (flash_unsupported mocked to None):
    ``("fa4", block mask)`` for the direct FlashAttention-4 call, ``("flex", options)`` for the
    compiled FlexAttention function; neither runs (no GPU here)."""
    calls = []
    monkeypatch.setattr(flex, "flash_unsupported", lambda q, p: None)
    monkeypatch.setattr(flex, "FLASH_DIRECT", direct)

    def fa4(q, k, v, bm, scale, need_lse):
        calls.append(("fa4", bm))
        return q, None

    def compiled(dynamic):
        def fn(q, k, v, bm, scale, gqa, options, aux):
            calls.append(("flex", options))
            return q

        return fn

    monkeypatch.setattr(flex, "fa4_attention", fa4)
    monkeypatch.setattr(flex, "_compiled_fn", compiled)
    monkeypatch.setattr(flex, "_static_signatures", set())
    pattern = get_pattern("power", block_size=256)
    q, k, v = _inputs(4, 2, sq, sk)
    flex.flex_sparse_attention(q, k, v, pattern, 0.125, need_lse=False, kernel="flash")
    return calls, pattern, q.device


def test_flash_prefill_calls_flashattention4_directly(monkeypatch):
    """Eager Sq == Sk: FlashAttention-4 itself, with the pattern's cached BlockMask; chunks
    (Sq < Sk) and FLASH_DIRECT off go through FlexAttention's FLASH backend."""
    calls, pattern, device = _route_flash(monkeypatch, 384, 384)
    assert [c[0] for c in calls] == ["fa4"]
    assert calls[0][1] is flex.block_mask_for(pattern, 384, 384, device)  # cuda:0, not cuda
    calls, *_ = _route_flash(monkeypatch, 128, 384)
    assert [c[0] for c in calls] == ["flex"]
    calls, *_ = _route_flash(monkeypatch, 384, 384, direct=False)
    assert [c[0] for c in calls] == ["flex"]


def test_fa4_tile_lists_follow_the_block_mask():
    """Forward: key-side lists (partial tiles -> FlashAttention-4's mask blocks, full tiles ->
    its full blocks); backward: the query side; built once per mask."""
    import collections

    tensors = collections.namedtuple(
        "Tensors", "mask_block_cnt mask_block_idx full_block_cnt full_block_idx block_size"
    )
    tensors.__new__.__defaults__ = (None,)
    bm = flex.block_mask_for(get_pattern("power", block_size=256), 1000, 1000, "cpu")
    fwd, bwd = fa4.sparse_tensors(bm, tensors)
    assert fwd.mask_block_cnt is bm.kv_num_blocks and fwd.mask_block_idx is bm.kv_indices
    assert fwd.full_block_cnt is bm.full_kv_num_blocks
    assert fwd.full_block_idx is bm.full_kv_indices
    assert bwd.mask_block_cnt is bm.q_num_blocks and bwd.full_block_idx is bm.full_q_indices
    assert fwd.block_size == bwd.block_size == (flex.TILE, flex.TILE)
    # Tiles align with 256-token blocks: the partial tiles are exactly the diagonal ones,
    # which is why causal=True is the whole token predicate of the direct call.
    n = bm.kv_num_blocks.shape[-1]
    assert bm.kv_num_blocks.flatten().tolist() == [1] * n
    assert bm.kv_indices[0, 0, :, 0].tolist() == list(range(n))
    assert fa4.sparse_tensors(bm, tensors)[0] is fwd


@pytest.mark.parametrize("mask_mod", [False, True])
def test_fa4_call_is_assembled_as_flashattention4_expects(monkeypatch, mask_mod):
    """(B, S, H, D) views in, the output's view back in (B, H, S, D); the tile lists of the
    mask both ways; causality by the flag or by the mask_mod, never both (FlashAttention-4
    drops ``causal`` when a ``mask_mod`` is given)."""
    import collections

    seen = {}

    def func(q, k, v, **kw):
        seen.update(q=q, k=k, **kw)
        return torch.zeros(q.shape), torch.zeros(q.shape[0], q.shape[2], q.shape[1])

    tensors = collections.namedtuple("Tensors", "cnt idx full_cnt full_idx block_size")
    causal = object()
    monkeypatch.setattr(fa4, "_fa4", {"func": func, "tensors": tensors, "causal": causal})
    monkeypatch.setattr(fa4, "CAUSAL_MASK_MOD", mask_mod)
    q, k, v = _inputs(4, 2, 300, 300)
    bm = flex.block_mask_for(get_pattern("power", block_size=256), 300, 300, "cpu")
    out, lse = fa4.fa4_attention(q, k, v, bm, 0.125, need_lse=True)
    assert seen["q"].shape == (2, 300, 4, 64) and seen["k"].shape == (2, 300, 2, 64)
    assert seen["q"].data_ptr() == q.data_ptr()  # a view, no copy
    assert out.shape == q.shape and lse.shape == (2, 4, 300)
    assert seen["block_sparse_tensors"].cnt is bm.kv_num_blocks
    assert seen["block_sparse_tensors_bwd"].cnt is bm.q_num_blocks
    assert seen["softmax_scale"] == 0.125 and seen["return_lse"] is True
    if mask_mod:
        assert seen["mask_mod"] is causal and "causal" not in seen
    else:
        assert seen["causal"] is True and "mask_mod" not in seen


# --------------------------------------------------------------- CUDA: both kernels, both compiles

CUDA_SMALL = {  # long-range parameters that differ from full within a few 256-token blocks
    "power": {"window": 2, "sink": 1},
    "sliding_window": {"window": 3, "sink": 1},
    "stride_slash": {"window": 2, "stride": 3, "sink": 1},
    "dilated": {"window": 6, "dilation": 2},
    "longnet": {"segments": ((2, 1), (4, 2), (8, 4))},
}


def _check_kernel(pattern, kernel, sq, sk, dtype, seed, Hq=8, Hkv=2, D=128):
    """Forward (out, lse) and gradients of one FlexAttention kernel against float64, with
    tolerances relative to same-precision dense SDPA (2x forward, 3x gradients)."""
    g = torch.Generator().manual_seed(seed)

    def mk(*shape):
        return torch.randn(*shape, generator=g).to("cuda", dtype).requires_grad_(True)

    q, k, v = mk(2, Hq, sq, D), mk(2, Hkv, sk, D), mk(2, Hkv, sk, D)
    ref, ref_lse = reference_attention(q, k, v, pattern, return_lse=True, upcast=True)
    G = Hq // Hkv
    mask = pattern.dense_mask(sq, sk).to("cuda")
    base = F.scaled_dot_product_attention(
        q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), attn_mask=mask
    )
    err = lambda a, b: (a.double() - b.double()).abs().max().item()  # noqa: E731
    floor = 1e-3 if dtype == torch.bfloat16 else 2e-4
    with torch.no_grad():  # the lse (FlashAttention-4: no gradient through it)
        out, lse = api.sparse_attention(q, k, v, pattern, return_lse=True, backend=kernel)
    assert err(out, ref) <= 2 * err(base, ref) + floor
    assert err(lse, ref_lse) <= 1e-2
    out = api.sparse_attention(q, k, v, pattern, backend=kernel)
    dout = torch.randn_like(ref)
    assert err(out, ref) <= 2 * err(base, ref) + floor
    got = torch.autograd.grad(out, (q, k, v), dout.to(dtype))
    want = torch.autograd.grad(ref, (q, k, v), dout)
    yard = torch.autograd.grad(base, (q, k, v), dout.to(dtype))
    for a, r, b in zip(got, want, yard, strict=True):
        assert torch.isfinite(a).all()
        assert err(a, r) <= 3 * err(b, r) + 3 * floor


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA kernels (CPU: selection tests above)")
@pytest.mark.parametrize("kernel", ["flex", "flash", "flash_maskmod", "flash_via_flex"])
@pytest.mark.parametrize("name", ["power", "sliding_window", "stride_slash", "dilated", "longnet"])
def test_cuda_kernels_match_reference(name, kernel, monkeypatch):
    """Every pattern through each kernel ``auto`` may pick, prefill and a chunk whose offset
    is not a tile multiple (padded queries), GQA 4, bf16 and fp16. ``flash``'s prefill calls
    FlashAttention-4 directly (its ``causal`` flag; ``flash_maskmod``: a causal CuTe
    ``mask_mod`` instead); ``flash_via_flex`` reaches it through FlexAttention's FLASH
    backend (FLASH_DIRECT off), the path of chunks and compiled callers."""
    pattern = get_pattern(name, block_size=256, **CUDA_SMALL[name])
    q = torch.empty(1, 1, 1, 128, dtype=torch.bfloat16, device="cuda")
    if kernel != "flex" and flex.flash_unsupported(q, pattern):
        pytest.skip(f"flash: {flex.flash_unsupported(q, pattern)}")
    if kernel == "flash_via_flex":
        monkeypatch.setattr(flex, "FLASH_DIRECT", False)
    if kernel == "flash_maskmod":
        monkeypatch.setattr(fa4, "CAUSAL_MASK_MOD", True)
    kernel = kernel.split("_")[0]
    for i, (sq, sk, dtype) in enumerate(
        [(2333, 2333, torch.bfloat16), (300, 2333, torch.float16), (1024, 1024, torch.float16)]
    ):
        _check_kernel(pattern, kernel, sq, sk, dtype, seed=zlib.crc32(f"{name}{i}".encode()))


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA compile policy")
def test_cuda_static_budget_overflow_goes_dynamic(monkeypatch):
    """Beyond STATIC_VARIANTS signatures, calls run the dynamic-shape Triton function (tensor
    offset in the mask) and stay correct; earlier signatures keep their static variant."""
    pattern = get_pattern("power", block_size=256, **CUDA_SMALL["power"])
    monkeypatch.setattr(flex, "_static_signatures", set())
    monkeypatch.setattr(flex, "STATIC_VARIANTS", 1)
    for i, (sq, sk) in enumerate([(700, 700), (900, 900), (130, 1100)]):
        _check_kernel(pattern, "flex", sq, sk, torch.bfloat16, seed=100 + i)
    assert len(flex._static_signatures) == 1
