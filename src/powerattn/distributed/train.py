"""Data parallel x context parallel training pieces: FSDP2, activation checkpointing, and
``torch.distributed.checkpoint`` checkpoints that resume on another world size.

The ranks form a ``(dp, cp)`` grid: ranks ``d cp .. d cp + cp - 1`` share data-parallel
index ``d`` and split its sequences (context parallelism, :mod:`powerattn.distributed.hf`).
Parameters are sharded with FSDP2 (``fully_shard``) over *all* ranks, so FSDP's gradient
average runs over ``dp x cp`` ranks; the loss is scaled by ``cp`` so that the result is the
gradient of the mean loss over the data-parallel batches (each of which the ``cp`` ranks
share)::

    mesh = CPMesh.build(cp=2)                          # under torchrun, world = dp x cp
    model = prepare_model(model, mesh, activation_checkpointing=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = train_step(model, opt, ids, mesh)            # ids: this dp index's (B, S) batch
    save_checkpoint(path, model, opt)                   # resumable at another dp x cp

``model`` is a transformers model already switched to powerattn
(``powerattn.transformers.apply``). What this module does not do: the ``powerattn train``
command, data loading and learning-rate schedules (the trainer's job), and pipeline or tensor
parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .hf import causal_lm_loss, enable_context_parallel, shard_batch


@dataclass(frozen=True)
class CPMesh:
    """The ``(dp, cp)`` grid of this process: its context-parallel group and the FSDP mesh."""

    dp: int
    cp: int
    dp_rank: int
    cp_rank: int
    cp_group: Any  # dist.ProcessGroup
    fsdp_mesh: Any  # 1-D DeviceMesh over all ranks

    @classmethod
    def build(cls, cp: int, device_type: str | None = None) -> CPMesh:
        """Split the world into ``world / cp`` data-parallel rows of ``cp`` consecutive
        ranks (collective: every rank calls it)."""
        from torch.distributed.device_mesh import init_device_mesh

        world, rank = dist.get_world_size(), dist.get_rank()
        if cp <= 0 or world % cp:
            raise ValueError(
                f"cp={cp} must be a positive divisor of the world size {world} "
                "(world = data-parallel size x context-parallel size)"
            )
        if device_type is None:
            device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
        grid = init_device_mesh(device_type, (world // cp, cp), mesh_dim_names=("dp", "cp"))
        flat = init_device_mesh(device_type, (world,), mesh_dim_names=("fsdp",))
        return cls(world // cp, cp, rank // cp, rank % cp, grid.get_group("cp"), flat)


def prepare_model(
    model: Any,
    mesh: CPMesh,
    *,
    activation_checkpointing: bool = False,
    param_dtype: torch.dtype | None = None,
) -> Any:
    """Context-parallel attention over ``mesh.cp_group``, optional activation checkpointing of
    each decoder layer (its recomputation repeats the layer's transfers: the plan is static,
    so every rank recomputes the same ones; the attention then keeps only its inputs and
    computes its two partial attentions again in the backward pass, ``recompute``), then
    FSDP2 per decoder layer and at the root.

    ``param_dtype`` (e.g. ``torch.bfloat16``): FSDP2 mixed precision -- the parameters are
    gathered in that dtype for forward and backward, while the sharded master weights, the
    optimiser state and the gradient reduction stay in the model's dtype (float32)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    enable_context_parallel(model, mesh.cp_group, recompute=activation_checkpointing)
    if activation_checkpointing:
        kw = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
        model.config.use_cache = False
    kw: dict[str, Any] = {"mesh": mesh.fsdp_mesh}
    if param_dtype is not None:
        # reduce_dtype float32: gloo has no bf16 reduction, and float32 sums are the point.
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    return model


def train_step(
    model: Any, opt: torch.optim.Optimizer, input_ids: torch.Tensor, mesh: CPMesh
) -> float:
    """One optimiser step on this data-parallel index's ``(B, S)`` batch (the same on the
    ``cp`` ranks of a row). Returns the mean next-token loss over every data-parallel batch."""
    model.train()
    block = _block_size(model)
    batch = shard_batch(input_ids, mesh.cp_group, block_size=block)
    loss, mean = causal_lm_loss(model, batch, mesh.cp_group, scale_for_average=True)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    mean /= mesh.dp * mesh.cp  # the cp ranks of a row hold the same value
    dist.all_reduce(mean)
    return float(mean)


