"""``context_parallel_attention`` with the gloo backend at 2, 4 and 8 processes (spawned
here): forward and gradients of every pattern equal to single-process ``sparse_attention``
(powerattn.testing's rule: 2x forward and 3x gradients the same-precision single-process
error against float64, plus the floor derived from the reduction length, as in tests/ops),
GQA, odd block and shard lengths; bad calls raise the same clear error on every rank
instead of hanging.

One spawn per world size runs every case (cp_worker.py) and the tests read its results, so
the processes start once: about 10-30 s of CPU per world size on this project's machines.
"""

from __future__ import annotations

import functools
import itertools
import json
import tempfile
from pathlib import Path

import cp_worker
import pytest
from spawning import free_port, spawn

from powerattn import get_pattern
from powerattn.distributed import cp_plan

WORLDS = [2, 4, 8]
CASES = [name for name, *_ in cp_worker._cases()] + [
    "power-recompute-float32",
    "full-recompute-float32",
]


@functools.cache
def _run(world: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as d:
        spawn(cp_worker.main, world, (world, free_port(), d))
        return [json.loads((Path(d) / f"rank{r}.json").read_text()) for r in range(world)]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("world", WORLDS)
def test_matches_single_process(world, case):
    for rank, res in enumerate(_run(world)):
        row = res["cases"][case]
        assert row["finite"], (rank, row)
        for g in ("out", "dq", "dk", "dv"):  # check_close's verdicts (2x out, 3x gradients)
            assert row[g]["ok"], (rank, g, row)


@pytest.mark.parametrize("world", WORLDS)
def test_allgather_baseline_matches(world):
    """The all-gather baseline that bench cp compares against computes the same thing."""
    for rank, res in enumerate(_run(world)):
        row = res["allgather"]
        for g in ("out", "dq", "dk", "dv"):
            assert row[g]["ok"], (rank, g, row)


@pytest.mark.parametrize("world", WORLDS)
def test_backward_posts_its_transfer_before_the_local_work(world):
    """Overlap in the backward pass: every rank posts the reversed plan's sends (gradients of
    the blocks it received) and receives (its own blocks' gradients) in one batch before it
    differentiates its local part; the gradient tests above check what arrives."""
    for (rank, res), mode in itertools.product(enumerate(_run(world)), ("kept", "recompute")):
        calls = res["backward_order"][mode]
        assert [c[0] for c in calls] == ["exchange", "local"], (rank, mode, calls)
        # One message back to each rank this one read from, one from each that read it.
        plan = cp_plan(get_pattern("power", block_size=cp_worker.BLOCK, window=2),
                       cp_worker.BLOCK * cp_worker.CHUNK_BLOCKS * world, world)  # fmt: skip
        assert calls[0][1:] == [len(plan.sources(rank)), len(plan.dests(rank))]


@pytest.mark.parametrize("world", [2, 4])
def test_bad_calls_fail_on_every_rank(world):
    results = [res["bad"] for res in _run(world)]
    for bad in results:
        assert "disagree on the local length" in bad["lengths"]
        assert "not a multiple of the pattern's block_size" in bad["block"]
        assert "different patterns" in bad["pattern"]
        if bad["group_member"]:
            assert bad["group"] is None  # members of the subgroup run normally
        else:
            assert "not a member of `group`" in bad["group"]
