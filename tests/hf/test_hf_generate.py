"""Conformance of ``generate`` and caches on tiny Llama / Qwen2 / Mistral models.

``full`` must give sdpa's tokens; ``power`` at 4-token blocks must give with a cache what it
gives when every step recomputes the whole sequence (``use_cache=False``), in every decoding
mode transformers offers. Models are float64 on the CPU so that equal computations give
equal tokens (float32 on CUDA, to run the kernels: see hf_models.GEN_DTYPE).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import hf_models as H
import pytest
import torch

import powerattn.hf as pt
import powerattn.hf.attention as hf_attention

transformers = H.transformers
DTYPE = H.GEN_DTYPE


def _power(arch: str, layers: int = 2, **kw):
    return pt.apply(H.model(arch, layers, dtype=DTYPE, **kw), "power", **H.POWER)


def _batch(side: str):
    """Two prompts of odd lengths (41, 30), padded on ``side``."""
    return H.padded([H.ids(1, 41, seed=3)[0], H.ids(1, 30, seed=4)[0]], side)


def _cache_kw(out) -> dict:
    """The cache of a model output as the keyword to continue from it: ``cache`` in newer
    transformers 5 releases (5.24), ``past_key_values`` in older ones (5.17)."""
    name = "cache" if "cache" in out else "past_key_values"
    return {name: out[name]}


# ---------------------------------------------------------------------------- full == sdpa
@pytest.mark.parametrize("arch", H.ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_full_generate_equals_sdpa(arch, side):
    """Same tokens as sdpa (right padding: transformers generates from a padded position,
    which attends the real keys before it, as sdpa's does)."""
    model = H.model(arch, dtype=DTYPE)
    x, mask = _batch(side)
    expected = H.greedy(model, x, 8, attention_mask=mask)
    full = pt.apply(copy.deepcopy(model), "full")
    assert torch.equal(H.greedy(full, x, 8, attention_mask=mask), expected)


# ---------------------------------------------------------------------------- cached == recomputed
_MODES = {
    "greedy": dict(do_sample=False),
    "sample": dict(do_sample=True, top_k=20, temperature=0.9),
    "beam": dict(do_sample=False, num_beams=3),
}


@pytest.mark.parametrize("arch", H.ARCHS)
@pytest.mark.parametrize("mode", list(_MODES))
def test_cached_equals_recomputed(arch, mode, monkeypatch):
    """A cached ``generate`` (prefill, then one-token steps over the cache) gives the tokens of
    recomputing the whole left-padded sequence at every step; the decode steps ran as one
    operator call per layer for the whole padded batch (the kernel's per-row start)."""
    model = _power(arch)
    x, mask = _batch("left")
    assert not mask.all(), "the batch must be padded"
    calls = []  # (operator, batch, queries)
    for name in ("sparse_attention", "sparse_attention_with_kvcache"):
        real = getattr(hf_attention, name)

        def spy(q, *args, _real=real, _name=name, **kw):
            calls.append((_name, q.shape[0], q.shape[2]))
            return _real(q, *args, **kw)

        monkeypatch.setattr(hf_attention, name, spy)
    kw = dict(max_new_tokens=14, min_new_tokens=14, pad_token_id=H.PAD, **_MODES[mode])
    runs = []
    for use_cache in (True, False):
        torch.manual_seed(0)
        with torch.no_grad():
            runs.append(model.generate(x, attention_mask=mask, use_cache=use_cache, **kw))
        if use_cache:
            decode = [c for c in calls if c[2] == 1]
            assert decode, "generate did not take the single-query decode path"
            # beams multiply the batch; every decode call holds all of it
            assert {c[0] for c in decode} == {"sparse_attention_with_kvcache"}, decode[:3]
            assert all(c[1] % x.shape[0] == 0 for c in decode), decode[:3]
    assert torch.equal(runs[0], runs[1])
    # 41 + 14 tokens: decode crossed block boundaries; the pattern dropped keys.
    assert runs[0].shape[1] == x.shape[1] + 14


@pytest.mark.parametrize("arch", H.ARCHS)
def test_assisted_and_prompt_lookup_equal_greedy(arch):
    """Speculative decoding verifies several tokens per step (a chunk of queries over the
    cache, then a cache crop): its greedy tokens are plain greedy's."""
    model = _power(arch)
    assistant = pt.apply(H.model(arch, layers=1, dtype=DTYPE, seed=7), "power", **H.POWER)
    # A prompt with repeats, so that prompt lookup finds candidates.
    x = torch.cat([H.ids(1, 20, seed=8)] * 2 + [H.ids(1, 5, seed=9)], dim=1)
    expected = H.greedy(model, x, 12)
    assert torch.equal(H.greedy(model, x, 12, assistant_model=assistant), expected)
    assert torch.equal(H.greedy(model, x, 12, prompt_lookup_num_tokens=3), expected)


@pytest.mark.parametrize("arch", H.ARCHS)
def test_continue_from_cache_and_inputs_embeds(arch):
    model = _power(arch)
    x = H.ids(1, 47, seed=10)
    with torch.no_grad():
        whole = model(x).logits
        first = model(x[:, :29], use_cache=True)
        rest = model(x[:, 29:], **_cache_kw(first)).logits  # a 18-token chunk
        torch.testing.assert_close(rest, whole[:, 29:])  # the dtype's default tolerance
        expected = H.greedy(model, x, 9)
        cache = _cache_kw(model(x[:, :29], use_cache=True))
        assert torch.equal(H.greedy(model, x, 9, **cache), expected)
        embeds = model.get_input_embeddings()(x)
        new = H.greedy(model, None, 9, inputs_embeds=embeds)
        assert torch.equal(new[:, -9:], expected[:, -9:])


# ---------------------------------------------------------------------------- padding
@pytest.mark.parametrize("arch", H.ARCHS)
def test_left_padded_batch_equals_one_by_one(arch):
    model = _power(arch)
    x, mask = _batch("left")
    batched = H.greedy(model, x, 10, attention_mask=mask)
    for b in range(2):
        alone = x[b : b + 1, mask[b].bool()]
        assert torch.equal(batched[b, x.shape[1] :], H.greedy(model, alone, 10)[0, -10:])


def test_right_padded_generate_cached_equals_recomputed():
    """Right padding then generate: the new tokens follow the padding (a mask with holes)."""
    model = _power("qwen2")
    x, mask = _batch("right")
    runs = [
        H.greedy(model, x, 10, attention_mask=mask, use_cache=use_cache)
        for use_cache in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])