def _block_size(model: Any) -> int:
    from ..hf.settings import get_settings

    return get_settings(model.config).pattern.block_size


def save_checkpoint(path: str, model: Any, opt: torch.optim.Optimizer) -> None:
    """A distributed checkpoint of the sharded model and optimiser (every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, opt_sd = get_state_dict(model, opt)
    dcp.save({"model": model_sd, "optim": opt_sd}, checkpoint_id=path)


def load_checkpoint(path: str, model: Any, opt: torch.optim.Optimizer) -> None:
    """Load :func:`save_checkpoint`'s files into ``model`` and ``opt`` as sharded now -- any
    ``dp x cp`` (the checkpoint is resharded on load)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, opt_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": opt_sd}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def _llama(hidden: int, layers: int, heads: int, kv_heads: int, vocab: int, max_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=-(-hidden * 8 // 3 // 256) * 256,  # 8/3 x hidden, rounded up
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_len,
        rope_theta=1e6,
        attention_dropout=0.0,
    )
    return LlamaForCausalLM(cfg)


def main(argv: list[str] | None = None) -> int:
    """Throughput of dp x cp training steps on random tokens (under torchrun): a Llama of
    ~1B parameters by default, bf16 parameters and AdamW (a throughput measurement, not a
    training recipe: no float32 master weights; --mixed-precision for FSDP2's policy with
    them), power pattern (256-token blocks)::

    python3 -m torch.distributed.run --standalone --nproc-per-node 2 \\
        -m powerattn.distributed.train --cp 2 --seq-len 262144 --json train.json
    """
    import argparse
    import datetime
    import json
    import os
    import time
    from pathlib import Path

    import powerattn.transformers as pt

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--cp", type=int, default=2, help="context-parallel size (default 2)")
    p.add_argument("--seq-len", type=int, default=262144)
    p.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up)")
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=20, help="default 20: ~1.0B parameters")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--full-layers", default=None, help="e.g. '2 of every 7' (hybrid)")
    p.add_argument("--no-ac", action="store_true", help="no activation checkpointing")
    p.add_argument(
        "--mixed-precision",
        action="store_true",
        help="float32 master weights and optimiser state, bf16 compute (FSDP2 policy)",
    )
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=600))
    from ..ops import flex

    flex.STATIC_VARIANTS = 0  # one dynamic-shape compile (see powerattn.bench.cp)
    dev = torch.device("cuda" if cuda else "cpu")
    mesh = CPMesh.build(args.cp)
    torch.manual_seed(0)
    with torch.device(dev):
        model = _llama(
            args.hidden, args.layers, args.heads, args.kv_heads, args.vocab, args.seq_len
        )
    if cuda and not args.mixed_precision:
        model = model.to(torch.bfloat16)
    pt.apply(model, "power", full_layers=args.full_layers, block_size=256)
    n_params = sum(t.numel() for t in model.parameters())
    mp = torch.bfloat16 if args.mixed_precision else None
    prepare_model(model, mesh, activation_checkpointing=not args.no_ac, param_dtype=mp)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device=dev).manual_seed(1000 + mesh.dp_rank)
    ids = torch.randint(0, args.vocab, (1, args.seq_len), generator=g, device=dev)
    train_step(model, opt, ids, mesh)  # compiles
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    losses = [train_step(model, opt, ids, mesh) for _ in range(args.steps)]
    if cuda:
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    tokens = args.seq_len * mesh.dp
    res = {
        "world_size": dist.get_world_size(),
        "dp": mesh.dp,
        "cp": mesh.cp,
        "params": n_params,
        "seq_len": args.seq_len,
        "full_layers": args.full_layers,
        "activation_checkpointing": not args.no_ac,
        "mixed_precision": args.mixed_precision,
        "step_s": dt,
        "tokens_per_s": tokens / dt,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "losses": losses,
    }
    if dist.get_rank() == 0:
        print(json.dumps(res), flush=True)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
