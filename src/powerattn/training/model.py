"""The model: a Hugging Face ``LlamaForCausalLM`` (random init) running our attention."""

from __future__ import annotations

import torch
from torch import nn

from ..ops.api import sparse_attention
from ..patterns import Pattern
from ..transformers import apply, dense_causal_attention
from .config import ModelConfig
from .tokenizer import ByteTokenizer


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
    ceiling of the comparison) runs as layers kept full, i.e. PyTorch's causal SDPA.
    """
    if pattern.name == "full":
        return dense_causal_attention(q, k, v, scale)
    return sparse_attention(q, k, v, pattern, scale=scale, backend=backend)


def build_model(
    cfg: ModelConfig,
    pattern: Pattern,
    max_seq_len: int,
    full_layers: list[int] = (),
    backend: str = "auto",
    seed: int = 0,
) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` over the byte vocabulary, in float32,
    switched to our attention by :func:`powerattn.transformers.apply` (``full_layers``: layer
    indices kept on dense causal attention)."""
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
    # The full ceiling: every layer kept full (causal SDPA, a FlashAttention kernel).
    full = range(cfg.layers) if pattern.name == "full" else full_layers
    apply(model, pattern, full_layers=sorted(full), backend=backend)
    return model
