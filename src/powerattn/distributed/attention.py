"""Context-parallel block-sparse attention on ``torch.distributed`` (NCCL on GPUs, gloo on
CPUs), communicating only the key/value blocks the pattern reads (:func:`cp_plan`).

One call per layer, on every rank of ``group``:

1. post the plan's sends (this rank's blocks that later ranks read) and receives (the remote
   blocks this rank reads) as one batch of point-to-point operations;
2. while they travel, attend the local shard: ``q`` against this rank's own ``k, v``
   (:class:`~powerattn.distributed.view.GatheredView` of the local run);
3. wait, lay the received blocks out in ascending position followed by the local shard and
   attend the remote part (same view, local blocks excluded);
4. merge the two partial attentions by their log-sum-exp.

The backward pass (``torch.autograd.Function``) mirrors it:

1. differentiate the merge, then the remote part only: this gives the gradients of the
   received blocks;
2. post one batch of isend/irecv along the reversed plan (those gradients back to their
   owners; this rank's own blocks' gradients from the ranks that read them);
3. while they travel, differentiate the local part (``q`` against the own shard);
4. wait and add the received gradients into ``dk, dv`` (accumulated in float32, float64
   for float64 inputs).
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..ops.api import sparse_attention
from ..ops.checks import check_qkv
from ..patterns import Pattern, get_pattern
from .plan import CPPlan, check_shard, cp_plan
from .view import GatheredView

_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.float64: 4}


@dataclass(frozen=True)
class _RankPlan:
    """What one rank does in every call (derived from the plan; cached per pattern, S, P
    and rank)."""

    plan: CPPlan
    rank: int
    local_view: GatheredView
    remote_view: GatheredView | None  # None: nothing to receive (e.g. rank 0)
    sends: tuple[tuple[int, torch.Tensor | None], ...]  # (dst, token index or None = all)
    recvs: tuple[tuple[int, int], ...]  # (src, tokens)


def _runs(blocks: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Ascending block indices -> ``((start, length), ...)`` of consecutive runs."""
    if blocks.size == 0:
        return ()
    cut = np.flatnonzero(np.diff(blocks) != 1) + 1
    return tuple((int(r[0]), int(r.size)) for r in np.split(blocks, cut))


def _token_index(blocks: np.ndarray, bs: int, chunk_blocks: int) -> torch.Tensor | None:
    if blocks.size == chunk_blocks:
        return None  # the whole shard: send it as it is
    tok = (blocks[:, None] * bs + np.arange(bs)[None, :]).reshape(-1)
    return torch.from_numpy(tok)


@functools.lru_cache(maxsize=64)
def _rank_plan(pattern: Pattern, seq_len: int, world: int, rank: int) -> _RankPlan:
    plan = cp_plan(pattern, seq_len, world)
    c, bs = plan.chunk_blocks, plan.block_size
    local_run = ((rank * c, c),)
    local_view = GatheredView(base=plan.pattern, runs=local_run)
    remote = plan.remote_blocks(rank)
    remote_view = None
    if remote.size:
        remote_view = GatheredView(
            base=plan.pattern, runs=_runs(remote) + local_run, key_limit=int(remote.size)
        )
    sends = tuple((dst, _token_index(plan.blocks(dst, rank), bs, c)) for dst in plan.dests(rank))
    recvs = tuple((src, int(blk.size) * bs) for src, blk in plan.recv[rank])
    return _RankPlan(plan, rank, local_view, remote_view, sends, recvs)


