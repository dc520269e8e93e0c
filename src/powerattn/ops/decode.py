"""Decode backend: one Triton kernel that reads only the attended key/value blocks.

For ``Sq <= DECODE_MAX_Q`` queries at the end of ``Sk`` keys, the attended key blocks are
known in closed form from the position. Work is split over *units* (one ``BLOCK_N``-token
chunk of one attended block); program ``(b * Hkv + h, split, row_block)`` takes units
``split, split + SPLITS, ...`` for all query heads of key/value head ``h`` (GQA: K/V read
once per group, never copied), keeps an online softmax in base 2 and writes partial
``(m, l, acc)``. The last program of each (batch, head, row block) to finish -- an atomic
counter with acquire/release semantics -- combines the splits and writes ``out`` and
``lse``, so a call is one launch (``fused=False``: a second, tiny combine kernel instead).
Scratch buffers and counters are cached per (device, stream, shape): calls on one stream
are ordered; concurrent calls on different streams get different buffers.

Block lists, with nothing copied from the host per step:

* ``power`` (base 2), ``sliding_window`` and ``full`` are enumerated *inside* the kernel
  (sink slots, window slots, power-of-two slots), from scalar arguments only;
* any other pattern uses a small device table (union of the attended blocks of the query
  blocks, with a per-entry bit mask saying which query block attends it), built by torch
  ops on the device from the pattern's ``block_rule`` and cached per (pattern, Sq, Sk).

No backward: the dispatcher routes inputs that require grad to FlexAttention.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import torch

from ..patterns import Pattern

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is an optional dependency
    triton = None

# Most queries per call (speculative decoding, tiny chunks); beyond that use FlexAttention.
DECODE_MAX_Q = 16
MAX_HEAD_DIM = 256
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_TABLE_CACHE_SIZE = 64
_table_cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
_scratch: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
_LOG2E = 1.4426950408889634

MODE_TABLE, MODE_CLOSED = 0, 1
# Single launch (split-K with an in-kernel semaphore) instead of partial + combine kernels.
FUSED = True


def _device_ok(t: torch.Tensor) -> bool:
    return t.device.type == "cuda" or (_INTERPRET and t.device.type == "cpu")


def supports(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the kernel can serve these inputs (see :func:`check_supported`)."""
    try:
        check_supported(q, k)
    except ValueError:
        return False
    return True


