"""Decode backend: one Triton kernel that reads only the attended key/value blocks.

For ``Sq <= DECODE_MAX_Q`` queries at the end of the keys, the attended key blocks are known
from the position. Work is split over *units* (one ``BLOCK_N``-token chunk of one attended
block of one query block); program ``(b * Hkv + h, split, row_block)`` takes units
``split, split + SPLITS, ...`` for all query heads of key/value head ``h`` (GQA: K/V read
once per group, never copied), keeps an online softmax in base 2 and writes partial
``(m, l, acc)``. The last program of each (batch, head, row block) to finish -- an atomic
counter with acquire/release semantics, reset by that program -- combines the splits and
writes ``out`` (and ``lse``), so a call is one launch (``fused=False``: a second, tiny
combine kernel instead).

Per-sequence lengths (a KV cache): with ``cache_seqlens`` (``(B,)`` int32/int64 on the
device) sequence ``b`` has keys ``k[b, :, :cache_seqlens[b]]`` and its queries are the last
``Sq`` positions before ``cache_seqlens[b]``; the kernel reads the lengths itself, so there
is no host-device synchronisation and no loop over the batch. Left padding: a ``(2, B)``
tensor of ends and starts; the kernel adds row ``b``'s start to its key/value pointers and
counts its positions from there.

Per-call host work is constant in the context length. Everything that depends on the
pattern, the shapes and the *length bucket* (the number of key blocks rounded up to a power
of two) is a :class:`_Plan`, cached by value (``functools.lru_cache``):

* ``power`` (base 2), ``sliding_window`` and ``full`` (see
  :meth:`~powerattn.patterns.Pattern.decode_closed_form`) are enumerated *inside* the kernel
  (sink slots, window slots, power-of-two slots) from constants;
* any other pattern reads a device table of its block layout over the bucket (row ``qb``:
  the attended key blocks of query block ``qb``), built once per bucket.

Scratch buffers (partials and the counters) are cached per (device, stream), at most
:data:`_WORKSPACE_STREAMS` of them: calls on one stream are ordered. During CUDA-graph
capture they are allocated per call instead, so a graph never shares them with eager calls
or with another graph: the partials from the graph's pool, the counters as a slice of a
zeroed per-device arena that no other call is ever given (the kernel leaves its counters at
0, so they stay zero between replays, and the graph needs no memset node per call; when the
arena is spent, a zeroed tensor from the pool, i.e. a captured memset, as before). Build the
plan before capturing (one eager call: it also compiles the kernel and makes the arena).

:func:`decode_forward` adds the dense SDPA shortcut (see :func:`dense_is_exact`) and is what
the public operators call; it is also the ``powerattn::decode`` custom op (with a fake
implementation) so that it works inside ``torch.compile(fullgraph=True)``.

An eager decode step is host-bound, so :func:`~powerattn.sparse_attention` caches what a
validated decode call decided (a *step*: route, plan, scale, the key lengths it holds for,
direct launchers) and answers repeat calls from it after a few comparisons
(:func:`cached_step`); first calls, gradients, tracing and bad input take the full path.

No backward: the dispatcher routes inputs that require grad to FlexAttention.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import warnings
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from ..patterns import PATTERNS, Pattern, get_pattern

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is an optional dependency
    triton = None

# Most queries per call (speculative decoding, tiny chunks); beyond that use FlexAttention.
DECODE_MAX_Q = 16
MAX_HEAD_DIM = 256
# Dense SDPA (no mask, enable_gqa) answers a one-query call when the pattern attends every
# key at that length (then it is exact) and Sk is at most this many keys. On the H200 dense
# SDPA beat the kernel on `full` at every length measured, 4K..128K (0.072 against 0.111 ms at
# 128K: the kernel streams at ~2.4 TB/s where SDPA reaches ~3.7; results/kernel/decode-session5),
# so there is no limit in practice; a GPU where the kernel wins would lower it
# (`scripts/gpu_decode.py` times both and prints the value its data implies).
DENSE_DECODE_MAX_KEYS = 1 << 40
# Work split: enough programs for this many per SM, each with at least this many units.
TARGET_PROGRAMS_PER_SM = 2
MIN_UNITS_PER_SPLIT = 2
SPLITS_MAX = 64  # also the width of the combine's (m, l) load
# Tile and launch settings (a unit is BLOCK_N_MAX tokens of a block, or the whole block);
# "wide" grids are those where (batch x KV heads) alone fills half the SMs.
# H200 sweeps, in-graph GPU time, Qwen2-7B shapes, power: with 4 warps and 2 stages,
# 128-token tiles were 4-5 % faster for small grids (session 5, decode-session5) and 64-token
# tiles 17 % faster for wide ones (B=32: 0.063 vs 0.076 ms). Session 8's sweep of tile x
# warps x stages (scripts/gpu_decode_tune.py, results/kernel/session8/): for B=1, 64-token
# tiles with 2 warps and 3 stages took 0.0130 / 0.0132 / 0.0147 ms at 2K / 8K / 32K keys
# against 0.0144 / 0.0147 / 0.0177 for (128, 4, 2), the best of 72 configs.
BLOCK_N_MAX = 64
NUM_WARPS = 2
NUM_STAGES = 3
BLOCK_N_MAX_WIDE = 64
NUM_WARPS_WIDE = 4
NUM_STAGES_WIDE = 2
FUSED = True  # single launch (split-K with an in-kernel semaphore)
# Issue each unit's V load together with its K load (before the QK dot) rather than after the
# softmax: one HBM round trip less per unit on the critical path, for more live registers.
# Off until the GPU sweep (`scripts/gpu_decode.py`) says it is faster.
EARLY_V_LOAD = False
# Launch through the compiled kernel's launcher after the first call (see _launch_fast).
FAST_LAUNCH = True

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_LOG2E = 1.4426950408889634
_I32_MAX = 2**31 - 1
_RUNNERS_PER_PLAN = 16
# The kernel's constexpr parameters, in signature order (the direct launcher takes them too).
_CONSTEXPRS = (
    "SQ", "G", "HKV", "BS", "SINK", "WINDOW", "WSLOTS", "E0", "MODE", "HAS_POW", "HAS_SEQLENS",
    "NEED_LSE", "CHUNKS", "N_MB", "BLOCK_M", "BLOCK_N", "BLOCK_D", "HEAD_D", "BLOCK_MC", "SPC",
    "SPLITS_CAP", "PREC", "DOT_F32", "FUSED", "EARLY_V",
)  # fmt: skip
_PLAN_CACHE_SIZE = 128
_WORKSPACE_STREAMS = 8
_FULL_PROBE_BLOCKS = 1024  # query blocks probed for "attends every earlier block"
# Kernel modes: a device table, closed form with a finite window, closed form "every block".
MODE_TABLE, MODE_CLOSED, MODE_ALL = 0, 1, 2
_workspaces: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
# Split counters for calls captured in CUDA graphs: per device, a zeroed int32 arena made
# outside any capture and the next index never handed out (a bump pointer: a slice belongs
# to one captured call for good). 64K counters are ~700 captured B=32 calls of Qwen2-7B heads.
_GRAPH_COUNTERS = 1 << 16
_graph_arenas: dict[torch.device, list] = {}


def kernel_device(t: torch.Tensor) -> bool:
    """Whether the kernel can run on ``t``'s device (CUDA; the CPU in the interpreter)."""
    return t.device.type == "cuda" or (_INTERPRET and t.device.type == "cpu")