def _validate(
    q: torch.Tensor, k: torch.Tensor, pattern: Pattern, group, world: int, rank: int
) -> None:
    """One small all-gather so that a bad call fails with the same clear error on every rank
    (instead of mismatched messages that hang)."""
    B, Hq, L, D = q.shape
    desc = f"{pattern.describe()}|{q.dtype}".encode()
    local_err = 0
    try:
        check_shard(pattern, L * world, world)
    except ValueError:
        local_err = 1
    mine = torch.tensor(
        [L, B, Hq, k.shape[1], D, _DTYPE_CODES[q.dtype], zlib.crc32(desc), local_err],
        dtype=torch.int64,
    )
    dev = q.device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    gathered = [torch.empty_like(mine, device=dev) for _ in range(world)]
    dist.all_gather(gathered, mine.to(dev), group=group)
    rows = torch.stack(gathered).cpu()
    names = ("local length", "batch", "query heads", "key/value heads", "head dim", "dtype")
    for i, name in enumerate(names):
        col = rows[:, i].tolist()
        if len(set(col)) > 1:
            raise ValueError(
                f"context_parallel_attention: ranks disagree on the {name}: {col} (rank order); "
                "every rank must pass a shard of the same shape and dtype (pad the sequence "
                "to a multiple of world_size x block_size)"
            )
    if len(set(rows[:, 6].tolist())) > 1:
        raise ValueError(
            "context_parallel_attention: ranks passed different patterns or dtypes (this rank: "
            f"{pattern.describe()}, {q.dtype}); every rank must use the same pattern"
        )
    if rows[:, 7].any():
        check_shard(pattern, L * world, world)  # raises the shard error on every rank


def _exchange(
    sends: list[tuple[int, torch.Tensor]],
    recvs: list[tuple[int, torch.Tensor]],
    group,
) -> list:
    """Post one batch of isend/irecv (global ranks for ``P2POp``); returns the requests."""
    ops = [dist.P2POp(dist.isend, t, _global(group, dst), group) for dst, t in sends]
    ops += [dist.P2POp(dist.irecv, t, _global(group, src), group) for src, t in recvs]
    return dist.batch_isend_irecv(ops) if ops else []


def _global(group, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def _merge(
    out1: torch.Tensor, lse1: torch.Tensor, out2: torch.Tensor, lse2: torch.Tensor
) -> torch.Tensor:
    """Combine two partial attentions over disjoint key sets by their lse (in float32, or
    float64 for float64 inputs). Rows empty in one part take the other; empty in both: 0."""
    acc = torch.promote_types(out1.dtype, torch.float32)
    lse1, lse2 = lse1.to(acc), lse2.to(acc)
    m = torch.maximum(lse1, lse2)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e1, e2 = torch.exp(lse1 - m), torch.exp(lse2 - m)
    den = e1 + e2
    den = torch.where(den > 0, den, torch.ones_like(den))
    w1, w2 = (e1 / den)[..., None], (e2 / den)[..., None]
    return (out1.to(acc) * w1 + out2.to(acc) * w2).to(out1.dtype)


def _forward(q, k, v, rp: _RankPlan, group, scale, backend, leaves: bool):
    """Steps 1-4 of the module docstring. Returns ``(out, recv, parts)``: with ``leaves``
    the received buffers ``recv`` are autograd leaves (their gradients go back to the
    owners); ``parts`` are the partial results ``(out1, lse1, out2, lse2)`` (local, remote;
    the remote pair None when nothing is received), which the backward differentiates in
    two steps around its transfer."""
    B, Hkv, L, D = k.shape
    send_bufs = []
    for dst, idx in rp.sends:
        if idx is not None:  # only the blocks dst reads
            idx = idx.to(k.device)
            send_bufs.append((dst, torch.stack((k[:, :, idx], v[:, :, idx]))))
        else:
            send_bufs.append((dst, torch.stack((k, v))))  # (2, B, Hkv, n, D), contiguous
    recv_bufs = [
        (src, torch.empty(2, B, Hkv, n, D, dtype=k.dtype, device=k.device)) for src, n in rp.recvs
    ]
    reqs = _exchange(send_bufs, recv_bufs, group)
    # The local shard while the remote blocks travel.
    local = _local(q, k, v, rp, scale, backend)
    for r in reqs:
        r.wait()
    recv = [t for _, t in recv_bufs]
    if leaves:
        recv = [t.requires_grad_() for t in recv]
    out, parts = _with_remote(q, k, v, recv, local, rp, scale, backend)
    return out, recv, parts


def _local(q, k, v, rp: _RankPlan, scale, backend):
    """``(out1, lse1)``: the queries against this rank's own shard."""
    return sparse_attention(q, k, v, rp.local_view, scale=scale, return_lse=True, backend=backend)


def _with_remote(q, k, v, recv, local, rp: _RankPlan, scale, backend):
    """``(out, parts)``: the remote part attended and merged with ``local``."""
    out1, lse1 = local
    if rp.remote_view is None:
        return out1, (out1, lse1, None, None)
    kk = torch.cat([t[0] for t in recv] + [k], dim=2)  # (B, Hkv, R + L, D)
    vv = torch.cat([t[1] for t in recv] + [v], dim=2)
    out2, lse2 = sparse_attention(
        q, kk, vv, rp.remote_view, scale=scale, return_lse=True, backend=backend
    )
    return _merge(out1, lse1, out2, lse2), (out1, lse1, out2, lse2)


def _grads(outputs, inputs, grad_outputs) -> list[torch.Tensor | None]:
    """``torch.autograd.grad`` of the outputs whose gradient is not None, with respect to
    the inputs that require one (None for the others, e.g. an lse a backend returned
    without a graph)."""
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if g is not None]
    live = [i for i, t in enumerate(inputs) if t.requires_grad]
    got = torch.autograd.grad(
        [o for o, _ in pairs], [inputs[i] for i in live], [g for _, g in pairs], allow_unused=True
    )
    res: list[torch.Tensor | None] = [None] * len(inputs)
    for i, g in zip(live, got, strict=True):
        res[i] = g
    return res


