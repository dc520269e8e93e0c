"""Receptive-field analysis: the paper's structural facts at 32K, the popcount theorem, and
agreement between hops, coverage, reachability and the all-pairs hop matrix."""

from __future__ import annotations

import math

import numpy as np
import pytest

import powerattn
from powerattn.patterns import equal_budget, get_pattern, pattern_names
from powerattn.receptive import (
    MAX_HOP_MATRIX_BLOCKS,
    coverage,
    hop_matrix,
    hops,
    layers_for_full_coverage,
    reachability,
)

SEQ_32K = 32768  # 128 blocks of 256 tokens, the paper's setting


def _bfs_reference(pattern, seq_len: int) -> np.ndarray:
    """Hops from the last block by a plain BFS over ``kv_blocks`` (no layout arrays)."""
    n = pattern.num_blocks(seq_len)
    dist = [-1] * n
    dist[n - 1] = 0
    frontier = [n - 1]
    while frontier:
        nxt = []
        for q in frontier:
            for k in pattern.kv_blocks(q):
                if dist[k] < 0:
                    dist[k] = dist[q] + 1
                    nxt.append(k)
        frontier = nxt
    return np.array(dist)


@pytest.fixture(scope="module")
def paper():
    return equal_budget(SEQ_32K)


def test_hops_are_exported_from_the_package():
    assert powerattn.hops is hops and powerattn.coverage is coverage


@pytest.mark.parametrize("name", pattern_names())
def test_hops_equal_plain_bfs(name):
    rng = np.random.default_rng(7)
    for seq_len in (1, 5000, 20000 + int(rng.integers(0, 256))):
        for p in (get_pattern(name, block_size=64), equal_budget(seq_len, 64)[name]):
            h = hops(p, seq_len)
            assert h.shape == (p.num_blocks(seq_len),)
            assert np.issubdtype(h.dtype, np.integer)
            np.testing.assert_array_equal(h, _bfs_reference(p, seq_len))


@pytest.mark.parametrize("name", pattern_names())
def test_coverage_reachability_and_full_coverage_agree_with_hops(name, paper):
    p = paper[name]
    h = hops(p, SEQ_32K)
    layers = 20
    cov = coverage(p, SEQ_32K, layers)
    reach = reachability(p, SEQ_32K, layers)
    assert cov.shape == (layers,) and cov.dtype == np.float64
    assert reach.shape == (layers, h.size) and reach.dtype == bool
    for L in range(1, layers + 1):
        expect = ((h >= 0) & (h <= L)).mean()
        assert cov[L - 1] == pytest.approx(expect)
        assert reach[L - 1].mean() == pytest.approx(expect)
    assert (np.diff(cov) >= 0).all()
    full = layers_for_full_coverage(p, SEQ_32K)
    if (h < 0).any():
        assert full is None
    else:
        assert full == max(int(h.max()), 1)
        assert coverage(p, SEQ_32K, full)[-1] == 1.0
        if full > 1:
            assert coverage(p, SEQ_32K, full - 1)[-1] < 1.0


# ------------------------------------------------------------- the paper's facts at 32K
def test_power_covers_all_128_blocks_within_6_hops(paper):
    h = hops(paper["power"], SEQ_32K)
    assert h.size == 128 and (h >= 0).all() and h.max() <= 6
    assert layers_for_full_coverage(paper["power"], SEQ_32K) <= 6


def test_dilated_reaches_only_about_half(paper):
    p = paper["dilated"]
    h = hops(p, SEQ_32K)
    n = h.size
    # Only even distances exist in the DAG, so exactly the even distances are reachable.
    even = (n - 1 - np.arange(n)) % 2 == 0
    np.testing.assert_array_equal(h >= 0, even)
    assert coverage(p, SEQ_32K, 28)[-1] == pytest.approx(0.5)
    assert layers_for_full_coverage(p, SEQ_32K) is None


