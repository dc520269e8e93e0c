"""Context parallelism through the transformers integration (gloo, 2 and 4 processes): a tiny
float64 Llama's loss and parameter gradients (summed over ranks) equal the whole sequence's
in one process; a batch of different shapes on one rank is refused on every rank."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import cp_hf_worker
import pytest
from spawning import free_port, spawn

pytest.importorskip("transformers")


@pytest.mark.parametrize("world", [2, 4])
def test_loss_and_gradients_match_one_process(world):
    with tempfile.TemporaryDirectory() as d:
        spawn(cp_hf_worker.main, world, (world, free_port(), d))
        results = [json.loads((Path(d) / f"rank{r}.json").read_text()) for r in range(world)]
    for res in results:
        assert abs(res["loss"] - res["ref_loss"]) <= 1e-12 * abs(res["ref_loss"])
        assert res["grad_err"] <= 1e-11 * res["grad_scale"], res
        assert "different shapes" in res["bad"]["shapes"]
