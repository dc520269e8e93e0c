"""The model side of ``bench e2e``: the Qwen2 shapes, building a random model on the device,
switching its attention variant, one forward."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

VARIANTS = ("full", "power", "sliding_window", "hybrid")
HYBRID_RULE = "2 of every 7"  # the paper's hybrid: the last 2 of every 7 layers full


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


def hybrid_full_layers(num_layers: int) -> list[int]:
    """The hybrid's full-attention layers: :data:`HYBRID_RULE`, except that a model
    shallower than the rule's group keeps at least one sparse layer. At 2 layers the rule
    would make both full (the hybrid row would be ``full`` under another name), so only the
    last is; a 1-layer model has no hybrid (``ValueError``)."""
    from ..transformers import full_layers_from_rule

    if num_layers < 2:
        raise ValueError(
            f"hybrid needs at least 2 layers (one sparse, one full); the model has {num_layers}"
        )
    full = full_layers_from_rule(HYBRID_RULE, num_layers)
    return full if len(full) < num_layers else full[1:]


def variant_settings(
    name: str, block_size: int, budget_len: int, num_layers: int | None = None
) -> dict[str, Any] | None:
    """``apply`` keyword arguments of a variant (``None``: transformers' sdpa);
    ``num_layers`` sizes the hybrid (:func:`hybrid_full_layers`; ``None``: the bare rule)."""
    from ..patterns import equal_budget, get_pattern

    if name == "full":
        return None
    power = get_pattern("power", block_size=block_size)
    if name == "power":
        return {"pattern": power}
    if name == "hybrid":
        full = HYBRID_RULE if num_layers is None else hybrid_full_layers(num_layers)
        return {"pattern": power, "full_layers": full}
    if name == "sliding_window":
        return {"pattern": equal_budget(budget_len, block_size)["sliding_window"]}
    raise ValueError(f"variant must be one of {VARIANTS}, got {name!r}")


def set_variant(model, name: str, block_size: int, budget_len: int) -> str:
    """Switch ``model`` to variant ``name``; returns its one-line description."""
    from .. import transformers as pt

    num_layers = model.config.num_hidden_layers
    kw = variant_settings(name, block_size, budget_len, num_layers)
    if kw is None:
        model.set_attn_implementation("sdpa")
        return "sdpa (dense causal)"
    pt.apply(model, **kw)
    s = pt.get_settings(model.config)
    full = sorted(s.full_layers)
    desc = s.pattern.describe() + (f", full layers {full}" if full else "")
    if name == "hybrid" and full != pt.full_layers_from_rule(HYBRID_RULE, num_layers):
        desc += f" ({HYBRID_RULE} would make all {num_layers} layers full)"
    return desc


def _forward(model, ids: torch.Tensor, cache, cache_kw: str) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
    return out.logits[:, -1:].argmax(-1)  # (B, 1)
