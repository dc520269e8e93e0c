"""Context parallelism through the transformers integration (gloo, 2 and 4 processes): a tiny
float64 Llama's loss and parameter gradients (summed over ranks) equal the whole sequence's
in one process; a batch of different shapes on one rank is refused on every rank."""

from __future__ import annotations

import json
import socket
import tempfile
from pathlib import Path

import cp_hf_worker
import pytest
import torch.multiprocessing as mp

pytest.importorskip("transformers")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2, 4])
def test_loss_and_gradients_match_one_process(world):
    with tempfile.TemporaryDirectory() as d:
        mp.start_processes(
            cp_hf_worker.main, args=(world, _free_port(), d), nprocs=world, start_method="spawn"
        )
        results = [json.loads((Path(d) / f"rank{r}.json").read_text()) for r in range(world)]
    for res in results:
        assert abs(res["loss"] - res["ref_loss"]) <= 1e-12 * abs(res["ref_loss"])
        assert res["grad_err"] <= 1e-11 * res["grad_scale"], res
        assert "different shapes" in res["bad"]["shapes"]
