"""One gloo rank of the transformers context-parallel test (spawned by test_hf.py): a tiny
Llama (float64) switched to powerattn, its loss and parameter gradients under context
parallelism against the same model on the whole sequence in one process."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from spawning import init_gloo

BLOCK = 8


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    import powerattn.transformers as pt

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        attention_dropout=0.0,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).double()
    # Layer 2 kept full: the dense route goes through the plan too.
    return pt.apply(model, "power", full_layers=[2], block_size=BLOCK, window=2, sink=1)


def main(rank: int, world: int, port: int, outdir: str) -> None:
    init_gloo(rank, world, port)
    from powerattn.distributed.hf import causal_lm_loss, enable_context_parallel, shard_batch

    try:
        S = 3 * BLOCK * world  # three blocks per rank
        ids = torch.randint(0, 64, (2, S), generator=torch.Generator().manual_seed(1))
        model = _model()
        # The whole sequence in this process.
        logits = model(input_ids=ids).logits
        ref = F.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
        ref_g = torch.autograd.grad(ref, list(model.parameters()))
        # Context parallel.
        enable_context_parallel(model)
        batch = shard_batch(ids, block_size=BLOCK)
        loss, mean = causal_lm_loss(model, batch)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        for g in grads:
            dist.all_reduce(g)
        err = max((a - b).abs().max().item() for a, b in zip(grads, ref_g, strict=True))
        scale = max(b.abs().max().item() for b in ref_g)
        res = {"loss": mean.item(), "ref_loss": ref.item(), "grad_err": err, "grad_scale": scale}
        bad = {}
        try:
            shard_batch(ids[:, : S - BLOCK] if rank == 0 else ids, block_size=BLOCK)
        except ValueError as exc:
            bad["shapes"] = str(exc)
        res["bad"] = bad
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
            json.dump(res, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()
