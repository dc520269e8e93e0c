"""Tiny random-initialised Llama / Qwen2 / Mistral models and checks for the HF tests.

No downloads: models are built from configs. ``DEVICE`` is ``cpu`` unless the environment
variable ``POWERATTN_HF_DEVICE`` names another (``scripts/gpu_hf.sh`` sets ``cuda``).
``GEN_DTYPE`` is the dtype of the generation tests' models: float64 on the CPU (equal
computations give equal tokens), float32 on CUDA, where float64 would only exercise the
dense path and float32 takes FlexAttention for prefill and the decode kernel for decode.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from powerattn import get_pattern  # noqa: E402

DEVICE = torch.device(os.environ.get("POWERATTN_HF_DEVICE", "cpu"))
GEN_DTYPE = torch.float64 if DEVICE.type == "cpu" else torch.float32
VOCAB = 97
POWER = {"block_size": 4, "window": 2, "sink": 1}
ARCHS = ("llama", "qwen2", "mistral")
_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}
PAD, BOS, EOS = 0, 1, 2


def config(arch: str, layers: int = 2, kv_heads: int = 2, **kw):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,  # 4 query heads: grouped-query attention
        max_position_embeddings=256,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    if arch == "llama":
        return transformers.LlamaConfig(**common, **kw)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common, **kw)
    kw.setdefault("sliding_window", None)
    return transformers.MistralConfig(**common, **kw)


def model(arch: str, layers: int = 2, dtype=torch.float32, seed: int = 0, **kw):
    """A tiny model in eval mode on ``DEVICE`` (default sdpa attention)."""
    torch.manual_seed(seed)
    m = getattr(transformers, _CLASSES[arch])(config(arch, layers, **kw))
    # Random init gives near-uniform attention; larger q/k weights make the pattern matter.
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
    return m.to(dtype=dtype, device=DEVICE).eval()


def ids(batch: int = 2, seq: int = 53, seed: int = 1) -> torch.Tensor:
    """Token ids avoiding PAD/BOS/EOS (odd default length: 53 tokens, 14 blocks of 4)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=g).to(DEVICE)


def padded(seqs: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` of 1-D sequences padded on ``side`` ("left"/"right")."""
    width = max(len(s) for s in seqs)
    out = torch.full((len(seqs), width), PAD, dtype=torch.long, device=DEVICE)
    mask = torch.zeros(len(seqs), width, dtype=torch.long, device=DEVICE)
    for b, s in enumerate(seqs):
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        out[b, sl], mask[b, sl] = s, 1
    return out, mask


def with_holes(seqs: list[torch.Tensor], holes: list[list[int]]) -> tuple[torch.Tensor, ...]:
    """Right-padded batch with padding tokens inserted at ``holes[b]`` (indices into the
    padded row): ``(ids, attention_mask, real_positions)``; ``real_positions[b]`` lists where
    row ``b``'s real tokens sit."""
    rows, masks, where = [], [], []
    for s, h in zip(seqs, holes, strict=True):
        n = len(s) + len(h)
        real = [i for i in range(n) if i not in h]
        row = torch.full((n,), PAD, dtype=torch.long, device=DEVICE)
        row[real] = s
        m = torch.zeros(n, dtype=torch.long, device=DEVICE)
        m[real] = 1
        rows.append(row), masks.append(m), where.append(real)
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), PAD, dtype=torch.long, device=DEVICE)
    mask = torch.zeros(len(rows), width, dtype=torch.long, device=DEVICE)
    for b, (r, m) in enumerate(zip(rows, masks, strict=True)):
        out[b, : len(r)], mask[b, : len(m)] = r, m
    return out, mask, where


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a padded batch as ``generate`` makes them (real tokens count up)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def eager_pattern_logits(m, x: torch.Tensor, pattern, dtype=torch.float64) -> torch.Tensor:
    """Logits of eager attention given the pattern's dense mask (an independent reference)."""
    ref = copy.deepcopy(m).to(dtype)
    ref.set_attn_implementation("eager")
    dense = get_pattern(pattern).dense_mask(x.shape[1]).to(DEVICE)
    add = torch.zeros(dense.shape, dtype=dtype, device=DEVICE).masked_fill(~dense, float("-inf"))
    with torch.no_grad():
        return ref(x, attention_mask=add[None, None].expand(x.shape[0], 1, -1, -1)).logits


def check(out: torch.Tensor, ref: torch.Tensor, same_precision: torch.Tensor, factor: float):
    """``|out - ref| <= factor * |same_precision - ref|`` (max norms), with a float32-epsilon
    floor so that a lucky zero baseline cannot fail a correct result."""
    err = (out.double() - ref.double()).abs().max().item()
    base = (same_precision.double() - ref.double()).abs().max().item()
    floor = torch.finfo(torch.float32).eps * ref.abs().max().item()
    assert err <= factor * base + floor, f"error {err:.3g} > {factor} x baseline {base:.3g}"


def greedy(m, x, new: int = 10, **kw) -> torch.Tensor:
    """Greedy ``generate`` of exactly ``new`` tokens (EOS forbidden by min_new_tokens)."""
    with torch.no_grad():
        return m.generate(
            x, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=PAD, **kw
        )