_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def supports(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether the kernel can serve these inputs (:func:`check_supported` says why not).
    Plain comparisons, no exception: ``auto`` asks this on every decode step."""
    return (
        triton is not None
        and q.shape[2] <= DECODE_MAX_Q
        and q.shape[3] <= MAX_HEAD_DIM
        and q.dtype in _KERNEL_DTYPES
        and kernel_device(q)
    )


def check_supported(q: torch.Tensor, k: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the reason the decode kernel cannot serve the input."""
    if triton is None:
        raise ValueError("backend='decode' needs triton (pip install 'powerattn[triton]')")
    if q.shape[2] > DECODE_MAX_Q:
        raise ValueError(
            f"backend='decode' serves Sq <= {DECODE_MAX_Q} queries, got Sq={q.shape[2]}"
        )
    if not kernel_device(q):
        raise ValueError(
            f"backend='decode' runs on CUDA (or CPU under TRITON_INTERPRET=1), got {q.device}"
        )
    if q.shape[-1] > MAX_HEAD_DIM:
        raise ValueError(f"backend='decode' serves head dims <= {MAX_HEAD_DIM}, got {q.shape[-1]}")
    if q.dtype not in _KERNEL_DTYPES:
        raise ValueError(f"backend='decode' serves float16/bfloat16/float32, got {q.dtype}")


# ----------------------------------------------------------------------- dense shortcut
@functools.lru_cache(maxsize=64)
def full_causal_blocks(pattern: Pattern) -> int:
    """How many leading query blocks attend *every* earlier key block (``sys.maxsize``: all
    of them, e.g. ``full``). Below that the pattern is full causal attention."""
    closed = pattern.decode_closed_form()
    if closed is not None and closed[1] is None:
        return sys.maxsize
    n = _FULL_PROBE_BLOCKS
    count = pattern.block_layout(n).kv_count.numpy()
    full = count == np.arange(1, n + 1)
    return n if full.all() else int(full.argmin())


def dense_is_exact(pattern: Pattern, sq: int, sk: int) -> bool:
    """Whether auto may answer a decode call with plain dense SDPA (no mask): one query, the
    pattern attends every key at this length (exact), and ``sk <= DENSE_DECODE_MAX_KEYS``.
    ``power(256, window 5, sink 1)``: up to 1536 keys."""
    return (
        sq == 1
        and sk <= DENSE_DECODE_MAX_KEYS
        and (sk - 1) // pattern.block_size < full_causal_blocks(pattern)
    )


# ------------------------------------------------------------------------------ kernel
if triton is not None:

    @triton.jit(do_not_specialize=["Sk", "Sk_cap", "n_slots", "splits"])
    def _decode_kernel(
        Q, K, V, Out, LSE, WS, CNT, SEQLENS, TBL, TCNT,
        stride_qb, stride_qh, stride_qs, stride_qd,
        stride_kb, stride_kh, stride_ks, stride_kd,
        stride_vb, stride_vh, stride_vs, stride_vd,
        Sk, Sk_cap, qk_scale, n_slots, splits,
        SQ: tl.constexpr, G: tl.constexpr, HKV: tl.constexpr, BS: tl.constexpr,
        SINK: tl.constexpr, WINDOW: tl.constexpr, WSLOTS: tl.constexpr, E0: tl.constexpr,
        MODE: tl.constexpr, HAS_POW: tl.constexpr, HAS_SEQLENS: tl.constexpr,
        NEED_LSE: tl.constexpr, CHUNKS: tl.constexpr, N_MB: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        HEAD_D: tl.constexpr, BLOCK_MC: tl.constexpr, SPC: tl.constexpr,
        SPLITS_CAP: tl.constexpr, PREC: tl.constexpr, DOT_F32: tl.constexpr,
        FUSED: tl.constexpr, EARLY_V: tl.constexpr,
    ):  # fmt: skip
        i_bh = tl.program_id(0)
        i_s = tl.program_id(1)
        i_m = tl.program_id(2)
        i_b = i_bh // HKV
        i_h = i_bh % HKV
        if HAS_SEQLENS:
            sk = tl.load(SEQLENS + i_b).to(tl.int32)
        else:
            sk = Sk
        bad = sk > Sk_cap  # a length past the cache: NaN output (no sync to raise)
        sk = tl.maximum(tl.minimum(sk, Sk_cap), 0)
        row0 = 0
        if HAS_SEQLENS == 2:  # left padding: SEQLENS is (2, B), ends then starts
            row0 = tl.load(SEQLENS + tl.num_programs(0) // HKV + i_b).to(tl.int32)
            row0 = tl.maximum(tl.minimum(row0, sk), 0)
            sk = sk - row0  # the row's keys are slots row0..end-1, its positions 0..sk-1
        q_start = sk - SQ  # absolute position of query 0 (negative: rows without keys)
        qb_first = tl.maximum(q_start, 0) // BS
        n_qb = tl.maximum(sk - 1, 0) // BS - qb_first + 1
        o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)  # row = g * SQ + s
        o_d = tl.arange(0, BLOCK_D)
        m_row = o_m < G * SQ
        m_d = o_d < HEAD_D
        g = o_m // SQ
        s = o_m % SQ
        pos = q_start + s  # [BM]
        row_ok = m_row & (pos >= 0)
        qb_r = tl.where(row_ok, tl.maximum(pos, 0) // BS, -1)  # [BM]
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
        # int64: a (64, 128K, 8, 128) cache is past 2**31 elements.
        k_base = K + i_b.to(tl.int64) * stride_kb + i_h * stride_kh
        v_base = V + i_b.to(tl.int64) * stride_vb + i_h * stride_vh
        if HAS_SEQLENS == 2:
            k_base += row0.to(tl.int64) * stride_ks
            v_base += row0.to(tl.int64) * stride_vs
        o_c = tl.arange(0, BLOCK_N)
        n_units = n_qb * n_slots * CHUNKS
        # Branch-free body (invalid units load nothing): lets Triton pipeline the loads.
        for u in range(i_s, n_units, splits):
            slot = u // CHUNKS
            c = u % CHUNKS
            t = slot // n_slots
            sl = slot % n_slots
            qbt = qb_first + t  # the query block this unit serves
            if MODE == 0:
                valid = sl < tl.load(TCNT + qbt)
                kb = tl.load(TBL + qbt * n_slots + sl, mask=valid, other=0)
            else:
                is_sink = sl < SINK
                j = sl - SINK
                if MODE == 1:
                    # Window slots: distances 0..WSLOTS-1; then powers 2**E0, 2**(E0+1), ..
                    is_win = j < WSLOTS
                    d_pow = 1 << (tl.maximum(j - WSLOTS, 0) + E0)
                    win_ok = j < WINDOW
                    if HAS_POW:
                        win_ok = win_ok | ((j & (j - 1)) == 0)
                    kb = qbt - tl.where(is_win, j, d_pow)
                    ok = ((j >= WSLOTS) | win_ok) & (kb >= SINK)
                else:
                    kb = qbt - j
                    ok = kb >= SINK
                # A sink slot serves a block <= qbt; other slots skip the sink blocks.
                valid = tl.where(is_sink, sl <= qbt, ok)
                kb = tl.where(valid, tl.where(is_sink, sl, kb), 0)
            o_n = kb.to(tl.int64) * BS + c * BLOCK_N + o_c  # [BN]
            # tl.where, not `&`: the interpreter turns scalar & vector bools into int32.
            m_n = tl.where(valid, (c * BLOCK_N + o_c < BS) & (o_n < sk), False)
            p_k = k_base + o_n[None, :] * stride_ks + o_d[:, None] * stride_kd
            b_kt = tl.load(p_k, mask=m_n[None, :] & m_d[:, None], other=0.0)  # [BD, BN]
            p_v = v_base + o_n[:, None] * stride_vs + o_d[None, :] * stride_vd
            if EARLY_V:
                b_v = tl.load(p_v, mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
            if DOT_F32:
                b_kt = b_kt.to(tl.float32)
            b_s = tl.dot(b_q, b_kt, input_precision=PREC) * qk_scale  # [BM, BN], log2
            # Only the rows of query block qbt take this unit (a block attended by two query
            # blocks of one call is a unit of each, so no row counts it twice).
            keep = (qb_r == qbt)[:, None] & m_n[None, :] & (o_n[None, :] <= pos[:, None])
            b_s = tl.where(keep, b_s, float("-inf"))
            m_new = tl.maximum(b_m, tl.max(b_s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing yet
            alpha = tl.exp2(b_m - m_safe)
            b_p = tl.exp2(b_s - m_safe[:, None])
            b_l = b_l * alpha + tl.sum(b_p, 1)
            if not EARLY_V:
                b_v = tl.load(p_v, mask=m_n[:, None] & m_d[None, :], other=0.0)  # [BN, BD]
            # P stays float32 (V is exact in tf32): decode is memory-bound, and rounding P
            # to bf16 as flash attention does would cost accuracy for no speed.
            b_acc = b_acc * alpha[:, None] + tl.dot(b_p, b_v.to(tl.float32), input_precision=PREC)
            b_m = m_new
        # Partials: row ((bh * N_MB + m) * splits + split) * BLOCK_M + r of (O | M | L).
        n_rows = tl.num_programs(0) * N_MB * splits * BLOCK_M
        base = (i_bh * N_MB + i_m) * splits
        row = (base + i_s) * BLOCK_M + tl.arange(0, BLOCK_M)
        tl.store(WS + n_rows * BLOCK_D + row, b_m)
        tl.store(WS + n_rows * (BLOCK_D + 1) + row, b_l)
        tl.store(WS + row[:, None] * BLOCK_D + o_d[None, :], b_acc)
        if FUSED:
            # The last program of this (batch, head, row block) combines the splits (the
            # barrier orders all threads' stores before the release; loads below bypass L1).
            tl.debug_barrier()
            p_cnt = CNT + i_bh * N_MB + i_m
            if tl.atomic_add(p_cnt, 1, sem="acq_rel") == splits - 1:
                _combine(
                    WS, Out, LSE, i_bh, i_m, n_rows, base, splits, bad,
                    SQ, G, HKV, N_MB, BLOCK_M, BLOCK_D, HEAD_D, BLOCK_MC, SPC, SPLITS_CAP,
                    NEED_LSE,
                )  # fmt: skip
                tl.atomic_xchg(p_cnt, 0)  # reset for the next call

    @triton.jit
    def _combine(
        WS, Out, LSE, i_bh, i_m, n_rows, base, splits, bad,
        SQ: tl.constexpr, G: tl.constexpr, HKV: tl.constexpr, N_MB: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_D: tl.constexpr,
        BLOCK_MC: tl.constexpr, SPC: tl.constexpr, SPLITS_CAP: tl.constexpr,
        NEED_LSE: tl.constexpr,
    ):  # fmt: skip
        """Merge the partial (m, l, acc) of the splits of one row block; write out and lse.
        All rows at once: one (m, l) load, then the accumulators SPC splits at a time."""
        o_r = tl.arange(0, BLOCK_MC)
        o_d = tl.arange(0, BLOCK_D)
        rr = i_m * BLOCK_M + o_r  # row = g * SQ + s
        r_ok = rr < G * SQ
        o_sp = tl.arange(0, SPLITS_CAP)
        m_sp = (o_sp < splits)[:, None] & r_ok[None, :]
        ml = (base + o_sp)[:, None] * BLOCK_M + o_r[None, :]  # [SP, BMC]
        p_m = WS + n_rows * BLOCK_D
        p_l = WS + n_rows * (BLOCK_D + 1)
        b_m = tl.load(p_m + ml, mask=m_sp, other=float("-inf"), cache_modifier=".cg")
        b_l = tl.load(p_l + ml, mask=m_sp, other=0.0, cache_modifier=".cg")
        m_max = tl.max(b_m, 0)  # [BMC]
        m_safe = tl.where(m_max == float("-inf"), 0.0, m_max)
        l_tot = tl.sum(b_l * tl.exp2(b_m - m_safe[None, :]), 0)  # [BMC]
        acc = tl.zeros([BLOCK_MC, BLOCK_D], tl.float32)
        for sp0 in range(0, splits, SPC):
            o_c = sp0 + tl.arange(0, SPC)
            m_c = (o_c < splits)[:, None] & r_ok[None, :]  # [SPC, BMC]
            rows = (base + o_c)[:, None] * BLOCK_M + o_r[None, :]
            w = tl.exp2(
                tl.load(p_m + rows, mask=m_c, other=float("-inf"), cache_modifier=".cg")
                - m_safe[None, :]
            )  # [SPC, BMC]
            b_o = tl.load(
                WS + rows[:, :, None] * BLOCK_D + o_d[None, None, :],
                mask=m_c[:, :, None],
                other=0.0,
                cache_modifier=".cg",
            )  # [SPC, BMC, BD]
            acc += tl.sum(w[:, :, None] * b_o, 0)
        empty = l_tot == 0.0
        out = acc / tl.where(empty, 1.0, l_tot)[:, None]
        out = tl.where(bad, float("nan"), out)
        i_b = i_bh // HKV
        qh = (i_bh % HKV) * G + rr // SQ
        o_row = (i_b * HKV * G + qh) * SQ + rr % SQ  # Out is contiguous (B, Hq, SQ, D)
        p_o = Out + o_row[:, None] * HEAD_D + o_d[None, :]
        tl.store(p_o, out.to(Out.dtype.element_ty), mask=r_ok[:, None] & (o_d < HEAD_D)[None, :])
        if NEED_LSE:
            lse = tl.where(empty, float("-inf"), m_safe + tl.log2(tl.where(empty, 1.0, l_tot)))
            lse = tl.where(bad, float("nan"), lse)
            tl.store(LSE + o_row, lse * 0.6931471805599453, mask=r_ok)  # natural log

    @triton.jit(do_not_specialize=["Sk_cap", "splits"])
    def _decode_combine_kernel(
        WS, Out, LSE, SEQLENS, Sk_cap, splits,
        SQ: tl.constexpr, G: tl.constexpr, HKV: tl.constexpr, N_MB: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_D: tl.constexpr,
        BLOCK_MC: tl.constexpr, SPC: tl.constexpr, SPLITS_CAP: tl.constexpr,
        NEED_LSE: tl.constexpr, HAS_SEQLENS: tl.constexpr,
    ):  # fmt: skip
        i_bh = tl.program_id(0)
        i_m = tl.program_id(1)
        if HAS_SEQLENS:
            bad = tl.load(SEQLENS + i_bh // HKV) > Sk_cap
        else:
            bad = Sk_cap < 0  # never
        n_rows = tl.num_programs(0) * N_MB * splits * BLOCK_M
        _combine(
            WS, Out, LSE, i_bh, i_m, n_rows, (i_bh * N_MB + i_m) * splits, splits, bad,
            SQ, G, HKV, N_MB, BLOCK_M, BLOCK_D, HEAD_D, BLOCK_MC, SPC, SPLITS_CAP, NEED_LSE,
        )  # fmt: skip


# -------------------------------------------------------------------------- launch plan
@dataclasses.dataclass(frozen=True)
class _Plan:
    """Everything a launch needs that does not change within a length bucket."""

    grid: tuple[int, int, int]
    n_slots: int
    splits: int
    ws_numel: int
    cnt_numel: int
    tbl: torch.Tensor
    tcnt: torch.Tensor
    consts: dict
    combine_consts: dict
    const_values: tuple = ()
    # Direct launchers by specialisation key (see _launch_fast), at most _RUNNERS_PER_PLAN.
    runners: dict = dataclasses.field(default_factory=dict)


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _bucket(sk: int, block_size: int) -> int:
    """The length bucket of ``sk`` keys: its number of key blocks rounded up to a power of 2."""
    return _next_pow2((sk + block_size - 1) // block_size)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


@functools.lru_cache(maxsize=_PLAN_CACHE_SIZE)
def _plan(
    pattern: Pattern,
    B: int,
    Hq: int,
    Hkv: int,
    Sq: int,
    D: int,
    dtype: torch.dtype,
    n_kb: int,
    device: torch.device,
    splits: int | None,
    fused: bool,
    need_lse: bool,
    has_seqlens: int,
) -> _Plan:
    """The launch plan for a length bucket of ``n_kb`` key blocks (a power of two)."""
    G = Hq // Hkv
    bs = pattern.block_size
    BLOCK_D = max(16, _next_pow2(D))
    BLOCK_M = min(64, max(16, _next_pow2(G * Sq)))
    n_mb = -(-G * Sq // BLOCK_M)
    wide = B * Hkv * n_mb >= _num_sms(device) // 2
    BLOCK_N = min(BLOCK_N_MAX_WIDE if wide else BLOCK_N_MAX, max(16, _next_pow2(bs)))
    chunks = -(-bs // BLOCK_N)
    n_qb = min((Sq + bs - 2) // bs + 1, n_kb)  # query blocks a call can span
    closed = pattern.decode_closed_form()
    dummy = torch.zeros(1, dtype=torch.int32, device=device)
    tbl = tcnt = dummy
    sink, window, wslots, e0, has_pow = 0, 0, 1, 0, False
    if closed is None:
        mode = MODE_TABLE
        lay = pattern.block_layout(n_kb)
        tcnt = lay.kv_count.to(device=device, dtype=torch.int32)
        n_slots = max(1, lay.kv_indices.shape[1])
        tbl = lay.kv_indices.to(device=device, dtype=torch.int32).reshape(-1)
        if tbl.numel() == 0:
            tbl = dummy
    else:
        sink, window, has_pow = closed
        if window is None:
            mode, n_slots = MODE_ALL, sink + n_kb
        else:
            mode = MODE_CLOSED
            wslots = max(window, 1)
            e0 = (wslots - 1).bit_length()  # smallest e with 2**e >= wslots
            n_pow = max(0, (n_kb - 1).bit_length() - e0) if has_pow else 0
            n_slots = sink + wslots + n_pow
    units = n_qb * n_slots * chunks
    if splits is None:
        want = -(-TARGET_PROGRAMS_PER_SM * _num_sms(device) // (B * Hkv * n_mb))
        splits = max(1, min(want, SPLITS_MAX, units // MIN_UNITS_PER_SPLIT))
    if not 1 <= splits <= SPLITS_MAX:
        raise ValueError(f"splits must be in 1..{SPLITS_MAX}, got {splits}")
    BLOCK_MC = min(BLOCK_M, _next_pow2(G * Sq)) if n_mb == 1 else BLOCK_M
    spc = max(1, min(SPLITS_MAX, 8192 // (BLOCK_MC * BLOCK_D)))
    spc = 1 << (spc.bit_length() - 1)  # a power of two
    rows = B * Hkv * n_mb * splits * BLOCK_M
    interp_f32 = _INTERPRET or dtype == torch.float32
    common = dict(
        SQ=Sq, G=G, HKV=Hkv, N_MB=n_mb, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, HEAD_D=D,
        BLOCK_MC=BLOCK_MC, SPC=spc, SPLITS_CAP=SPLITS_MAX, NEED_LSE=need_lse,
    )  # fmt: skip
    consts = dict(
        common, BS=bs, SINK=sink, WINDOW=window or 0, WSLOTS=wslots, E0=e0, MODE=mode,
        HAS_POW=has_pow, HAS_SEQLENS=has_seqlens, CHUNKS=chunks, BLOCK_N=BLOCK_N,
        PREC="ieee" if interp_f32 else "tf32",
        DOT_F32=_INTERPRET and dtype == torch.bfloat16, FUSED=fused, EARLY_V=EARLY_V_LOAD,
        num_warps=NUM_WARPS_WIDE if wide else NUM_WARPS,
        num_stages=NUM_STAGES_WIDE if wide else NUM_STAGES,
    )  # fmt: skip
    return _Plan(
        grid=(B * Hkv, splits, n_mb),
        n_slots=n_slots,
        splits=splits,
        ws_numel=rows * (BLOCK_D + 2),
        cnt_numel=B * Hkv * n_mb,
        tbl=tbl,
        tcnt=tcnt,
        consts=consts,
        combine_consts=dict(common, HAS_SEQLENS=has_seqlens, num_warps=4),
        const_values=tuple(consts[name] for name in _CONSTEXPRS),
    )


def _workspace(
    device: torch.device, plan: _Plan, fresh: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(partials, counters) for this call: cached per (device, stream) outside CUDA-graph
    capture (grown when too small), fresh during capture (or when ``fresh``)."""
    if device.type == "cuda":
        capturing = torch.cuda.is_current_stream_capturing()
        if not capturing:
            _reserve_graph_counters(device)
        if fresh or capturing:
            return _fresh_workspace(device, plan, capturing)
        key = (device, torch._C._cuda_getCurrentRawStream(device.index))
    else:
        key = (device, 0)
    return _workspace_at(key, plan)


def _reserve_graph_counters(device: torch.device) -> None:
    """Make ``device``'s zeroed counter arena for captured calls (call outside a capture)."""
    if device not in _graph_arenas:
        zeros = functools.partial(torch.zeros, _GRAPH_COUNTERS, dtype=torch.int32, device=device)
        _graph_arenas[device] = [_outside_graph_pools(device, zeros), 0]


def _outside_graph_pools(device: torch.device, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``make()``, for a tensor the process keeps, allocated from the ordinary CUDA pool.

    Inductor's CUDA-graph trees (``mode="reduce-overhead"``; transformers' compiled static-cache
    decode step) route every allocation of the current *thread* into a graph's private pool
    during their warm-up runs, which are not captures; a tensor kept from there outlives the
    run, and their check refuses it ("Detected 1 tensor(s) in the cudagraph pool not tracked
    as outputs": the first decode step of a process, H200, session 19). A thread of its own
    allocates from the ordinary pool; its stream is synchronised, so that the tensor is ready
    for any stream. Not for use during a capture."""
    if device.type != "cuda":
        return make()

    def run() -> torch.Tensor:
        t = make()
        torch.cuda.current_stream(device).synchronize()
        return t

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result()


def _graph_counters(device: torch.device, n: int) -> torch.Tensor | None:
    """``n`` zeroed counters no other call has had, from ``device``'s arena; ``None`` when
    there is no arena or it is spent. Each slice starts on a 16-byte boundary, as a fresh
    allocation would: Triton specialises its kernels on pointer alignment, and an unaligned
    counter pointer would compile another variant (during the capture)."""
    arena = _graph_arenas.get(device)
    if arena is None or arena[1] + n > arena[0].numel():
        return None
    start = arena[1]
    arena[1] += -(-n // 4) * 4  # int32: 4 per 16 bytes
    return arena[0][start : start + n]


def _fresh_workspace(
    device: torch.device, plan: _Plan, capturing: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    cnt = _graph_counters(device, plan.cnt_numel) if capturing else None
    if cnt is None:
        cnt = torch.zeros(plan.cnt_numel, dtype=torch.int32, device=device)
    return torch.empty(plan.ws_numel, dtype=torch.float32, device=device), cnt


def _workspace_at(key: tuple, plan: _Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """The cached scratch of ``key = (device, stream)``, grown to fit ``plan``."""
    device = key[0]
    hit = _workspaces.get(key)
    if hit is None or hit[0].numel() < plan.ws_numel or hit[1].numel() < plan.cnt_numel:
        old_ws, old_cnt = hit if hit is not None else (None, None)
        hit = (
            torch.empty(
                max(plan.ws_numel, 0 if old_ws is None else old_ws.numel()),
                dtype=torch.float32,
                device=device,
            ),
            torch.zeros(
                max(plan.cnt_numel, 0 if old_cnt is None else old_cnt.numel()),
                dtype=torch.int32,
                device=device,
            ),
        )
        _workspaces[key] = hit
        _workspaces.move_to_end(key)
        if len(_workspaces) > _WORKSPACE_STREAMS:
            _workspaces.popitem(last=False)
    return hit


_N_PTRS = (
    10  # the kernel's pointer arguments come first: Q, K, V, Out, LSE, WS, CNT, SEQLENS, TBL, TCNT
)


def _launch_fast(plan: _Plan, args: tuple, device_index: int) -> object | None:
    """Launch through the compiled kernel's own launcher, skipping Triton's per-call argument
    binding (most of a decode step's host time). Pointers go to the launcher as integers:
    given a tensor, it calls ``data_ptr()`` and then asks the CUDA driver about the pointer
    (``cuPointerGetAttribute``), once per pointer per call. The launcher is cached in the
    plan per specialisation key -- the same key that Triton derives: 16-byte alignment of
    each pointer a caller may pass, the lengths' dtype, and the class of each stride (== 1,
    a multiple of 16, 64-bit) -- so a call only reuses a kernel compiled for identical
    specialisations. The first call of a key, and every call if this Triton's launcher takes
    other arguments, goes the usual way. Returns the direct launcher it used (else None)."""
    global FAST_LAUNCH
    ptrs = [t.data_ptr() for t in args[:_N_PTRS]]
    key = (
        ptrs[0] % 16 == 0, ptrs[1] % 16 == 0, ptrs[2] % 16 == 0, ptrs[3] % 16 == 0,
        ptrs[7] % 16 == 0, args[7].dtype, args[22] > _I32_MAX,
        *[(x == 1) + 2 * (x % 16 == 0) + 4 * (x > _I32_MAX) for x in args[10:22]],
    )  # fmt: skip
    runner = plan.runners.get(key)
    if runner is None:
        compiled = _decode_kernel[plan.grid](*args, **plan.consts)
        if len(plan.runners) >= _RUNNERS_PER_PLAN:
            plan.runners.clear()
        try:
            plan.runners[key] = compiled[plan.grid]
        except (TypeError, AttributeError):  # no compiled-kernel launcher in this Triton
            FAST_LAUNCH = False
        return None
    try:
        runner(
            *ptrs, *args[_N_PTRS:], *plan.const_values,
            stream=torch._C._cuda_getCurrentRawStream(device_index),
        )  # fmt: skip
    except (TypeError, ValueError) as exc:  # another launcher signature: the usual path
        FAST_LAUNCH = False
        warnings.warn(
            f"decode: direct kernel launch unavailable ({exc}); using Triton's launch",
            stacklevel=3,
        )
        _decode_kernel[plan.grid](*args, **plan.consts)
        return None
    return runner


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    scale: float,
    splits: int | None = None,
    out: torch.Tensor | None = None,
    fused: bool | None = None,
    *,
    cache_seqlens: torch.Tensor | None = None,
    need_lse: bool = True,
    reuse_buffers: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kernel: sparse attention for a few queries at the end of the keys (no autograd,
    no validation beyond what is cheap: callers validate).

    Args:
        q: ``(B, Hq, Sq, D)`` with ``Sq <= DECODE_MAX_Q``; k, v: ``(B, Hkv, Sk, D)``; any
            strides (e.g. a KV-cache slice); float16, bfloat16 or float32.
        pattern: any pattern; closed forms are enumerated in-kernel, others read a table.
        scale: softmax scale.
        splits: programs per (batch, KV head); default: enough to fill the GPU.
        out: optional contiguous ``(B, Hq, Sq, D)`` tensor of q's dtype to write into.
        fused: one launch (the last program of each head combines the splits) instead of a
            second combine kernel; default :data:`FUSED`.
        cache_seqlens: ``(B,)`` int32/int64 on q's device: sequence ``b`` has
            ``cache_seqlens[b]`` keys (``k[b, :, :cache_seqlens[b]]``) and its queries end
            there. A length below ``Sq`` leaves the rows before position 0 without keys
            (output 0, lse -inf); a length above ``Sk`` gives NaN rows (checking would need a
            host-device synchronisation). ``(2, B)``: ends and starts (left padding, as
            flash-attn's ``cache_leftpad``): sequence ``b``'s keys are slots
            ``start..end-1``, at positions ``0..end-start-1`` (a start past the end: no keys).
        need_lse: also compute the lse (else ``None`` is returned for it).
        reuse_buffers: take the launch plan and scratch from the process caches. The custom
            op (compiled code) passes False: under Inductor's CUDA-graph trees even the
            warm-up run allocates from the graph's pool, and a cached buffer from that pool
            outlives the run ("tensors in the cudagraph pool not tracked as outputs").
    Returns:
        ``out (B, Hq, Sq, D)`` in q's dtype and ``lse (B, Hq, Sq)`` float32 (natural log).
    """
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    n_kb = _bucket(Sk, pattern.block_size)
    fused = FUSED if fused is None else fused
    # 0: one length; 1: a length per sequence; 2: ends and starts (left padding)
    has_seqlens = 0 if cache_seqlens is None else cache_seqlens.dim()
    make_plan = _plan if reuse_buffers else _plan.__wrapped__
    plan = make_plan(
        pattern, B, Hq, Hkv, Sq, D, q.dtype, n_kb, q.device, splits, fused, need_lse, has_seqlens
    )
    ws, cnt = _workspace(q.device, plan, fresh=not reuse_buffers)
    if out is None:  # empty_like: about half of torch.empty's host time
        out = (
            torch.empty_like(q)
            if q.is_contiguous()
            else torch.empty((B, Hq, Sq, D), dtype=q.dtype, device=q.device)
        )
    elif not out.is_contiguous() or out.shape != q.shape or out.dtype != q.dtype:
        raise ValueError("out must be a contiguous tensor of q's shape and dtype")
    lse = torch.empty((B, Hq, Sq), dtype=torch.float32, device=q.device) if need_lse else None
    args = (
        q, k, v, out, ws if lse is None else lse, ws, cnt,
        cnt if cache_seqlens is None else cache_seqlens, plan.tbl, plan.tcnt,
        *q.stride(), *k.stride(), *v.stride(),
        Sk, Sk, scale * _LOG2E, plan.n_slots, plan.splits,
    )  # fmt: skip
    if FAST_LAUNCH and q.device.type == "cuda":
        _launch_fast(plan, args, q.device.index)
    else:
        _decode_kernel[plan.grid](*args, **plan.consts)
    if not fused:
        _decode_combine_kernel[(B * Hkv, plan.grid[2])](
            ws, out, ws if lse is None else lse, cnt if cache_seqlens is None else cache_seqlens,
            Sk, plan.splits, **plan.combine_consts,
        )  # fmt: skip
    return out, lse


# ------------------------------------------------------------- dispatch and custom op
def decode_forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    scale: float,
    *,
    cache_seqlens: torch.Tensor | None = None,
    need_lse: bool = False,
    allow_dense: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Decode for validated inputs: dense SDPA where it is exact and faster
    (:func:`dense_is_exact`, only with ``allow_dense``, one query, no lse, one length),
    otherwise the kernel. Inside ``torch.compile`` this is the ``powerattn::decode`` custom
    op; eager calls skip the dispatcher (its overhead is a large part of a decode step)."""
    if torch.compiler.is_compiling():
        out, lse = torch.ops.powerattn.decode(
            q, k, v, cache_seqlens, pattern.spec, scale, need_lse, allow_dense
        )
        return out, (lse if need_lse else None)
    return _decode_impl(q, k, v, cache_seqlens, pattern, scale, need_lse, allow_dense)


def _decode_impl(q, k, v, cache_seqlens, pattern, scale, need_lse, allow_dense, reuse=True):
    if (
        allow_dense
        and cache_seqlens is None
        and not need_lse
        and dense_is_exact(pattern, q.shape[2], k.shape[2])
    ):
        out = F.scaled_dot_product_attention(
            q, k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
        return out, None
    return decode_attention(
        q,
        k,
        v,
        pattern,
        scale,
        cache_seqlens=cache_seqlens,
        need_lse=need_lse,
        reuse_buffers=reuse,
    )


@functools.lru_cache(maxsize=64)
def _pattern_from_spec(spec: str) -> Pattern:
    params = json.loads(spec)
    return get_pattern(params.pop("name"), **params)


@torch.library.custom_op("powerattn::decode", mutates_args=())
def _decode_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cache_seqlens: torch.Tensor | None,
    pattern: str,
    scale: float,
    need_lse: bool,
    allow_dense: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    spec = _pattern_from_spec(pattern)
    out, lse = _decode_impl(q, k, v, cache_seqlens, spec, scale, need_lse, allow_dense, False)
    if lse is None:  # an op returns tensors: an empty one stands for "not computed"
        lse = torch.empty(0, dtype=torch.float32, device=q.device)
    B, Hq, Sq, D = out.shape
    if out.stride() != (Hq * Sq * D, Sq * D, D, 1):
        # SDPA may return a transposed layout; compiled code relies on the fake's strides.
        out = torch.empty(out.shape, dtype=out.dtype, device=out.device).copy_(out)
    return out, lse


@_decode_op.register_fake
def _(q, k, v, cache_seqlens, pattern, scale, need_lse, allow_dense):
    B, Hq, Sq, D = q.shape
    lse_shape = (B, Hq, Sq) if need_lse else (0,)
    return q.new_empty((B, Hq, Sq, D)), q.new_empty(lse_shape, dtype=torch.float32)


# ------------------------------------------------------------ cached eager decode steps
# An eager decode step through the public operator is host-bound (on the H200 the kernel takes
# ~15 us of GPU time; the call took ~33 us of host time, ~20 of them above Triton's launcher:
# results/kernel/README.md, "Decode, session 5"). After a validated call has taken the decode
# route, `cached_step` answers the next calls of the same signature from a _Step -- the
# checks' verdict, the route (dense SDPA or the kernel), the launch plan and the direct
# launchers -- after comparing only what proves that verdict for the new tensors; anything
# else (first calls, gradients, other lengths, tracing) takes the full path, which checks and
# refuses as before. Keys hold the call's arguments as given (a pattern by value or by name).
_STEPS_MAX = 256  # keys
_STEPS_PER_KEY = 8  # e.g. layers alternating between a short and a long cache
_STEP_RUNNERS_MAX = 64
_Tensor = torch.Tensor


@dataclasses.dataclass(eq=False, slots=True)
class _Step:
    """What a validated decode call of :func:`~powerattn.sparse_attention` decided. It
    stands for every call with the same key -- pattern (value, or name and registered
    class), q's shape, dtype and device, scale, ``return_lse``, backend -- whose k and v are
    plain tensors of one shape ``(B, Hkv, Sk, D)``, dtype and device, with ``lo <= Sk <= hi``
    (same length bucket, same route, same 32/64-bit length argument) and no gradient wanted."""

    pattern_cls: type | None  # a pattern given by name: the class it named
    B: int
    Hkv: int
    D: int
    lo: int
    hi: int
    dtype: torch.dtype
    device: torch.device
    dense: bool  # dense SDPA answers (exact at these lengths); else the kernel
    scale: float
    gqa: bool
    plan: _Plan | None
    need_lse: bool
    lse_shape: tuple[int, int, int]
    cuda: bool
    index: int | None
    qk_scale: float
    ptbl: int
    ptcnt: int
    # Exact (q, k, v) strides -> direct launcher, for calls whose pointers are all 16-byte
    # aligned: then the strides alone fix Triton's specialisation key (see _launch_fast).
    runners: dict


_steps: dict[tuple, list[_Step]] = {}


def clear_plans() -> None:
    """Forget the launch plans and the cached steps that hold them: call it after changing
    this module's constants (the kernel benchmarks do)."""
    _plan.cache_clear()
    _steps.clear()


def step_range(pattern: Pattern, sq: int, sk: int, dense_ok: bool) -> tuple[int, int, bool]:
    """``(lo, hi, dense)``: the key lengths ``lo..hi`` around ``sk`` for which a decode call
    of ``sq`` queries takes the same length bucket, the same route (``dense``: SDPA, where
    ``dense_ok`` and :func:`dense_is_exact`) and the same 32/64-bit length argument."""
    bs = pattern.block_size
    n_kb = _bucket(sk, bs)
    lo, hi = max(sq, 1, (n_kb // 2) * bs + 1), n_kb * bs
    dense = dense_ok and dense_is_exact(pattern, sq, sk)
    if dense_ok and sq == 1:  # dense_is_exact holds exactly for sk <= t
        t = min(DENSE_DECODE_MAX_KEYS, full_causal_blocks(pattern) * bs)
        lo, hi = (lo, min(hi, t)) if sk <= t else (max(lo, t + 1), hi)
    lo, hi = (lo, min(hi, _I32_MAX)) if sk <= _I32_MAX else (max(lo, _I32_MAX + 1), hi)
    return lo, hi, dense


def remember_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    call: tuple,
    return_lse: bool,
    pattern: Pattern,
    scale: float,
    allow_dense: bool,
) -> None:
    """Cache the verdict of a call that the public operator validated and sent to
    :func:`decode_forward` (eager, no gradient). ``call`` is its ``(pattern, scale,
    backend)`` as given."""
    pattern_arg, scale_arg, backend_arg = call
    if (
        torch.compiler.is_compiling()
        or not FUSED
        or not (type(q) is _Tensor and type(k) is _Tensor and type(v) is _Tensor)
        or not (scale_arg is None or type(scale_arg) is float)
    ):
        return
    if type(pattern_arg) is str:
        cls = type(pattern)
        if PATTERNS.get(pattern_arg) is not cls:
            return
    elif pattern_arg is pattern:
        cls = None
    else:
        return
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    dense_ok = allow_dense and not return_lse
    lo, hi, dense = step_range(pattern, Sq, Sk, dense_ok)
    bs = pattern.block_size
    # The range's ends decide as sk does (each rule is monotone in sk), so all of it does.
    for end in (lo, hi):
        if _bucket(end, bs) != _bucket(Sk, bs) or (
            dense_ok and dense_is_exact(pattern, Sq, end) != dense
        ):
            return  # pragma: no cover - step_range and the rules disagree (a bug)
    plan = None
    if not dense:
        plan = _plan(
            pattern, B, Hq, Hkv, Sq, D, q.dtype, _bucket(Sk, bs), q.device, None, FUSED,
            return_lse, 0,
        )  # fmt: skip
    key = (pattern_arg, q.shape, q.dtype, q.device, scale_arg, return_lse, backend_arg)
    steps = _steps.get(key)
    if steps is None:
        if len(_steps) >= _STEPS_MAX:
            _steps.clear()
        steps = _steps[key] = []
    elif len(steps) >= _STEPS_PER_KEY:
        del steps[0]  # the oldest
    steps.append(_Step(
        pattern_cls=cls, B=B, Hkv=Hkv, D=D, lo=lo, hi=hi, dtype=q.dtype, device=q.device,
        dense=dense, scale=scale, gqa=Hq != Hkv, plan=plan, need_lse=bool(return_lse),
        lse_shape=(B, Hq, Sq), cuda=q.device.type == "cuda", index=q.device.index,
        qk_scale=scale * _LOG2E, ptbl=0 if plan is None else plan.tbl.data_ptr(),
        ptcnt=0 if plan is None else plan.tcnt.data_ptr(), runners={},
    ))  # fmt: skip


def cached_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: object,
    scale: object,
    return_lse: object,
    backend: object,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None] | None:
    """The public operator's result for a call that a cached step covers (see
    :func:`remember_step`), or None: then the caller takes the full path."""
    if torch.compiler.is_compiling() or not (scale is None or type(scale) is float):
        return None
    try:
        steps = _steps.get((pattern, q.shape, q.dtype, q.device, scale, return_lse, backend))
    except (AttributeError, TypeError):  # not a tensor, or an unhashable argument
        return None
    if steps is None or not (type(q) is _Tensor and type(k) is _Tensor and type(v) is _Tensor):
        return None
    ks = k.shape
    hkv, sk = ks[1], ks[2]
    for step in steps:  # one per KV head count and length range seen with this key
        if step.lo <= sk <= step.hi and hkv == step.Hkv:
            break
    else:
        return None
    dt, dev = step.dtype, step.device
    if not (
        ks == v.shape
        and ks[0] == step.B
        and ks[3] == step.D
        and k.dtype is dt
        and v.dtype is dt
        and k.device == dev
        and v.device == dev
    ):
        return None
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return None
    if step.pattern_cls is not None and PATTERNS.get(pattern) is not step.pattern_cls:
        return None
    if step.dense:
        return F.scaled_dot_product_attention(q, k, v, scale=step.scale, enable_gqa=step.gqa)
    out, lse = _run_step(step, q, k, v, sk)
    return (out, lse) if return_lse else out


def _run_step(
    step: _Step, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sk: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`decode_attention` for a cached step: the same buffers, arguments and launch."""
    plan, dev = step.plan, step.device
    if step.cuda:
        stream = torch._C._cuda_getCurrentRawStream(step.index)
        if torch._C._cuda_isCurrentStreamCapturing():
            ws, cnt = _fresh_workspace(dev, plan, capturing=True)
        else:
            ws, cnt = _workspace_at((dev, stream), plan)
    else:
        ws, cnt = _workspace_at((dev, 0), plan)
    out = (
        torch.empty_like(q)
        if q.is_contiguous()
        else torch.empty(q.shape, dtype=q.dtype, device=dev)
    )
    lse = torch.empty(step.lse_shape, dtype=torch.float32, device=dev) if step.need_lse else None
    st = q.stride() + k.stride() + v.stride()
    fast = step.cuda and FAST_LAUNCH
    if fast:
        pq, pk, pv, po = q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr()
        pw, pc = ws.data_ptr(), cnt.data_ptr()
        aligned = ((pq | pk | pv | po | pc) & 15) == 0
        runner = step.runners.get(st) if aligned else None
        if runner is not None:
            try:
                runner(
                    pq, pk, pv, po, pw if lse is None else lse.data_ptr(), pw, pc, pc,
                    step.ptbl, step.ptcnt, *st, sk, sk, step.qk_scale, plan.n_slots,
                    plan.splits, *plan.const_values, stream=stream,
                )  # fmt: skip
                return out, lse
            except (TypeError, ValueError):
                pass  # _launch_fast falls back to Triton's launch (and says so)
    args = (
        q, k, v, out, ws if lse is None else lse, ws, cnt, cnt, plan.tbl, plan.tcnt, *st,
        sk, sk, step.qk_scale, plan.n_slots, plan.splits,
    )  # fmt: skip
    if fast:
        runner = _launch_fast(plan, args, step.index)
        if runner is not None and aligned:
            if len(step.runners) >= _STEP_RUNNERS_MAX:
                step.runners.clear()
            step.runners[st] = runner
    else:
        _decode_kernel[plan.grid](*args, **plan.consts)
    return out, lse
