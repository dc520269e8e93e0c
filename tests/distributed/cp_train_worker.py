"""One gloo rank of the dp x cp training test (spawned by test_train.py): a tiny float64
Llama under FSDP2 + context parallelism, one global batch seen every step. Phase "a" (4 ranks,
dp=2 x cp=2, activation checkpointing) trains 4 steps and saves a distributed checkpoint after
step 2; phase "b" (2 ranks, dp=1 x cp=2, no activation checkpointing) loads it and trains
steps 3-4. Losses go to OUTDIR/{phase}{rank}.json."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
from cp_hf_worker import BLOCK, _model
from spawning import init_gloo

CP = 2
ROWS = 2  # sequences per global batch
STEPS = 4
SAVE_AFTER = 2


def _global_batch(step: int) -> torch.Tensor:
    del step  # one batch, seen every step: the loss must fall (memorisation)
    g = torch.Generator().manual_seed(100)
    return torch.randint(0, 64, (ROWS, 3 * BLOCK * CP), generator=g)


def main(rank: int, world: int, port: int, outdir: str, phase: str) -> None:
    init_gloo(rank, world, port)
    from powerattn.distributed.train import (
        CPMesh,
        load_checkpoint,
        prepare_model,
        save_checkpoint,
        train_step,
    )

    try:
        mesh = CPMesh.build(cp=CP)
        model = prepare_model(_model(), mesh, activation_checkpointing=phase == "a")
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        ckpt = os.path.join(outdir, "ckpt")
        first = 0
        if phase == "b":
            load_checkpoint(ckpt, model, opt)
            first = SAVE_AFTER
        rows = ROWS // mesh.dp
        losses = {}
        for step in range(first, STEPS):
            ids = _global_batch(step)[mesh.dp_rank * rows : (mesh.dp_rank + 1) * rows]
            losses[step] = train_step(model, opt, ids, mesh)
            if phase == "a" and step + 1 == SAVE_AFTER:
                save_checkpoint(ckpt, model, opt)
        with open(os.path.join(outdir, f"{phase}{rank}.json"), "w") as f:
            json.dump({"losses": losses, "dp": mesh.dp, "cp": mesh.cp}, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()
