"""The model: a Hugging Face ``LlamaForCausalLM`` (random init) running our attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.api import sparse_attention
from ..patterns import Pattern, get_pattern
from .config import ModelConfig
from .tokenizer import ByteTokenizer

_IMPL = "powerattn_training"


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    scale: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The attention every model layer computes: q ``(B, Hq, S, D)``, k/v ``(B, Hkv, S, D)``
    -> ``(B, Hq, S, D)``, all of one dtype.

    :func:`powerattn.sparse_attention` with ``pattern``; the ``full`` pattern (the dense
    ceiling of the comparison) goes to PyTorch's causal SDPA, which computes the same thing
    with a FlashAttention kernel.
    """
    if pattern.name == "full":
        return F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
        )
    return sparse_attention(q, k, v, pattern, scale=scale, backend=backend)


def _attention(module: nn.Module, query, key, value, attention_mask, scaling=None, **kwargs):
    """``AttentionInterface`` function: q ``(B, Hq, S, D)``, k/v ``(B, Hkv, S, D)`` ->
    ``((B, S, Hq, D), None)``. The pattern is the one attached to the module."""
    del attention_mask, kwargs  # the pattern is the mask; every document fills the sequence
    out = attention(query, key, value, module.powerattn_pattern, scaling, module.powerattn_backend)
    return out.transpose(1, 2).contiguous(), None


def attach_attention(
    model: nn.Module, pattern: Pattern, full_layers: list[int] = (), backend: str = "auto"
) -> None:
    """Make every attention layer of ``model`` run :func:`powerattn.sparse_attention` with
    ``pattern`` (layers in ``full_layers`` with full causal attention)."""
    from transformers import AttentionInterface

    AttentionInterface.register(_IMPL, _attention)
    full = get_pattern("full", block_size=pattern.block_size)
    for i, layer in enumerate(model.model.layers):
        layer.self_attn.powerattn_pattern = full if i in full_layers else pattern
        layer.self_attn.powerattn_backend = backend
    model.set_attn_implementation(_IMPL)


def build_model(
    cfg: ModelConfig,
    pattern: Pattern,
    max_seq_len: int,
    full_layers: list[int] = (),
    backend: str = "auto",
    seed: int = 0,
) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` over the byte vocabulary, in float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = ByteTokenizer()
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
    attach_attention(model, pattern, full_layers, backend)
    return model
