"""Diagnostic run on the GPU (scripts/gpu_kernel.sh diag): which BlockMask construction gives
FlexAttention correct outputs on this torch version. Prints one error per variant."""

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from powerattn import get_pattern, reference_attention
from powerattn.ops import flex as F
from powerattn.ops.layout import tile_layout

dyn = torch.compile(flex_attention, dynamic=True)
sta = torch.compile(flex_attention, dynamic=False)
opts = {"FORCE_USE_FLEX_ATTENTION": True}


def bm_from(lay, sq, sk, mask_mod, clone):
    parts = [
        lay.kv_count,
        lay.kv_idx,
        lay.full_kv_count,
        lay.full_kv_idx,
        lay.q_count,
        lay.q_idx,
        lay.full_q_count,
        lay.full_q_idx,
    ]
    t = [torch.from_numpy(p).cuda().view(1, 1, *p.shape) for p in parts]
    if clone:
        t = [x.contiguous() for x in t]
    return BlockMask(
        seq_lengths=(sq, sk),
        kv_num_blocks=t[0],
        kv_indices=t[1],
        full_kv_num_blocks=t[2],
        full_kv_indices=t[3],
        q_num_blocks=t[4],
        q_indices=t[5],
        full_q_num_blocks=t[6],
        full_q_indices=t[7],
        BLOCK_SIZE=(128, 128),
        mask_mod=mask_mod,
    )


for bs, sq, sk in [(128, 715, 715), (256, 1024, 1024), (128, 517, 773)]:
    p = get_pattern("power", block_size=bs, window=2)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 64, device="cuda", generator=g) for n in (sq, sk, sk))
    ref = reference_attention(q, k, v, p, upcast=True)
    off = torch.tensor(sk - sq, device="cuda", dtype=torch.int32)

    def causal(b, h, qi, ki, off=off):
        return ki <= qi + off

    def pmask(b, h, qi, ki, off=off, p=p):
        return p.mask_mod(b, h, qi + off, ki)

    F._mask_cache.clear()
    variants = {
        "ours": F.block_mask_for(p, sq, sk, "cuda"),
        "compact-sep-causal": bm_from(tile_layout(p, sq, sk), sq, sk, causal, True),
        "compact-sep-pattern": bm_from(tile_layout(p, sq, sk), sq, sk, pmask, True),
        "fullwidth-pattern": bm_from(tile_layout(p, sq, sk, full_width=True), sq, sk, pmask, True),
        "create_block_mask": create_block_mask(pmask, None, None, sq, sk, device="cuda"),
    }
    lay = tile_layout(p, sq, sk, full_width=True)
    variants["from_kv_blocks"] = BlockMask.from_kv_blocks(
        torch.from_numpy(lay.kv_count).cuda()[None, None],
        torch.from_numpy(lay.kv_idx).cuda()[None, None],
        torch.from_numpy(lay.full_kv_count).cuda()[None, None],
        torch.from_numpy(lay.full_kv_idx).cuda()[None, None],
        BLOCK_SIZE=128,
        mask_mod=pmask,
        seq_lengths=(sq, sk),
    )
    for name, bm in variants.items():
        for cname, fn in (("dyn", dyn), ("static", sta)):
            try:
                out = fn(q, k, v, block_mask=bm, kernel_options=opts)
                err = (out.double() - ref).abs().max().item()
            except Exception as exc:  # noqa: BLE001
                err = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            print(f"bs={bs} sq={sq} sk={sk} {name:22s} {cname:6s} err={err}")
    bm = variants["ours"]
    print(
        "ours kv_count",
        bm.kv_num_blocks.flatten().tolist()[:8],
        "full",
        bm.full_kv_num_blocks.flatten().tolist()[:8],
        "storage_offsets",
        [t.storage_offset() for t in bm.as_tuple()[2:10] if isinstance(t, torch.Tensor)],
    )

# Early decode timings (Qwen2-7B shapes): kernel call, CUDA graph, dense SDPA.
import triton  # noqa: E402

from powerattn.ops.decode import decode_attention  # noqa: E402

p = get_pattern("power")
for s in (32768, 131072):
    q = torch.randn(1, 28, 1, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 4, s, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    dense = triton.testing.do_bench(
        lambda q=q, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(
            q, k, v, enable_gqa=True
        ),
        return_mode="median",
    )
    call = triton.testing.do_bench(
        lambda q=q, k=k, v=v: decode_attention(q, k, v, p, 128**-0.5), return_mode="median"
    )
    graph = torch.cuda.CUDAGraph()
    decode_attention(q, k, v, p, 128**-0.5)
    with torch.cuda.graph(graph):
        decode_attention(q, k, v, p, 128**-0.5)
    gms = triton.testing.do_bench(graph.replay, return_mode="median")
    print(
        f"decode S={s}: dense {dense * 1e3:.1f} us, ours call {call * 1e3:.1f} us, "
        f"graph {gms * 1e3:.1f} us"
    )
