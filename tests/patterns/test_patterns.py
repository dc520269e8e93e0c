"""The pattern catalogue: every registered pattern, over random parameters, agrees with itself
at every level (block rule -> layout, token predicate, dense matrix, density, degree)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import powerattn
from powerattn.patterns import (
    MAX_DENSE_ELEMENTS,
    PATTERNS,
    equal_budget,
    get_pattern,
    longnet_segments,
    pattern_names,
    pattern_params,
)

BLOCK_SIZES = (1, 2, 3, 7, 16)


def _random_params(name: str, rng: np.random.Generator) -> dict:
    """Random valid parameters for pattern ``name``, small enough for dense checks (each
    pattern class draws its own: a new pattern needs no entry here)."""
    bs = int(rng.choice(BLOCK_SIZES))
    return dict(block_size=bs, **PATTERNS[name].random_params(rng))


def _cases(name: str, count: int, seed: int):
    """``count`` (pattern, q_len, kv_len) triples: lengths rarely multiples of the block
    size, q_len < kv_len in most."""
    rng = np.random.default_rng([seed, *name.encode()])
    for _ in range(count):
        p = get_pattern(name, **_random_params(name, rng))
        max_len = 120 if p.block_size == 1 else min(300, 25 * p.block_size)
        kv_len = int(rng.integers(1, max_len + 1))
        q_len = kv_len if rng.random() < 0.3 else int(rng.integers(1, kv_len + 1))
        yield p, q_len, kv_len


def _block_reduce(p, q_len: int, kv_len: int):
    """The dense token mask reduced to blocks.

    Returns ``(off, any_, all_, whole)`` over absolute query blocks ``off..`` x key blocks:
    ``any_`` some query token attends some key token, ``all_`` every valid query token
    attends every valid key token, ``whole`` the query block lies entirely in the query range
    and both blocks hold ``block_size`` tokens (where "partial" must mean "not all")."""
    bs = p.block_size
    dense = p.dense_mask(q_len, kv_len).numpy()
    first = kv_len - q_len  # absolute position of the first query
    off = first // bs
    nkv = math.ceil(kv_len / bs)
    nq = nkv - off
    grid = np.zeros((nq * bs, nkv * bs), dtype=bool)
    valid = np.zeros_like(grid)
    rows = slice(first - off * bs, first - off * bs + q_len)
    grid[rows, :kv_len] = dense
    valid[rows, :kv_len] = True
    g = grid.reshape(nq, bs, nkv, bs)
    v = valid.reshape(nq, bs, nkv, bs)
    any_ = g.any(axis=(1, 3))
    all_ = (g | ~v).all(axis=(1, 3))
    qfull = v[:, :, 0, 0].all(axis=1)  # every token of the query block is a query
    kfull = np.minimum(bs, kv_len - np.arange(nkv) * bs) == bs
    whole = qfull[:, None] & kfull[None, :] & kfull[off:][:, None]
    return off, any_, all_, whole


def _layout_sets(lay) -> tuple[list[list[int]], list[list[bool]]]:
    idx, cnt, full = lay.kv_indices.numpy(), lay.kv_count.numpy(), lay.is_full.numpy()
    return (
        [row[:c].tolist() for row, c in zip(idx, cnt, strict=True)],
        [row[:c].tolist() for row, c in zip(full, cnt, strict=True)],
    )


def test_registry_names_the_paper_patterns():
    assert set(pattern_names()) >= {
        "power",
        "sliding_window",
        "stride_slash",
        "dilated",
        "longnet",
        "full",
    }
    assert pattern_names() == sorted(PATTERNS)


@pytest.mark.parametrize("name", pattern_names())
def test_block_layout_equals_block_reduced_dense_mask(name):
    for p, q_len, kv_len in _cases(name, 25, seed=0):
        off, any_, all_, whole = _block_reduce(p, q_len, kv_len)
        nq, nkv = any_.shape
        lay = p.block_layout(nq, nkv, q_block_offset=off)
        assert (lay.q_block_offset, lay.num_kv_blocks, lay.num_q_blocks) == (off, nkv, nq)
        idx, full = _layout_sets(lay)
        where = f"{p.describe()} q_len={q_len} kv_len={kv_len}"
        for i in range(nq):
            assert idx[i] == np.flatnonzero(any_[i]).tolist(), f"{where} query block {off + i}"
            assert idx[i] == sorted(idx[i])
            for kb, f in zip(idx[i], full[i], strict=True):
                # Full blocks need no token mask: the dense sub-block must be all True.
                assert not f or all_[i, kb], f"{where}: block ({off + i}, {kb}) marked full"
                # Partial means exactly the causally cut diagonal (unless blocks are tokens).
                assert f == (kb != off + i or p.block_size == 1), where
                if whole[i, kb]:
                    assert f == all_[i, kb], where
        # Padding is -1 and never full.
        pad = lay.kv_indices < 0
        assert (pad == (torch.arange(lay.kv_indices.shape[1]) >= lay.kv_count[:, None])).all()
        assert not lay.is_full[pad].any()
        assert lay.kv_indices.dtype == lay.kv_count.dtype == torch.int32


@pytest.mark.parametrize("name", pattern_names())
def test_kv_blocks_and_layout_windows_agree(name):
    for p, _, kv_len in _cases(name, 10, seed=1):
        n = p.num_blocks(kv_len)
        whole, _ = _layout_sets(p.block_layout(n))
        for qb in range(n):
            assert p.kv_blocks(qb) == whole[qb]
        # Any window of query blocks, with extra key blocks after it, gives the same rows
        # (key blocks past a query block are never attended: causality).
        for off in range(0, n, max(1, n // 4)):
            for nq in {1, n - off}:
                rows, _ = _layout_sets(p.block_layout(nq, n, q_block_offset=off))
                assert rows == whole[off : off + nq], (p.describe(), off, nq)
        assert p.block_layout(n).num_kv_blocks == n


@pytest.mark.parametrize("name", pattern_names())
def test_mask_mod_equals_dense_mask(name):
    for p, q_len, kv_len in _cases(name, 15, seed=2):
        dense = p.dense_mask(q_len, kv_len)
        assert dense.shape == (q_len, kv_len) and dense.dtype == torch.bool
        q_abs = torch.arange(kv_len - q_len, kv_len)[:, None]
        kv = torch.arange(kv_len)[None, :]
        assert torch.equal(p.mask_mod(0, 0, q_abs, kv), dense)
        local = torch.arange(q_len)[:, None]
        assert torch.equal(p.mask_mod_for(q_len, kv_len)(0, 0, local, kv), dense)
        # Causality: no key after the query's absolute position.
        assert not (dense & (kv > q_abs)).any()
        # Default kv_len = q_len.
        if q_len == kv_len:
            assert torch.equal(p.dense_mask(q_len), dense)


@pytest.mark.parametrize("name", pattern_names())
def test_mask_mod_for_works_in_flexattention_create_block_mask(name):
    """FlexAttention takes the predicate as is (vmap over tensor ops; 4 positional args)."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    rng = np.random.default_rng(3)
    p = get_pattern(name, **{**_random_params(name, rng), "block_size": 16})
    q_len, kv_len = 80, 160
    bm = flex.create_block_mask(
        p.mask_mod_for(q_len, kv_len), None, None, q_len, kv_len, device="cpu", BLOCK_SIZE=16
    )
    # The BlockMask's dense form is the block-level "any" of the token mask.
    off, any_, _, _ = _block_reduce(p, q_len, kv_len)
    assert torch.equal(bm.to_dense()[0, 0].bool(), torch.from_numpy(any_))