def test_holes_batch_equals_one_by_one():
    """Padding inside a prompt (a 0 between 1s) with generate's position ids: each row's
    logits at its real tokens, and its greedy tokens, are those of the sequence alone."""
    model = _power("llama")
    seqs = [H.ids(1, 37, seed=3)[0], H.ids(1, 30, seed=4)[0]]
    x, mask, where = H.with_holes(seqs, [[3, 4, 20], [0, 10]])
    with torch.no_grad():
        out = model(x, attention_mask=mask, position_ids=H.positions(mask)).logits
        for b, s in enumerate(seqs):
            torch.testing.assert_close(out[b, where[b]], model(s[None]).logits[0])
    # Left-pad the rows with holes so that both end on a real token, then generate.
    width = x.shape[1]
    x2 = torch.full_like(x, H.PAD)
    m2 = torch.zeros_like(mask)
    for b, r in enumerate(where):
        n = r[-1] + 1
        x2[b, width - n :], m2[b, width - n :] = x[b, :n], mask[b, :n]
    batched = H.greedy(model, x2, 8, attention_mask=m2)
    for b, s in enumerate(seqs):
        assert torch.equal(batched[b, width:], H.greedy(model, s[None], 8)[0, -8:])


# ---------------------------------------------------------------------------- static cache
@pytest.mark.parametrize("arch", H.ARCHS)
def test_static_cache_equals_dynamic(arch, monkeypatch):
    """``cache_implementation="static"``: the keys are the whole pre-allocated cache; only the
    written slots count. Same tokens as the dynamic cache, padded batch included; decode reads
    the lengths (unpadded) or each row's start (left-padded) on the device, one
    sparse_attention_with_kvcache call per layer."""
    model = _power(arch)
    x, mask = _batch("left")
    calls = []
    real = hf_attention.sparse_attention_with_kvcache
    monkeypatch.setattr(
        hf_attention,
        "sparse_attention_with_kvcache",
        lambda *a, **kw: (
            calls.append(kw.get("cache_seqlens", kw.get("cache_leftpad"))) or real(*a, **kw)
        ),
    )
    for kw in (dict(attention_mask=mask), {}):
        prompt = x if kw else x[:1, -37:]
        dynamic = H.greedy(model, prompt, 10, **kw)
        calls.clear()
        static = H.greedy(model, prompt, 10, cache_implementation="static", **kw)
        assert torch.equal(static, dynamic)
        # unpadded: the lengths; padded: each row's start (one call for the batch)
        assert calls and all(c.dtype == torch.int32 and c.shape == prompt.shape[:1] for c in calls)


