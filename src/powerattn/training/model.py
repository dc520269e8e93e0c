"""The model: a Hugging Face ``LlamaForCausalLM`` (random init) running our attention."""

from __future__ import annotations

import torch
from torch import nn

from ..hf import apply, dense_causal_attention
from ..ops.api import sparse_attention
from ..ops.dense import sdpa_attention
from ..patterns import Pattern, get_pattern
from ..tasks.tokenizer import ByteTokenizer
from .config import ModelConfig

# Not a powerattn.sparse_attention backend: the pattern's exact token mask handed to PyTorch's
# SDPA (its memory-efficient kernel takes any mask, with a backward). Dense cost, no sparsity
# gain: the fallback for when a block-sparse kernel cannot serve a training shape.
SDPA_MASK = "sdpa_mask"
_IMPL = "powerattn_sdpa_mask"


def _masked_sdpa_forward(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """``AttentionInterface`` function of the fallback: ``((B, S, Hq, D), None)``."""
    del attention_mask, kwargs  # unpadded documents; the pattern is the mask
    out = attention(query, key, value, module.powerattn_pattern, scaling, SDPA_MASK)
    return out.transpose(1, 2).contiguous(), None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """What a layer of the model computes: q ``(B, Hq, S, D)``, k/v ``(B, Hkv, S, D)`` ->
    ``(B, Hq, S, D)``, all of one dtype (for checks against the oracle).

    :func:`powerattn.sparse_attention` with ``pattern``; the ``full`` pattern (the dense
    ceiling of the comparison) runs as layers kept full, i.e. PyTorch's causal SDPA;
    ``backend="sdpa_mask"``: :func:`powerattn.ops.dense.sdpa_attention` (the pattern's exact
    mask through PyTorch's SDPA).
    """
    if pattern.name == "full":
        return dense_causal_attention(q, k, v, scale)
    if backend == SDPA_MASK:
        return sdpa_attention(q, k, v, pattern, scale)
    return sparse_attention(q, k, v, pattern, scale=scale, backend=backend)


def build_model(
    cfg: ModelConfig,
    pattern: Pattern,
    max_seq_len: int,
    full_layers: list[int] = (),
    backend: str = "auto",
    seed: int = 0,
    tokenizer=None,
) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` over the byte vocabulary (or over
    ``tokenizer``'s: any object with ``vocab_size``, ``pad_id``, ``bos_id``, ``eos_id``), in
    float32, switched to our attention by :func:`powerattn.transformers.apply` (``full_layers``:
    layer indices kept on dense causal attention; ``backend="sdpa_mask"``: the masked-SDPA
    fallback instead)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tokenizer if tokenizer is not None else ByteTokenizer()
    config = LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=max_seq_len,
        rope_theta=cfg.rope_theta,
        pad_token_id=tok.pad_id,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    if backend == SDPA_MASK:
        from transformers import AttentionInterface

        AttentionInterface.register(_IMPL, _masked_sdpa_forward)
        full_pat = get_pattern("full", block_size=pattern.block_size)
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.powerattn_pattern = full_pat if i in full_layers else pattern
        model.set_attn_implementation(_IMPL)
        return model
    # The full ceiling: every layer kept full (causal SDPA, a FlashAttention kernel).
    full = range(cfg.layers) if pattern.name == "full" else full_layers
    apply(model, pattern, full_layers=sorted(full), backend=backend)
    return model
