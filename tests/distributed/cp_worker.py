"""One gloo rank of the context-parallel tests (spawned by test_attention.py).

Every rank builds the same whole-sequence inputs (same seed), runs
``context_parallel_attention`` on its shard, and records, per case, its shard's check
against the float64 reference under the tolerance rule (``powerattn.testing.check_close``),
the baseline being the same-precision single-process ``sparse_attention`` on the same
rows. Then the bad calls, recording what each rank raised. Results go to
``OUTDIR/rank{r}.json``; the test process asserts.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from spawning import init_gloo

from powerattn import get_pattern, pattern_names, reference_attention, sparse_attention
from powerattn.bench.cp import allgather_attention
from powerattn.distributed import context_parallel_attention
from powerattn.testing import FORWARD_FACTOR, GRADIENT_FACTOR, check_close, reduction_terms

# Small long-range parameters, so that every pattern differs from full within a few blocks.
SMALL = {
    "power": {"window": 2, "sink": 1},
    "sliding_window": {"window": 3, "sink": 1},
    "stride_slash": {"window": 2, "stride": 3, "sink": 1},
    "dilated": {"window": 6, "dilation": 2},
    "longnet": {"segments": ((2, 1), (4, 2), (8, 4))},
}
BLOCK = 8
CHUNK_BLOCKS = 3  # an odd number of blocks per shard
B, HQ, HKV, D = 1, 4, 2, 8  # GQA 2:1


def _cases():
    for name in pattern_names():
        pat = get_pattern(name, block_size=BLOCK, **SMALL.get(name, {}))
        for dtype in (torch.float32, torch.float64):
            yield f"{name}-{str(dtype)[6:]}", pat, dtype, BLOCK * CHUNK_BLOCKS
    # An odd block size (7 tokens) and odd local length (21 tokens).
    yield "power-b7-float32", get_pattern("power", block_size=7, window=2), torch.float32, 21


def _recompute(*args, **kwargs):
    return context_parallel_attention(*args, **kwargs, recompute=True)


def _check_case(rank, world, name, pat, dtype, local, fn=context_parallel_attention):
    S = local * world
    g = torch.Generator().manual_seed(1234)
    q, k, v, dout = (
        torch.randn(B, h, S, D, generator=g, dtype=torch.float64) for h in (HQ, HKV, HKV, HQ)
    )
    sl = slice(rank * local, (rank + 1) * local)
    # The float64 reference and the same-precision single-process baseline, whole sequence.
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = reference_attention(*leaves, pat, upcast=True)
    ref_g = torch.autograd.grad(ref, leaves, dout)
    base_leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    base = sparse_attention(*base_leaves, pat)
    base_g = torch.autograd.grad(base, base_leaves, dout.to(dtype))
    # Context parallel: this rank's shard only.
    shard = [t[:, :, sl].to(dtype).requires_grad_() for t in (q, k, v)]
    out = fn(*shard, pat)
    cp_g = torch.autograd.grad(out, shard, dout[:, :, sl].to(dtype))
    # The tolerance rule on this rank's rows; the floors' sums are the whole sequence's.
    terms = reduction_terms(q, k)
    row = {"out": check_close(out, ref[:, :, sl], base[:, :, sl], FORWARD_FACTOR, terms["out"])}
    for n, a, r, b in zip("qkv", cp_g, ref_g, base_g, strict=True):
        d = f"d{n}"
        row[d] = check_close(a, r[:, :, sl], b[:, :, sl], GRADIENT_FACTOR, terms[d])
    row["dtype"] = str(dtype)
    row["finite"] = bool(torch.isfinite(out).all()) and all(
        bool(torch.isfinite(t).all()) for t in cp_g
    )
    return row


def _raises(fn) -> str | None:
    try:
        fn()
    except (ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _bad_calls(rank, world):
    pat = get_pattern("power", block_size=BLOCK, window=2)
    local = BLOCK * CHUNK_BLOCKS

    def qkv(n, dtype=torch.float32):
        return [torch.randn(B, h, n, D, dtype=dtype) for h in (HQ, HKV, HKV)]

    out = {}
    # Rank 0 holds a shorter shard than the others.
    out["lengths"] = _raises(
        lambda: context_parallel_attention(*qkv(local - BLOCK if rank == 0 else local), pat)
    )
    # A block size that does not divide the shard (on every rank).
    out["block"] = _raises(lambda: context_parallel_attention(*qkv(local), "power"))
    # Different patterns on different ranks.
    other = get_pattern("power", block_size=BLOCK, window=3 if rank == world - 1 else 2)
    out["pattern"] = _raises(lambda: context_parallel_attention(*qkv(local), other))
    # A group this rank does not belong to (members run normally).
    sub = dist.new_group(list(range(world // 2)))
    out["group"] = _raises(lambda: context_parallel_attention(*qkv(local), pat, group=sub))
    out["group_member"] = rank < world // 2
    return out


def _backward_order(rank, world, recompute):
    """The calls of one backward pass, in order: the reversed-plan exchange must be posted
    before the local part's gradients are computed (that is the overlap)."""
    from powerattn.distributed import attention

    pat = get_pattern("power", block_size=BLOCK, window=2)
    q, k, v = (
        torch.randn(B, h, BLOCK * CHUNK_BLOCKS, D, requires_grad=True) for h in (HQ, HKV, HKV)
    )
    out = context_parallel_attention(q, k, v, pat, recompute=recompute)
    calls = []
    orig = attention._exchange, attention._local_grads

    def exchange(sends, recvs, group):
        calls.append(("exchange", len(sends), len(recvs)))
        return orig[0](sends, recvs, group)

    def local(*args):
        calls.append(("local",))
        return orig[1](*args)

    attention._exchange, attention._local_grads = exchange, local
    try:
        out.sum().backward()
    finally:
        attention._exchange, attention._local_grads = orig
    return calls


def main(rank: int, world: int, port: int, outdir: str) -> None:
    init_gloo(rank, world, port)
    try:
        res = {"cases": {}, "bad": None}
        for name, pat, dtype, local in _cases():
            res["cases"][name] = _check_case(rank, world, name, pat, dtype, local)
        # The all-gather baseline of bench/cp.py (its GPU numbers rest on it).
        pat = get_pattern("power", block_size=BLOCK, **SMALL["power"])
        res["allgather"] = _check_case(
            rank, world, "allgather", pat, torch.float64, BLOCK * CHUNK_BLOCKS, allgather_attention
        )
        # The backward that computes the partial attentions again (activation checkpointing).
        for name in ("power", "full"):
            pat = get_pattern(name, block_size=BLOCK, **SMALL.get(name, {}))
            res["cases"][f"{name}-recompute-float32"] = _check_case(
                rank, world, name, pat, torch.float32, BLOCK * CHUNK_BLOCKS, _recompute
            )
        res["backward_order"] = {m: _backward_order(rank, world, m == "recompute")
                                 for m in ("kept", "recompute")}  # fmt: skip
        res["bad"] = _bad_calls(rank, world)
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # manual run: python cp_worker.py RANK WORLD PORT OUTDIR
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