def test_static_cache_hybrid_and_sampling():
    model = pt.apply(H.model("llama", layers=3, dtype=DTYPE), "power", full_layers=[1], **H.POWER)
    x = H.ids(1, 33, seed=11)
    kw = dict(max_new_tokens=9, do_sample=True, top_k=10, pad_token_id=H.PAD)
    runs = []
    for cache in ("static", None):
        torch.manual_seed(3)
        with torch.no_grad():
            runs.append(model.generate(x, cache_implementation=cache, **kw))
    assert torch.equal(runs[0], runs[1])


def test_static_cache_compiled_decode_step():
    """The decode step compiled with torch.compile (dynamo; the attention runs eagerly between
    graphs): same tokens as the uncompiled dynamic cache."""
    model = _power("llama")
    x = H.ids(1, 29, seed=12)
    expected = H.greedy(model, x, 6)
    if H.DEVICE.type == "cpu":  # dynamo only: inductor's C++ compile is too slow for CI
        config = transformers.CompileConfig(backend="eager", fullgraph=False)
        config._compile_all_devices = True  # transformers compiles only on accelerators
    else:  # what generate does by itself on a GPU: inductor, CUDA graphs
        config = transformers.CompileConfig()
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    out = H.greedy(model, x, 6, cache_implementation="static", compile_config=config)
    assert torch.equal(out, expected)
    assert counters["stats"]["unique_graphs"] > 0, "generate did not compile the decode step"


def test_static_cache_compiled_decode_step_is_one_graph():
    """``generate`` with a static cache and ``CompileConfig(fullgraph=True)``: through the
    decode kernel (the Triton interpreter on the CPU, in a subprocess) the compiled decode
    step is one graph with no break -- the mask function computes the written slots on the
    device -- and gives the uncompiled static cache's tokens (compiled_decode_case.py)."""
    pytest.importorskip("triton")
    here = Path(__file__).resolve().parent
    env = dict(os.environ)
    if H.DEVICE.type == "cpu":
        env["TRITON_INTERPRET"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(here.parents[1] / "src"), str(here), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, str(here / "compiled_decode_case.py")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "one graph, same tokens" in proc.stdout


# ---------------------------------------------------------------------------- heads
@pytest.mark.parametrize("kv_heads", [1, 4])
def test_mqa_and_mha(kv_heads):
    """One key/value head for all queries (MQA) and one per query head (MHA); 2 is GQA."""
    model = pt.apply(H.model("llama", kv_heads=kv_heads, dtype=DTYPE), "power", **H.POWER)
    x = H.ids(1, 43, seed=13)
    runs = [H.greedy(model, x, 8, use_cache=c) for c in (True, False)]
    assert torch.equal(runs[0], runs[1])