@pytest.mark.parametrize("name", pattern_names())
def test_density_and_max_degree_brute_force(name):
    for p, _, kv_len in _cases(name, 10, seed=5):
        dense = p.dense_mask(kv_len).numpy()
        assert p.density(kv_len) == pytest.approx(dense.sum() / (kv_len * (kv_len + 1) / 2))
        n = p.num_blocks(kv_len)
        _, any_, _, _ = _block_reduce(p, kv_len, kv_len)
        assert p.max_degree(n) == int(any_.sum(axis=1).max())


def test_full_pattern_is_dense_causal():
    p = get_pattern("full", block_size=5)
    assert torch.equal(p.dense_mask(37), torch.ones(37, 37, dtype=torch.bool).tril())
    assert p.density(37) == 1.0
    assert p.max_degree(8) == 8


def test_power_paper_setting():
    """NOTES.md: at 32K (128 blocks of 256) a query block attends the sink, 5 window blocks
    and the blocks at distance 8, 16, 32, 64: at most 10."""
    p = get_pattern("power")
    assert (p.block_size, p.window, p.sink, p.base) == (256, 5, 1, 2)
    assert p.kv_blocks(127) == sorted({0, *range(123, 128), 127 - 8, 127 - 16, 127 - 32, 63})
    assert p.max_degree(128) == 10
    assert powerattn.get_pattern("power") == p


