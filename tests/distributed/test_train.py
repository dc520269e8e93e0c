"""dp x cp training on gloo: FSDP2 + context parallelism, a distributed checkpoint saved at 4
ranks (dp=2 x cp=2, activation checkpointing on) resumed at 2 ranks (dp=1 x cp=2, off): the
resumed run's losses equal the uninterrupted run's (float64), so the model, the optimiser
state, the data-parallel averaging and the recomputation (with its transfers) all agree."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import cp_train_worker
import pytest
from spawning import free_port, spawn

pytest.importorskip("transformers")


def _spawn(world: int, d: str, phase: str) -> list[dict]:
    spawn(cp_train_worker.main, world, (world, free_port(), d, phase))
    return [json.loads((Path(d) / f"{phase}{r}.json").read_text()) for r in range(world)]


def test_resume_on_another_world_size():
    with tempfile.TemporaryDirectory() as d:
        a = _spawn(4, d, "a")
        b = _spawn(2, d, "b")
    ref = a[0]["losses"]
    assert all(r["losses"] == ref for r in a)  # every rank reports the global mean
    assert ref["3"] < ref["0"] - 0.1  # it trains (one batch, memorised)
    for r in b:
        assert (r["dp"], r["cp"]) == (1, 2)
        for step in ("2", "3"):
            assert abs(r["losses"][step] - ref[step]) <= 1e-10 * abs(ref[step]), (step, r, ref)