def _local_grads(parts, dout1, dlse1, leaves) -> list[torch.Tensor | None]:
    """Step 3 of the backward: the local part's gradients in ``leaves`` (q, k, v)."""
    return _grads(parts[:2], leaves, (dout1, dlse1))


def _keep(t: torch.Tensor) -> torch.Tensor:
    return t


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a + b


class _CPAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rp, group, scale, backend, recompute):
        need = any(ctx.needs_input_grad[:3])
        ctx.rp, ctx.group, ctx.scale, ctx.backend = rp, group, scale, backend
        ctx.recompute = recompute
        if not need or recompute:
            out, recv, _ = _forward(q, k, v, rp, group, scale, backend, leaves=False)
            if need:  # through save_for_backward: activation checkpointing drops these
                ctx.save_for_backward(q, k, v, *recv)
            return out
        # Build the local graph here (forward runs under no_grad by default) and keep it for
        # backward: no recomputation, the backends' own saved tensors. Plain saved-tensor
        # hooks override any outer ones here: a checkpointed tensor is recomputed once per
        # autograd graph task, and the backward below runs three (around its transfer) at
        # points that differ between ranks -- each recomputation repeating the layer's
        # transfers, the ranks would disagree on their number and hang. Under activation
        # checkpointing use ``recompute`` instead, whose saved tensors are the inputs.
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
            qd, kd, vd = (t.detach().requires_grad_() for t in (q, k, v))
            out, recv, parts = _forward(qd, kd, vd, rp, group, scale, backend, leaves=True)
        ctx.inner = (out, qd, kd, vd, recv, parts)
        return out.detach()

    @staticmethod
    def backward(ctx, dout):
        rp, group = ctx.rp, ctx.group
        if ctx.recompute:
            # The two partial attentions again, from the saved inputs and received blocks
            # (no transfer), with the graph this time.
            q, k, v, *recv = ctx.saved_tensors
            with torch.enable_grad():
                qd, kd, vd, *recv = (t.detach().requires_grad_() for t in (q, k, v, *recv))
                local = _local(qd, kd, vd, rp, ctx.scale, ctx.backend)
                out, parts = _with_remote(qd, kd, vd, recv, local, rp, ctx.scale, ctx.backend)
        else:
            out, qd, kd, vd, recv, parts = ctx.inner
            del ctx.inner
        leaves = [qd, kd, vd]
        # 1. The merge, then the remote part: the gradients of the received blocks. The
        # parts' graphs are disjoint above the leaves, so each is freed once walked.
        dq = dk = dv = None
        drecv = []
        if parts[2] is None:
            dout1, dlse1 = dout, None
        else:
            dout1, dlse1, dout2, dlse2 = _grads([out], list(parts), [dout])
            g = _grads(parts[2:], leaves + recv, (dout2, dlse2))
            dq, dk, dv = g[:3]
            drecv = [
                torch.zeros_like(t) if d is None else d for d, t in zip(g[3:], recv, strict=True)
            ]
        # 2. Reversed plan, posted before the local work: the gradients of received blocks go
        # back to their owners, this rank's blocks' gradients come back from their readers.
        B, Hkv, L, D = kd.shape
        back_recv = [
            (
                dst,
                torch.empty(
                    2,
                    B,
                    Hkv,
                    L if idx is None else idx.numel(),
                    D,
                    dtype=kd.dtype,
                    device=kd.device,
                ),
            )
            for dst, idx in rp.sends
        ]
        back_send = [(src, g.contiguous()) for (src, _), g in zip(rp.recvs, drecv, strict=True)]
        reqs = _exchange(back_send, back_recv, group)
        # 3. The local part while they travel.
        g1 = _local_grads(parts, dout1, dlse1, leaves)
        dq, dk, dv = (
            torch.zeros_like(t) if d is None else d
            for d, t in zip(map(_add, (dq, dk, dv), g1), leaves, strict=True)
        )
        # 4. Wait, and add what came back.
        for r in reqs:
            r.wait()
        if back_recv:
            # (2, B, Hkv, L, D), accumulated in float32 (float64 for float64 inputs).
            acc = torch.stack((dk, dv)).to(torch.promote_types(kd.dtype, torch.float32))
            for (_, idx), (_, g) in zip(rp.sends, back_recv, strict=True):
                if idx is None:
                    acc += g.to(acc.dtype)
                else:
                    acc.index_add_(3, idx.to(acc.device), g.to(acc.dtype))
            dk, dv = acc[0].to(kd.dtype), acc[1].to(kd.dtype)
        return dq, dk, dv, None, None, None, None, None


