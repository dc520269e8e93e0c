"""The context-parallel plan: the log P property at 1M tokens, exact volumes against a
brute-force count from the dense mask, and the gathered view against the base pattern."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from powerattn import get_pattern, pattern_names
from powerattn.distributed import cp_plan
from powerattn.distributed.attention import _rank_plan
from powerattn.patterns.base import Pattern

SMALL = {
    "power": {"window": 2, "sink": 1},
    "sliding_window": {"window": 3, "sink": 1},
    "stride_slash": {"window": 2, "stride": 3, "sink": 1},
    "dilated": {"window": 6, "dilation": 2},
    "longnet": {"segments": ((2, 1), (4, 2), (8, 4))},
}


def _small(name: str, block: int = 8) -> Pattern:
    return get_pattern(name, block_size=block, **SMALL.get(name, {}))


def test_log_p_property_at_1m_tokens():
    S, P = 1 << 20, 64
    L = S // P
    power = cp_plan(get_pattern("power", block_size=256, window=5, sink=1), S, P)
    assert max(power.recv_tokens) <= (math.log2(P) + 2) * L
    assert max(power.recv_peers) <= math.log2(P) + 2
    full = cp_plan("full", S, P)
    assert full.recv_tokens[-1] == (P - 1) * L
    assert full.recv_tokens == [p * L for p in range(P)]
    assert sum(full.send_tokens) == sum(full.recv_tokens)


@pytest.mark.parametrize("P", [2, 4, 8])
@pytest.mark.parametrize("name", pattern_names())
def test_plan_equals_brute_force(name, P):
    pat = _small(name)
    L = 24  # three blocks per rank
    S = L * P
    plan = cp_plan(pat, S, P)
    mask = pat.dense_mask(S).numpy()
    for p in range(P):
        needed = mask[p * L : (p + 1) * L, : p * L].any(axis=0)  # remote keys read by p
        assert plan.recv_tokens[p] == needed.sum(), (p, plan.recv[p])
        for src in range(p):
            blocks = np.flatnonzero(needed[src * L : (src + 1) * L].reshape(-1, 8).any(axis=1))
            np.testing.assert_array_equal(plan.blocks(p, src), blocks)
    assert sum(plan.send_tokens) == sum(plan.recv_tokens)
    for r in range(P):
        assert plan.dests(r) == [d for d in range(P) if r in plan.sources(d)]


@pytest.mark.parametrize("name", pattern_names())
def test_gathered_view_is_the_base_pattern_on_the_gathered_positions(name):
    """The compact mask of the remote and local views equals the base pattern's mask on the
    gathered absolute positions (what makes the existing operator compute CP correctly)."""
    pat = _small(name)
    P, L = 4, 24
    mask = pat.dense_mask(P * L)
    for p in range(P):
        rp = _rank_plan(pat, P * L, P, p)
        own = torch.arange(p * L, (p + 1) * L)
        loc = rp.local_view.dense_mask(L)
        assert torch.equal(loc, mask[own][:, own])
        if rp.remote_view is None:
            assert not mask[own, : p * L].any()
            continue
        remote = torch.from_numpy(rp.plan.remote_blocks(p))
        keys = (remote[:, None] * 8 + torch.arange(8)).reshape(-1)
        got = rp.remote_view.dense_mask(L, keys.numel() + L)
        assert torch.equal(got[:, : keys.numel()], mask[own][:, keys])
        assert not got[:, keys.numel() :].any()  # the local part is excluded
        # Nothing outside the gathered blocks is read.
        outside = torch.ones(p * L, dtype=torch.bool)
        outside[keys] = False
        assert not mask[own][:, : p * L][:, outside].any()
        # The block layout agrees with the dense mask (the flex path reads the layout).
        lay = rp.remote_view.block_layout(L // 8, keys.numel() // 8 + L // 8, keys.numel() // 8)
        blocks = got.reshape(L // 8, 8, -1, 8).any(dim=(1, 3))
        for i in range(L // 8):
            listed = lay.kv_indices[i, : lay.kv_count[i]].tolist()
            assert listed == torch.nonzero(blocks[i]).flatten().tolist()


@pytest.mark.parametrize(
    "S, P, block, match",
    [
        (100, 3, 4, "not divisible by world_size"),
        (96, 4, 16, "not a multiple of the pattern's block_size"),
        (96, 0, 8, "world_size must be a positive integer"),
    ],
)
def test_bad_splits_are_refused(S, P, block, match):
    with pytest.raises(ValueError, match=match):
        cp_plan(get_pattern("power", block_size=block), S, P)