def test_longnet_leaves_holes(paper):
    p = paper["longnet"]
    h = hops(p, SEQ_32K)
    # The last block of each 8-block segment (except the final segment's, the query itself)
    # is attended only from inside its own segment, which the last block never enters.
    for seg in range(128 // 8 - 1):
        assert h[8 * seg + 7] == -1, seg
    assert h[127] == 0
    assert layers_for_full_coverage(p, SEQ_32K) is None
    assert 0 < (h >= 0).mean() < 1


def test_sliding_window_grows_by_window_minus_one_blocks_per_hop(paper):
    p = paper["sliding_window"]
    w, n = p.window, 128
    h = hops(p, SEQ_32K)
    d = n - 1 - np.arange(n)
    expect = -(-d // (w - 1))  # ceil(d / (W - 1))
    expect[0] = 1  # block 0 is the sink: one hop from anywhere
    np.testing.assert_array_equal(h, expect)
    counts = np.diff(np.concatenate([[1], np.round(coverage(p, SEQ_32K, 10) * n)]))
    assert (counts[1:] == w - 1).all()  # every further layer adds exactly W-1 blocks


def test_sliding_window_without_sink_is_linear():
    p = get_pattern("sliding_window", window=4, sink=0)
    h = hops(p, 64 * 256)
    np.testing.assert_array_equal(h, -(-(63 - np.arange(64)) // 3))


def test_stride_slash_reaches_everything_but_slower_than_power(paper):
    ss = layers_for_full_coverage(paper["stride_slash"], SEQ_32K)
    pw = layers_for_full_coverage(paper["power"], SEQ_32K)
    assert ss is not None and ss > pw
    # At every depth power's field is at least as large as stride slash's.
    assert (
        coverage(paper["power"], SEQ_32K, 28) >= coverage(paper["stride_slash"], SEQ_32K, 28)
    ).all()


def test_power_is_logarithmic_in_length():
    """In d layers the pure power graph reaches every block within distance 2^d."""
    p = get_pattern("power", window=1, sink=0)
    for n in (64, 512, 4096):
        assert layers_for_full_coverage(p, n * 256) == math.ceil(math.log2(n))


def test_full_attention_covers_everything_in_one_layer():
    p = get_pattern("full")
    assert layers_for_full_coverage(p, 100_000) == 1
    assert (coverage(p, 100_000, 3) == 1.0).all()


def test_single_block_sequence():
    p = get_pattern("power")
    np.testing.assert_array_equal(hops(p, 100), [0])
    assert layers_for_full_coverage(p, 100) == 1
    np.testing.assert_array_equal(coverage(p, 100, 2), [1.0, 1.0])


# -------------------------------------------------------------------------- the theorem
def _popcount(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.uint32)
    return np.unpackbits(x.view(np.uint8).reshape(*x.shape, 4), axis=-1).sum(axis=-1)


def test_theorem_power_graph_hops_are_popcount_of_distance():
    """Paper, appendix B: on the token-level power graph (edges at distance 0 and 2^k only)
    the fewest hops from i to j <= i is popcount(i - j); all pairs up to n = 4096."""
    n = 4096
    p = get_pattern("power", block_size=1, window=1, sink=0)  # window 1 = distance 0 only
    # Check the pattern really is the pure power graph.
    assert p.kv_blocks(n - 1) == sorted(n - 1 - (1 << k) for k in range(12)) + [n - 1]
    m = hop_matrix(p, n)
    assert m.shape == (n, n)
    i, j = np.tril_indices(n)
    np.testing.assert_array_equal(m[i, j], _popcount(i - j))
    assert (m[np.triu_indices(n, 1)] == -1).all()
    # The last row is what hops() computes.
    np.testing.assert_array_equal(hops(p, n), m[n - 1])


def test_base_b_power_graph_hops_are_digit_sums():
    """Generalisation: with distances 0 and b^k, the fewest hops is the base-b digit sum."""
    n = 3**6
    p = get_pattern("power", block_size=1, window=1, sink=0, base=3)
    d = n - 1 - np.arange(n)
    digit_sum = np.zeros(n, dtype=np.int64)
    x = d.copy()
    while x.any():
        digit_sum += x % 3
        x //= 3
    np.testing.assert_array_equal(hops(p, n), digit_sum)


@pytest.mark.parametrize("name", pattern_names())
def test_hop_matrix_rows_equal_hops_of_prefixes(name):
    p = equal_budget(40 * 64, 64)[name]
    m = hop_matrix(p, 40 * 64)
    for i in (0, 7, 20, 39):
        np.testing.assert_array_equal(m[i, : i + 1], hops(p, (i + 1) * 64))
        assert (m[i, i + 1 :] == -1).all()


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: hops("nope", 100), "unknown pattern"),
        (lambda: hops("power", 0), "seq_len"),
        (lambda: coverage("power", 1000, 0), "layers"),
        (lambda: coverage("power", 1000, True), "layers"),
        (lambda: coverage("power", -5, 3), "seq_len"),
        (lambda: layers_for_full_coverage("power", 0), "seq_len"),
        (lambda: reachability("power", 0, 3), "seq_len"),
        (
            lambda: hop_matrix(get_pattern("power", block_size=1), MAX_HOP_MATRIX_BLOCKS + 1),
            "limit",
        ),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