def context_parallel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | str,
    *,
    group: dist.ProcessGroup | None = None,
    scale: float | None = None,
    backend: str = "auto",
    validate: bool = True,
    recompute: bool = False,
) -> torch.Tensor:
    """Block-sparse causal attention over a sequence sharded across the ranks of ``group``.

    Call it on every rank of ``group`` (collectively, same pattern and shapes). Rank ``p`` of
    ``P`` holds the contiguous positions ``p L .. (p + 1) L - 1`` of a sequence of
    ``S = P L`` tokens (rank order is sequence order).

    Args:
        q: ``(B, Hq, L, D)`` this rank's queries; float16, bfloat16, float32 or float64.
        k, v: ``(B, Hkv, L, D)`` this rank's keys and values, ``Hq % Hkv == 0`` (GQA: K/V
            are neither copied nor repeated; only ``Hkv`` heads travel).
        pattern: a :class:`~powerattn.patterns.Pattern` or registered name; ``L`` must be a
            multiple of its ``block_size``.
        group: the process group (default: the world); its rank order is sequence order.
        scale: softmax scale, default ``1 / sqrt(D)``.
        backend: as in :func:`~powerattn.sparse_attention`, for the per-rank computation.
        validate: check with one small all-gather that every rank passed the same shapes,
            dtype and pattern, so that a bad call raises the same ``ValueError`` on every
            rank rather than hanging. Costs one tiny collective (and a host sync) per call.
        recompute: keep only ``q, k, v`` and the received blocks for the backward pass
            (saved with ``save_for_backward``) and compute the two partial attentions
            again there: one more attention forward per step, much less memory. Use it
            under activation checkpointing, which then drops those tensors with the rest
            of the layer (without it, this layer keeps its own saved tensors).

    Returns:
        ``(B, Hq, L, D)``, this rank's rows of ``sparse_attention`` on the whole sequence.
        Differentiable in ``q, k, v`` (the backward pass is collective too).

    Only the key/value blocks the pattern reads travel (:func:`cp_plan`): ``log2 P + O(1)``
    shards' worth per rank for PowerAttention, ``p`` shards on rank ``p`` for full attention.
    """
    check_qkv(q, k, v)
    if q.shape[2] != k.shape[2]:
        raise ValueError(
            f"q has {q.shape[2]} positions and k/v {k.shape[2]}: under context parallelism "
            "each rank passes the queries, keys and values of the same shard"
        )
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "context_parallel_attention needs torch.distributed initialised "
            "(torch.distributed.init_process_group, e.g. under torchrun); on one process use "
            "powerattn.sparse_attention"
        )
    pattern = get_pattern(pattern)
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(
            "this process is not a member of `group`: call context_parallel_attention only "
            "on the ranks of the group whose shards make up the sequence"
        )
    if validate:
        _validate(q, k, pattern, group, world, rank)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    rp = _rank_plan(pattern, q.shape[2] * world, world, rank)
    return _CPAttention.apply(q, k, v, rp, group, scale, backend, recompute)
