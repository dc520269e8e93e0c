"""The model side of ``bench e2e``: the Qwen2 shapes, building a random model on the device,
switching its attention variant, one forward."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

VARIANTS = ("full", "power", "sliding_window", "hybrid")
HYBRID_RULE = "2 of every 7"


@dataclass
class ModelShape:
    """A Qwen2 architecture (defaults: Qwen2-7B)."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rope_theta: float = 1e6


PRESETS = {
    "qwen2-7b": ModelShape(),
    # For trying the benchmark on a CPU: same code path, toy sizes.
    "tiny": ModelShape(1000, 128, 256, 2, 4, 2, 1e6),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_kw() -> str:
    """transformers 5.2x renamed ``past_key_values`` to ``cache`` in model forwards."""
    from transformers import Qwen2ForCausalLM

    params = inspect.signature(Qwen2ForCausalLM.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def build_model(shape: ModelShape, device: torch.device, dtype: torch.dtype, max_len: int):
    """A randomly initialised Qwen2ForCausalLM, allocated and initialised on ``device``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=max_len,
        rope_theta=shape.rope_theta,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def variant_settings(name: str, block_size: int, budget_len: int) -> dict[str, Any] | None:
    """``apply`` keyword arguments of a variant (``None``: transformers' sdpa)."""
    from ..patterns import equal_budget, get_pattern

    if name == "full":
        return None
    power = get_pattern("power", block_size=block_size)
    if name == "power":
        return {"pattern": power}
    if name == "hybrid":
        return {"pattern": power, "full_layers": HYBRID_RULE}
    if name == "sliding_window":
        return {"pattern": equal_budget(budget_len, block_size)["sliding_window"]}
    raise ValueError(f"variant must be one of {VARIANTS}, got {name!r}")


def set_variant(model, name: str, block_size: int, budget_len: int) -> str:
    from .. import transformers as pt

    kw = variant_settings(name, block_size, budget_len)
    if kw is None:
        model.set_attn_implementation("sdpa")
        return "sdpa (dense causal)"
    pt.apply(model, **kw)
    s = pt.get_settings(model.config)
    full = sorted(s.full_layers)
    return s.pattern.describe() + (f", full layers {full}" if full else "")


def _forward(model, ids: torch.Tensor, cache, cache_kw: str) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
    return out.logits[:, -1:].argmax(-1)  # (B, 1)