def check_supported(q: torch.Tensor, k: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the reason the decode kernel cannot serve the input."""
    if triton is None:
        raise ValueError("backend='decode' needs triton (pip install 'powerattn[triton]')")
    if q.shape[2] > DECODE_MAX_Q:
        raise ValueError(
            f"backend='decode' serves Sq <= {DECODE_MAX_Q} queries, got Sq={q.shape[2]}"
        )
    if not _device_ok(q):
        raise ValueError(
            f"backend='decode' runs on CUDA (or CPU under TRITON_INTERPRET=1), got {q.device}"
        )
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"backend='decode' serves head dims <= {MAX_HEAD_DIM}, got {q.shape[-1]}")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"backend='decode' serves float16/bfloat16/float32, got {q.dtype}")


if triton is not None:

    @triton.jit
    def _is_pow2(d):
        return (d & (d - 1)) == 0

    @triton.jit
    def _rule(qb, kb, sink, window, HAS_POW: tl.constexpr):
        """Closed-form block rule (power / sliding window / full), causal at block level."""
        d = qb - kb
        ok = (d < window) | (kb < sink)
        if HAS_POW:
            ok = ok | _is_pow2(d)
        return (kb <= qb) & ok

    @triton.jit
    def _decode_partial_kernel(
        Q, K, V, O_part, M_part, L_part, TBL, BITS, CNT, Out, LSE, COUNTER,
        stride_qb, stride_qh, stride_qs, stride_qd,
        stride_kb, stride_kh, stride_ks, stride_kd,
        stride_vb, stride_vh, stride_vs, stride_vd,
        stride_ob, stride_oh, stride_os, stride_od,
        Sq, Sk, qk_scale, bs,
        qb_first, n_qb, n_slots, sink, window, wslots, e0,
        G, HKV, SPLITS, N_MB,
        MODE: tl.constexpr, HAS_POW: tl.constexpr, CHUNKS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        HEAD_D: tl.constexpr, PREC: tl.constexpr, PREC_PV: tl.constexpr, DOT_F32: tl.constexpr,
        FUSED: tl.constexpr, SPLITS_P2: tl.constexpr,
    ):  # fmt: skip
        i_bh = tl.program_id(0)
        i_s = tl.program_id(1)
        i_m = tl.program_id(2)
        i_b = i_bh // HKV
        i_h = i_bh % HKV
        o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)  # row = g * Sq + s
        o_d = tl.arange(0, BLOCK_D)
        m_row = o_m < G * Sq
        m_d = o_d < HEAD_D
        g = o_m // Sq
        s = o_m % Sq
        pos = Sk - Sq + s  # absolute query positions
        qb_r = pos // bs
        p_q = (
            Q + i_b * stride_qb + (i_h * G + g)[:, None] * stride_qh
            + s[:, None] * stride_qs + o_d[None, :] * stride_qd
        )  # fmt: skip
        b_q = tl.load(p_q, mask=m_row[:, None] & m_d[None, :], other=0.0)  # [BM, BD]
        if DOT_F32:  # Triton's interpreter miscomputes bf16 dots: upcast (exact) there
            b_q = b_q.to(tl.float32)
        b_m = tl.full([BLOCK_M], float("-inf"), tl.float32)
        b_l = tl.zeros([BLOCK_M], tl.float32)
        b_acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        k_base = K + i_b * stride_kb + i_h * stride_kh
        v_base = V + i_b * stride_vb + i_h * stride_vh
        if MODE == 0:
            n_units = tl.load(CNT) * CHUNKS
        else:
            n_units = n_qb * n_slots * CHUNKS
        for u in range(i_s, n_units, SPLITS):
            slot = u // CHUNKS
            c = u % CHUNKS
            if MODE == 0:
                kb = tl.load(TBL + slot)
                bits = tl.load(BITS + slot)
                valid = kb >= 0
            else:
                t = slot // n_slots
                sl = slot % n_slots
                qbt = qb_first + t
                if sl < sink:
                    kb = sl
                elif sl < sink + wslots:
                    kb = qbt - (sl - sink)
                else:
                    kb = qbt - (1 << (sl - sink - wslots + e0))
                # In range, allowed, and not a duplicate of a sink slot ...
                valid = (kb >= 0) & ((sl < sink) | (kb >= sink))
                valid = valid & _rule(qbt, kb, sink, window, HAS_POW)
                # ... nor already visited for an earlier query block of this call.
                for tt in range(0, t):
                    valid = valid & ~_rule(qb_first + tt, kb, sink, window, HAS_POW)
            if valid:
                o_n = kb * bs + c * BLOCK_N + tl.arange(0, BLOCK_N)
                m_n = (o_n < Sk) & (o_n < (kb + 1) * bs)
                p_k = k_base + o_n[None, :] * stride_ks + o_d[:, None] * stride_kd
                b_kt = tl.load(p_k, mask=m_n[None, :] & m_d[:, None], other=0.0)  # [BD, BN]
                if DOT_F32:
                    b_kt = b_kt.to(tl.float32)
                b_s = tl.dot(b_q, b_kt, input_precision=PREC) * qk_scale  # [BM, BN], log2
                if MODE == 0:
                    allowed = ((bits >> (qb_r - qb_first)) & 1) != 0  # [BM]
                else:
                    allowed = _rule(qb_r, kb, sink, window, HAS_POW)
                keep = allowed[:, None] & m_n[None, :] & (o_n[None, :] <= pos[:, None])
                b_s = tl.where(keep, b_s, float("-inf"))
                m_new = tl.maximum(b_m, tl.max(b_s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # fully masked rows
                alpha = tl.exp2(b_m - m_safe)
                b_p = tl.exp2(b_s - m_safe[:, None])
                b_l = b_l * alpha + tl.sum(b_p, 1)
                p_v = v_base + o_n[:, None] * stride_vs + o_d[None, :] * stride_vd
                b_v = tl.load(p_v, mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
                # P stays float32 (V is exact in tf32): decode is memory-bound, and rounding P
                # to bf16 as flash attention does would cost accuracy for no speed.
                b_acc = b_acc * alpha[:, None] + tl.dot(
                    b_p, b_v.to(tl.float32), input_precision=PREC_PV
                )
                b_m = m_new
        # Partials: (B*HKV, SPLITS, N_MB * BLOCK_M[, BLOCK_D]).
        row = (i_bh * SPLITS + i_s) * (N_MB * BLOCK_M) + o_m
        tl.store(M_part + row, b_m)
        tl.store(L_part + row, b_l)
        tl.store(O_part + row[:, None] * BLOCK_D + o_d[None, :], b_acc)
        if FUSED:
            # Single pass: the last program of this (batch, head, row block) to finish
            # combines the splits (a semaphore; the barrier orders all threads' stores
            # before the release, loads below bypass L1).
            tl.debug_barrier()
            p_cnt = COUNTER + i_bh * N_MB + i_m
            if tl.atomic_add(p_cnt, 1, sem="acq_rel") == SPLITS - 1:
                for r in range(0, BLOCK_M):
                    if i_m * BLOCK_M + r < G * Sq:
                        _combine_row(
                            O_part, M_part, L_part, Out, LSE,
                            stride_ob, stride_oh, stride_os, stride_od,
                            i_bh, i_m * BLOCK_M + r, Sq, G, HKV, SPLITS, N_MB,
                            BLOCK_M, BLOCK_D, HEAD_D, SPLITS_P2,
                        )  # fmt: skip
                tl.atomic_xchg(p_cnt, 0)  # reset for the next call

    @triton.jit
    def _combine_row(
        O_part, M_part, L_part, Out, LSE,
        stride_ob, stride_oh, stride_os, stride_od,
        i_bh, row, Sq, G, HKV, SPLITS, N_MB,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_D: tl.constexpr,
        SPLITS_P2: tl.constexpr,
    ):  # fmt: skip
        """Merge the SPLITS partial (m, l, acc) of one query row; write out and lse."""
        o_sp = tl.arange(0, SPLITS_P2)
        o_d = tl.arange(0, BLOCK_D)
        m_sp = o_sp < SPLITS
        rows = (i_bh * SPLITS + o_sp) * (N_MB * BLOCK_M) + row  # [SP]
        b_m = tl.load(M_part + rows, mask=m_sp, other=float("-inf"), cache_modifier=".cg")
        b_l = tl.load(L_part + rows, mask=m_sp, other=0.0, cache_modifier=".cg")
        b_o = tl.load(
            O_part + rows[:, None] * BLOCK_D + o_d[None, :],
            mask=m_sp[:, None],
            other=0.0,
            cache_modifier=".cg",
        )  # [SP, BD]
        m_max = tl.max(b_m, 0)
        m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
        w = tl.exp2(b_m - m_safe)  # [SP]
        l_tot = tl.sum(b_l * w, 0)
        empty = l_tot == 0.0
        out = tl.sum(w[:, None] * b_o, 0) / tl.where(empty, 1.0, l_tot)  # [BD]
        lse = tl.where(empty, float("-inf"), m_safe + tl.log2(tl.where(empty, 1.0, l_tot)))
        i_b = i_bh // HKV
        qh = (i_bh % HKV) * G + row // Sq
        s = row % Sq
        p_o = Out + i_b * stride_ob + qh * stride_oh + s * stride_os + o_d * stride_od
        tl.store(p_o, out.to(Out.dtype.element_ty), mask=o_d < HEAD_D)
        tl.store(LSE + (i_b * HKV * G + qh) * Sq + s, lse * 0.6931471805599453)  # natural log

    @triton.jit
    def _decode_combine_kernel(
        O_part, M_part, L_part, Out, LSE,
        stride_ob, stride_oh, stride_os, stride_od,
        Sq, G, HKV, SPLITS, N_MB,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_D: tl.constexpr,
        SPLITS_P2: tl.constexpr,
    ):  # fmt: skip
        _combine_row(
            O_part, M_part, L_part, Out, LSE,
            stride_ob, stride_oh, stride_os, stride_od,
            tl.program_id(0), tl.program_id(1), Sq, G, HKV, SPLITS, N_MB,
            BLOCK_M, BLOCK_D, HEAD_D, SPLITS_P2,
        )  # fmt: skip


def _closed_form(pattern: Pattern, qb_last: int) -> tuple[int, int, bool] | None:
    """(sink, rule window, has_pow) when the pattern's block list has a closed form."""
    name = type(pattern).name
    if name == "power" and getattr(pattern, "base", None) == 2:
        return pattern.sink, pattern.window, True
    if name == "sliding_window":
        return pattern.sink, pattern.window, False
    if name == "full":
        return 0, qb_last + 1, False
    return None


def _device_table(pattern: Pattern, qb_first: int, n_qb: int, n_kb: int, device):
    """Union of the key blocks attended by query blocks ``qb_first ..`` (left-packed, -1
    padded), per-entry bits (bit t: query block ``qb_first + t`` attends it) and the count,
    built on ``device`` with torch ops from the pattern's ``block_rule``."""
    key = (pattern, qb_first, n_qb, n_kb, device)
    hit = _table_cache.get(key)
    if hit is not None:
        _table_cache.move_to_end(key)
        return hit
    qb = qb_first + torch.arange(n_qb, device=device, dtype=torch.int64)[:, None]
    kb = torch.arange(n_kb, device=device, dtype=torch.int64)[None, :]
    allowed = (kb <= qb) & pattern.block_rule(qb, kb)  # (n_qb, n_kb)
    weight = torch.bitwise_left_shift(torch.ones_like(qb), qb - qb_first)  # (n_qb, 1)
    bits = (allowed.long() * weight).sum(0)  # (n_kb,)
    union = bits != 0
    order = torch.sort((~union).to(torch.int8), stable=True).indices
    tbl = torch.where(union[order], order, -1).to(torch.int32)
    hit = (tbl, bits[order].to(torch.int32), union.sum().to(torch.int32).reshape(1))
    _table_cache[key] = hit
    if len(_table_cache) > _TABLE_CACHE_SIZE:
        _table_cache.popitem(last=False)
    return hit


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    scale: float,
    splits: int | None = None,
    out: torch.Tensor | None = None,
    fused: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse attention for a few queries at the end of the keys (no autograd).

    Args:
        q: ``(B, Hq, Sq, D)`` with ``Sq <= DECODE_MAX_Q``; k, v: ``(B, Hkv, Sk, D)``; any
            strides (e.g. a KV-cache slice); float16, bfloat16 or float32.
        pattern: any pattern; power/sliding_window/full enumerate their blocks in-kernel.
        scale: softmax scale.
        splits: programs per (batch, KV head); default: enough to fill the GPU.
        out: optional ``(B, Hq, Sq, D)`` tensor of q's dtype to write into.
        fused: one launch (the last program of each head combines the splits) instead of a
            second combine kernel; default :data:`FUSED`.
    Returns:
        ``out (B, Hq, Sq, D)`` in q's dtype and ``lse (B, Hq, Sq)`` float32.
    """
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    bs = pattern.block_size
    qb_first, qb_last = (Sk - Sq) // bs, (Sk - 1) // bs
    n_qb, n_kb = qb_last - qb_first + 1, qb_last + 1
    BLOCK_D = max(16, triton.next_power_of_2(D))
    BLOCK_M = min(64, max(16, triton.next_power_of_2(G * Sq)))
    n_mb = triton.cdiv(G * Sq, BLOCK_M)
    BLOCK_N = min(64, max(16, triton.next_power_of_2(bs)))
    chunks = triton.cdiv(bs, BLOCK_N)
    closed = _closed_form(pattern, qb_last)
    dummy = torch.empty(1, dtype=torch.int32, device=q.device)
    if closed is not None:
        sink, window, has_pow = closed
        wslots = max(window, 1)
        e0 = (wslots - 1).bit_length()  # smallest e with 2**e >= wslots
        n_pow = max(0, qb_last.bit_length() - e0) if has_pow else 0
        n_slots = min(sink, n_kb) + min(wslots, n_kb) + n_pow
        mode, tbl, bits, cnt = MODE_CLOSED, dummy, dummy, dummy
        n_units = n_qb * n_slots * chunks
    else:
        sink = window = wslots = e0 = n_slots = 0
        has_pow = False
        mode = MODE_TABLE
        tbl, bits, cnt = _device_table(pattern, qb_first, n_qb, n_kb, q.device)
        n_units = n_kb * chunks  # upper bound (the count stays on the device)
    if splits is None:
        splits = max(1, min(n_units, math.ceil(2 * _num_sms(q.device) / (B * Hkv * n_mb)), 64))
    skey = (q.device, _stream_id(q.device), B * Hkv, splits, n_mb, BLOCK_M, BLOCK_D)
    scratch = _scratch.get(skey)
    if scratch is None:
        rows = B * Hkv * splits * n_mb * BLOCK_M
        scratch = (
            torch.empty(rows * BLOCK_D, dtype=torch.float32, device=q.device),
            torch.empty(rows, dtype=torch.float32, device=q.device),
            torch.empty(rows, dtype=torch.float32, device=q.device),
            torch.zeros(B * Hkv * n_mb, dtype=torch.int32, device=q.device),  # semaphores
        )
        _scratch[skey] = scratch
    o_part, m_part, l_part, counter = scratch
    out = torch.empty_like(q) if out is None else out
    lse = torch.empty((B, Hq, Sq), dtype=torch.float32, device=q.device)
    fused = FUSED if fused is None else fused
    prec = "ieee" if q.dtype == torch.float32 or _INTERPRET else "tf32"
    splits_p2 = max(2, triton.next_power_of_2(splits))
    _decode_partial_kernel[(B * Hkv, splits, n_mb)](
        q, k, v, o_part, m_part, l_part, tbl, bits, cnt, out, lse, counter,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        Sq, Sk, scale * _LOG2E, bs,
        qb_first, n_qb, n_slots, sink, window, wslots, e0,
        G, Hkv, splits, n_mb,
        MODE=mode, HAS_POW=has_pow, CHUNKS=chunks,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, HEAD_D=D, PREC=prec,
        PREC_PV="ieee" if q.dtype == torch.float32 or _INTERPRET else "tf32",
        DOT_F32=_INTERPRET and q.dtype == torch.bfloat16,
        FUSED=fused, SPLITS_P2=splits_p2,
        num_warps=4, num_stages=2,
    )  # fmt: skip
    if not fused:
        _decode_combine_kernel[(B * Hkv, G * Sq)](
            o_part, m_part, l_part, out, lse,
            *out.stride(),
            Sq, G, Hkv, splits, n_mb,
            BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, HEAD_D=D, SPLITS_P2=splits_p2,
            num_warps=4,
        )  # fmt: skip
    return out, lse


def _stream_id(device: torch.device) -> int:
    """Scratch buffers are per stream: calls on one stream run in order."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