def test_power_base_b_distances():
    p = get_pattern("power", block_size=1, window=1, sink=0, base=3)
    assert p.kv_blocks(100) == [100 - d for d in (81, 27, 9, 3, 1, 0)]


@pytest.mark.parametrize(
    "segments",
    [((8, 1), (16, 2), (32, 4), (64, 8), (128, 16)), ((4, 4), (12, 3), (6, 2)), ((5, 1), (16, 8))],
)
def test_longnet_rule_is_the_definition(segments):
    """LongNet's block rule (bit operations for power-of-two segments and rates) equals the
    definition -- same aligned segment, both blocks on the rate's grid -- on every block
    pair, for ints, numpy arrays and torch tensors."""
    p = get_pattern("longnet", segments=segments)
    qb, kb = np.meshgrid(np.arange(300), np.arange(300), indexing="ij")
    want = np.zeros_like(qb, dtype=bool)
    for w, r in segments:
        want |= (qb // w == kb // w) & (qb % r == 0) & (kb % r == 0)
    assert np.array_equal(p.block_rule(qb, kb), want)
    assert torch.equal(p.block_rule(torch.from_numpy(qb), torch.from_numpy(kb)),
                       torch.from_numpy(want))  # fmt: skip
    assert [bool(p.block_rule(int(a), int(b))) for a, b in [(37, 33), (64, 48), (200, 9)]] == [
        bool(want[37, 33]), bool(want[64, 48]), bool(want[200, 9])
    ]  # fmt: skip


def test_get_pattern_returns_instances_and_applies_params():
    p = get_pattern("sliding_window", window=3)
    assert get_pattern(p) is p
    assert get_pattern(p, sink=2).sink == 2 and get_pattern(p, sink=2).window == 3
    assert pattern_params("power") == {"block_size": 256, "window": 5, "sink": 1, "base": 2}
    # Segments from JSON / CLI arrive as lists: normalised to hashable tuples.
    q = get_pattern("longnet", segments=[[4, 1], [8, 2]])
    assert q.segments == ((4, 1), (8, 2)) and hash(q)
    # ... and the command line's string form works from Python too.
    assert get_pattern("longnet", segments="4:1,8:2") == q


# ---------------------------------------------------------------------------- budget
@pytest.mark.parametrize("seq_len", [8192, 32768, 131072, 100_000])
def test_equal_budget_gives_equal_degrees(seq_len):
    pats = equal_budget(seq_len)
    n = pats["power"].num_blocks(seq_len)
    budget = pats["power"].max_degree(n)
    assert set(pats) == {"power", "sliding_window", "stride_slash", "dilated", "longnet", "full"}
    for name in ("sliding_window", "stride_slash", "dilated"):
        assert pats[name].max_degree(n) == budget, name
    # Each knob is the largest that fits: one step further exceeds the budget.
    sw, ss, dl = pats["sliding_window"], pats["stride_slash"], pats["dilated"]
    assert get_pattern(sw, window=sw.window + 1).max_degree(n) > budget
    if ss.stride > 1:
        assert get_pattern(ss, stride=ss.stride - 1).max_degree(n) > budget
    assert get_pattern(dl, window=dl.window + dl.dilation).max_degree(n) > budget
    # LongNet is documented as the exception: the paper's shape up to the sequence.
    assert pats["longnet"].segments == longnet_segments(8, n)
    assert pats["full"].max_degree(n) == n


def test_equal_budget_reproduces_the_paper_configurations_at_32k():
    """The paper's baselines at 32K (NOTES.md): sliding window 9 + sink 1, stride slash
    window 6 + sink 1 with 3 slashes, dilated 20-block window with gap 1."""
    pats = equal_budget(32768)
    assert (pats["sliding_window"].window, pats["sliding_window"].sink) == (9, 1)
    ss = pats["stride_slash"]
    assert (ss.window, ss.sink) == (6, 1)
    assert len([d for d in range(ss.window, 128) if d % ss.stride == 0]) == 3
    assert (pats["dilated"].window, pats["dilated"].dilation) == (20, 2)
    assert pats["longnet"].segments == ((8, 1), (16, 2), (32, 4), (64, 8), (128, 16))


def test_equal_budget_explicit_budget_and_block_size():
    pats = equal_budget(4096, block_size=64, budget=12)
    assert all(p.block_size == 64 for p in pats.values())
    for name in ("sliding_window", "stride_slash", "dilated"):
        assert pats[name].max_degree(64) <= 12


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: get_pattern("powr"), "unknown pattern 'powr'.*valid names: .*power"),
        (lambda: get_pattern("power", stride=3), "no parameter 'stride'.*valid parameters"),
        (lambda: get_pattern(get_pattern("power"), windw=3), "no parameter 'windw'"),
        (lambda: get_pattern("power", block_size=0), "block_size"),
        (lambda: get_pattern("full", block_size=-4), "block_size"),
        (lambda: get_pattern("power", block_size=2.5), "block_size"),
        (lambda: get_pattern("power", block_size=True), "block_size"),
        (lambda: get_pattern("power", window=-1), "window"),
        (lambda: get_pattern("power", sink=-1), "sink"),
        (lambda: get_pattern("power", base=1), "base"),
        (lambda: get_pattern("sliding_window", window=-2), "window"),
        (lambda: get_pattern("sliding_window", sink=-1), "sink"),
        (lambda: get_pattern("stride_slash", stride=0), "stride"),
        (lambda: get_pattern("stride_slash", window=-1), "window"),
        (lambda: get_pattern("dilated", dilation=0), "dilation"),
        (lambda: get_pattern("dilated", window=0), "window"),
        (lambda: get_pattern("longnet", segments=()), "segments"),
        (lambda: get_pattern("longnet", segments=((8, 3),)), "multiple of its rate"),
        (lambda: get_pattern("longnet", segments=((8, 0),)), "segments"),
        (lambda: get_pattern("longnet", segments=((8.5, 1),)), "integers"),  # not truncated
        (lambda: get_pattern("longnet", segments=[8, 1]), r"\(length, rate\) pairs"),
        (lambda: get_pattern("longnet", segments="8-1"), "length:rate pairs"),
        (lambda: get_pattern("sliding_window", window=0, sink=0), "attends no key block"),
        (lambda: get_pattern("power", window=True), "window"),
        (lambda: get_pattern("full").block_layout(1 << 14), "entries; the limit"),
        (lambda: get_pattern("power").dense_mask(10, 5), r"q_len \(10\) > kv_len \(5\)"),
        (lambda: get_pattern("power").dense_mask(0, 5), "q_len"),
        (lambda: get_pattern("power").dense_mask(4, -1), "kv_len"),
        (lambda: get_pattern("power").dense_mask(1 << 14, 1 << 15), "limit"),
        (lambda: get_pattern("power").mask_mod_for(6, 5), "q_len"),
        (lambda: get_pattern("power").block_layout(0), "num_q_blocks"),
        (lambda: get_pattern("power").block_layout(4, 0), "num_kv_blocks"),
        (lambda: get_pattern("power").block_layout(4, 8, q_block_offset=-1), "q_block_offset"),
        (lambda: get_pattern("power").block_layout(4, 5, q_block_offset=2), "num_kv_blocks"),
        (lambda: get_pattern("power").kv_blocks(-1), "q_block"),
        (lambda: get_pattern("power").num_blocks(0), "seq_len"),
        (lambda: get_pattern("power").density(-3), "seq_len"),
        (lambda: equal_budget(0), "seq_len"),
        (lambda: equal_budget(4096, block_size=0), "block_size"),
        (lambda: equal_budget(4096, budget=0), "budget"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_dense_mask_limit():
    p = get_pattern("full")
    with pytest.raises(ValueError, match="dense_mask.*limit"):
        p.dense_mask(1, MAX_DENSE_ELEMENTS + 1)
