"""Context parallelism for a transformers model switched to powerattn (Llama, Qwen2, Mistral).

::

    powerattn.transformers.apply(model, "power", block_size=256)  # the pattern, as usual
    enable_context_parallel(model, group)                          # then shard the sequence
    batch = shard_batch(input_ids, group)       # this rank's tokens, positions and labels
    loss = causal_lm_loss(model, batch)         # differentiable; sum gradients over `group`

Every attention layer then calls :func:`context_parallel_attention` on this rank's shard
(layers kept full use the ``full`` pattern through the same plan: all earlier shards).
RoPE sees the absolute positions (``position_ids``); labels are shifted on the whole
sequence before sharding, so the token after a shard's last position is its label too.

Gradients: ``loss.backward()`` on every rank gives each rank its share of the parameter
gradients (the loss is this rank's token losses over the whole sequence's token count); their
**sum** over ``group`` is the gradient of the whole sequence's mean loss. With FSDP2 or DDP
over the context-parallel ranks, which *average*, scale the loss by the group size
(:func:`causal_lm_loss` ``scale_for_average=True``).

Not supported: padding masks and packed sequences under context parallelism, generation
(decode) -- use the model without :func:`enable_context_parallel` for those.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..hf.integration import register as register_powerattn
from ..hf.masks import mask_forward
from ..hf.settings import ATTN_IMPLEMENTATION, get_settings, layer_route
from ..patterns import get_pattern
from .attention import context_parallel_attention
from .plan import check_shard

CP_IMPLEMENTATION = "powerattn_cp"
_GROUP_ATTR = "_powerattn_cp_group"
_RECOMPUTE_ATTR = "_powerattn_cp_recompute"


def _cp_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``AttentionInterface`` function: ``(out (B, L, Hq, D), None)`` for this rank's shard."""
    if dropout:
        raise NotImplementedError("powerattn has no attention dropout; set attention_dropout=0")
    if attention_mask is not None:
        raise NotImplementedError(
            "context parallelism takes no padding mask: shard unpadded sequences (pad the "
            "batch to a multiple of world_size x block_size with real tokens, or drop the mask)"
        )
    if kwargs.get("output_attentions"):
        raise NotImplementedError("output_attentions is not available under context parallelism")
    route = layer_route(module)
    pattern = route.pattern
    if pattern is None:  # a layer kept full
        block = get_settings(module.config).pattern.block_size
        pattern = get_pattern("full", block_size=block)
    out = context_parallel_attention(
        query,
        key,
        value,
        pattern,
        group=module.__dict__.get(_GROUP_ATTR),
        scale=scaling,
        backend=route.backend,
        validate=False,  # shard_batch validated the split once per batch
        recompute=module.__dict__.get(_RECOMPUTE_ATTR, False),
    )
    return out.transpose(1, 2).contiguous(), None


def enable_context_parallel(
    model: Any, group: dist.ProcessGroup | None = None, *, recompute: bool = False
) -> Any:
    """Switch a model already converted by :func:`powerattn.transformers.apply` to
    context-parallel attention over ``group`` (default: the world), in place; returns it.
    ``recompute``: the attention keeps only its inputs for the backward pass
    (:func:`context_parallel_attention`'s ``recompute``; for activation checkpointing).
    :func:`disable_context_parallel` switches back (e.g. to generate)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if model.config._attn_implementation != ATTN_IMPLEMENTATION:
        raise ValueError(
            "enable_context_parallel needs a model switched to powerattn first: call "
            "powerattn.transformers.apply(model, pattern, ...) (attn_implementation is "
            f"{model.config._attn_implementation!r})"
        )
    register_powerattn()
    AttentionInterface.register(CP_IMPLEMENTATION, _cp_attention_forward)
    AttentionMaskInterface.register(CP_IMPLEMENTATION, mask_forward)
    for module in model.modules():
        if getattr(module, "config", None) is model.config and hasattr(module, "layer_idx"):
            object.__setattr__(module, _GROUP_ATTR, group)
            object.__setattr__(module, _RECOMPUTE_ATTR, recompute)
            layer_route(module)  # resolve now: a bad setting fails before any collective
    model.set_attn_implementation(CP_IMPLEMENTATION)
    return model


def disable_context_parallel(model: Any) -> Any:
    """Back to single-process powerattn attention (in place; returns the model)."""
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    return model


def shard_batch(
    input_ids: torch.Tensor,
    group: dist.ProcessGroup | None = None,
    *,
    block_size: int = 1,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """This rank's part of a ``(B, S)`` batch of whole sequences, for causal LM training.

    Returns ``input_ids`` and ``position_ids`` ``(B, L)`` (absolute positions ``p L ..``) and
    ``labels`` ``(B, L)``: the next token of each position, shifted over the whole sequence
    (the last position of the sequence gets -100), or this rank's part of ``labels``
    ``(B, S)`` when given (already aligned: the target predicted at each position, -100 for
    none). ``S`` must be a multiple of ``world_size x block_size`` (pass the pattern's
    ``block_size``); every rank must pass the same batch (checked with one small all-gather).
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq_len), got {tuple(input_ids.shape)}")
    B, S = input_ids.shape
    # Compare shapes first (one collective on every rank), then raise the same error everywhere.
    dev = input_ids.device if dist.get_backend(group) == "nccl" else torch.device("cpu")
    mine = torch.tensor([B, S], dtype=torch.int64, device=dev)
    seen = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(seen, mine, group=group)
    if len({tuple(t.tolist()) for t in seen}) > 1:
        raise ValueError(
            "shard_batch: ranks passed batches of different shapes "
            f"{[tuple(t.tolist()) for t in seen]}; every rank of the group must pass the "
            "same (batch, seq_len) batch"
        )
    check_shard(get_pattern("full", block_size=block_size), S, world)
    L = S // world
    sl = slice(rank * L, (rank + 1) * L)
    if labels is None:
        labels = torch.full_like(input_ids, -100)
        labels[:, :-1] = input_ids[:, 1:]
    elif labels.shape != input_ids.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids {(B, S)}")
    pos = torch.arange(rank * L, (rank + 1) * L, device=input_ids.device).expand(B, L)
    return {"input_ids": input_ids[:, sl], "position_ids": pos, "labels": labels[:, sl]}


def causal_lm_loss(
    model: Any,
    batch: dict[str, torch.Tensor],
    group: dist.ProcessGroup | None = None,
    *,
    scale_for_average: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss_for_backward, mean_loss)`` of a :func:`shard_batch` batch.

    ``loss_for_backward`` is this rank's summed token losses over the *whole* batch's token
    count (times the group size with ``scale_for_average``, for FSDP/DDP, which average
    gradients over the group); ``mean_loss`` (detached) is the whole batch's mean next-token
    loss, the same on every rank.
    """
    world = dist.get_world_size(group)
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    logits = out.logits
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # the loss in float32, as transformers computes it
    local = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        batch["labels"].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    B, L = batch["input_ids"].shape
    total = B * (L * world - 1)  # every position but the last of each sequence
    loss = local / total
    mean = loss.detach().clone()
    dist.all_reduce(mean, group=group)
    return (loss * world if scale_for_average else loss), mean
