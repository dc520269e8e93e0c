"""The transformers integration on tiny random-initialised Llama / Qwen2 / Mistral models (CPU).

References are float64 copies of the same model run with an independent attention: transformers'
eager attention given the pattern's dense 4-D mask, or (for per-layer masks) a plain masked
softmax registered for the test. Tolerances are relative to the error of the same reference
computation run in float32 (2x for logits, 3x for gradients), never absolute.
Block size 4, window 2, sequences of 40-60 tokens: the pattern really drops keys.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

import powerattn.transformers as pt  # noqa: E402
from powerattn import get_pattern  # noqa: E402

VOCAB = 97
SEQ = 56  # 14 blocks of 4
POWER = {"block_size": 4, "window": 2, "sink": 1}


def _config(arch: str, layers: int = 3, **kw):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "llama":
        return transformers.LlamaConfig(**common, **kw)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common, **kw)
    kw.setdefault("sliding_window", None)
    return transformers.MistralConfig(**common, **kw)


_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "mistral": "MistralForCausalLM",
}
ARCHS = list(_CLASSES)


def _model(arch: str, layers: int = 3, dtype=torch.float32, seed: int = 0, **kw):
    torch.manual_seed(seed)
    model = getattr(transformers, _CLASSES[arch])(_config(arch, layers, **kw))
    # Random init gives near-uniform logits; larger weights make the attention pattern matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
    return model.to(dtype).eval()


def _ids(batch: int = 2, seq: int = SEQ, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=g)


def _eager_logits(model, ids: torch.Tensor, pattern, dtype=torch.float64) -> torch.Tensor:
    """Logits of an eager forward given the pattern's dense mask (a 4-D additive mask)."""
    ref = copy.deepcopy(model).to(dtype)
    ref.set_attn_implementation("eager")
    dense = get_pattern(pattern).dense_mask(ids.shape[1])  # (S, S) bool
    add = torch.zeros(dense.shape, dtype=dtype).masked_fill(~dense, float("-inf"))
    mask = add[None, None].expand(ids.shape[0], 1, -1, -1)
    with torch.no_grad():
        return ref(ids, attention_mask=mask).logits


def _check(out: torch.Tensor, ref: torch.Tensor, same_precision: torch.Tensor, factor: float):
    """``|out - ref| <= factor * |same_precision - ref|`` (max norms), with a float32-epsilon
    floor so that a lucky zero baseline cannot fail a correct result."""
    err = (out.double() - ref).abs().max().item()
    base = (same_precision.double() - ref).abs().max().item()
    floor = torch.finfo(torch.float32).eps * ref.abs().max().item()
    assert err <= factor * base + floor, f"error {err:.3g} > {factor} x baseline {base:.3g}"


# ---------------------------------------------------------------------------- forward
@pytest.mark.parametrize("arch", ARCHS)
def test_full_pattern_matches_sdpa(arch):
    model = _model(arch)
    ids = _ids()
    with torch.no_grad():
        sdpa = model(ids).logits
    ref = _eager_logits(model, ids, get_pattern("full", block_size=4))
    pt.apply(model, "full", block_size=4)
    assert model.config._attn_implementation == "powerattn"
    with torch.no_grad():
        out = model(ids).logits
    _check(out, ref, sdpa, 2.0)
    torch.testing.assert_close(out, sdpa, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_power_matches_eager_with_dense_mask(arch):
    model = _model(arch)
    ids = _ids()
    pattern = get_pattern("power", **POWER)
    with torch.no_grad():
        full = model(ids).logits
    ref = _eager_logits(model, ids, pattern)
    same = _eager_logits(model, ids, pattern, dtype=torch.float32)
    pt.apply(model, pattern)
    with torch.no_grad():
        out = model(ids).logits
    _check(out, ref, same, 2.0)
    # The pattern drops keys at this length: the logits must move away from full attention's.
    assert (out - full).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_flow_and_match(arch):
    ids = _ids()
    pattern = get_pattern("power", **POWER)

    def grads(model, mask=None):
        model.train()
        loss = model(ids, labels=ids, attention_mask=mask).loss
        loss.backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    def dense_mask(dtype):
        dense = pattern.dense_mask(SEQ)
        add = torch.zeros(dense.shape, dtype=dtype).masked_fill(~dense, float("-inf"))
        return add[None, None].expand(ids.shape[0], 1, -1, -1)

    base = _model(arch)
    ref_model = copy.deepcopy(base).double()
    ref_model.set_attn_implementation("eager")
    ref = grads(ref_model, dense_mask(torch.float64))
    same_model = copy.deepcopy(base)
    same_model.set_attn_implementation("eager")
    same = grads(same_model, dense_mask(torch.float32))
    model = pt.apply(copy.deepcopy(base), pattern)
    out = grads(model)
    for name, g in out.items():
        assert torch.isfinite(g).all(), name
        if "proj" in name:
            assert g.abs().max() > 0, f"no gradient reached {name}"
        _check(g, ref[name], same[name], 3.0)


# ---------------------------------------------------------------------------- generate
@pytest.mark.parametrize("arch", ARCHS)
def test_generate_with_cache_equals_recompute(arch, monkeypatch):
    model = pt.apply(_model(arch, dtype=torch.float64), "power", **POWER)
    prompt = _ids(batch=1, seq=40)
    new = 20  # 40 + 20 tokens: 15 blocks, decode crosses block boundaries

    seen_q_lengths = []
    real = pt.sparse_attention

    def spy(q, k, v, pattern, **kw):
        seen_q_lengths.append(q.shape[2])
        return real(q, k, v, pattern, **kw)

    monkeypatch.setattr(pt, "sparse_attention", spy)
    with torch.no_grad():
        cached = model.generate(
            prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
        )
        assert 1 in seen_q_lengths, "generate did not use the single-query decode path"
        ids = prompt
        for _ in range(new):
            logits = model(ids, use_cache=False).logits[:, -1]
            logits[:, 2] = float("-inf")  # min_new_tokens forbids EOS the same way
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, ids)


# ---------------------------------------------------------------------------- padding
@pytest.mark.parametrize("arch", ARCHS)
def test_left_padding_equals_unpadded(arch):
    model = pt.apply(_model(arch), "power", **POWER)
    seqs = [_ids(1, 41, seed=3)[0], _ids(1, 52, seed=4)[0]]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, width - len(s) :] = s
        mask[b, width - len(s) :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, position_ids=pos).logits
    pattern = get_pattern("power", **POWER)
    for b, s in enumerate(seqs):
        ref = _eager_logits(model, s[None], pattern)
        same = _eager_logits(model, s[None], pattern, dtype=torch.float32)
        _check(out[b : b + 1, width - len(s) :], ref, same, 2.0)


def test_right_padding_without_cache():
    model = pt.apply(_model("qwen2"), "power", **POWER)
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, 45:] = 0
    with torch.no_grad():
        out = model(ids, attention_mask=mask).logits
    pattern = get_pattern("power", **POWER)
    ref = _eager_logits(model, ids[:1, :45], pattern)
    same = _eager_logits(model, ids[:1, :45], pattern, dtype=torch.float32)
    _check(out[:1, :45], ref, same, 2.0)


def test_left_padded_generate_equals_per_sequence():
    model = pt.apply(_model("llama", dtype=torch.float64), "power", **POWER)
    seqs = [_ids(1, 37, seed=5), _ids(1, 44, seed=6)]
    width = 44
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, width - s.shape[1] :] = s[0]
        mask[b, width - s.shape[1] :] = 1
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, **kw)
        for b, s in enumerate(seqs):
            alone = model.generate(s, **kw)
            assert torch.equal(batched[b, width:], alone[0, s.shape[1] :])


# ---------------------------------------------------------------------------- hybrid
_LAYER_MASKS: dict[int, torch.Tensor] = {}


def _masked_softmax_attention(module, query, key, value, attention_mask, scaling=None, **kw):
    """Independent reference: dense attention with a per-layer boolean mask."""
    group = query.shape[1] // key.shape[1]
    k = key.repeat_interleave(group, dim=1)
    v = value.repeat_interleave(group, dim=1)
    scores = query @ k.transpose(-1, -2) * scaling
    scores = scores.masked_fill(~_LAYER_MASKS[module.layer_idx], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).contiguous(), None


@pytest.mark.parametrize("arch", ARCHS)
def test_hybrid_layers_are_dense(arch):
    layers, full = 4, [1, 3]
    model = _model(arch, layers=layers)
    ids = _ids()
    pattern = get_pattern("power", **POWER)
    sparse_mask = pattern.dense_mask(SEQ)
    causal = get_pattern("full").dense_mask(SEQ)
    _LAYER_MASKS.clear()
    _LAYER_MASKS.update({i: causal if i in full else sparse_mask for i in range(layers)})
    transformers.AttentionInterface.register("powerattn_test_ref", _masked_softmax_attention)

    def reference(dtype):
        ref = copy.deepcopy(model).to(dtype)
        ref.set_attn_implementation("powerattn_test_ref")
        with torch.no_grad():
            return ref(ids).logits

    ref, same = reference(torch.float64), reference(torch.float32)
    with torch.no_grad():
        all_full = copy.deepcopy(model)(ids).logits
    hybrid = pt.apply(copy.deepcopy(model), pattern, full_layers="2 of every 4")
    assert hybrid.config.powerattn["full_layers"] == [2, 3]
    hybrid = pt.apply(copy.deepcopy(model), pattern, full_layers=full)
    with torch.no_grad():
        out = hybrid(ids).logits
    _check(out, ref, same, 2.0)
    # Every layer full -> dense attention everywhere: the sdpa model's logits.
    dense = pt.apply(copy.deepcopy(model), pattern, full_layers=list(range(layers)))
    with torch.no_grad():
        torch.testing.assert_close(dense(ids).logits, all_full, rtol=1e-4, atol=1e-4)


def test_attention_forward_routes_by_layer_idx():
    model = pt.apply(_model("qwen2", layers=2), "power", full_layers=[1], **POWER)
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 4, 48, 16, generator=g)
    k = torch.randn(1, 2, 48, 16, generator=g)
    v = torch.randn(1, 2, 48, 16, generator=g)
    attn = [layer.self_attn for layer in model.model.layers]
    for module, pattern in ((attn[0], get_pattern("power", **POWER)), (attn[1], "full")):
        out, weights = pt.attention_forward(module, q, k, v, None, scaling=0.25)
        assert weights is None and out.shape == (1, 48, 4, 16)
        ref = pt.sparse_attention(q.double(), k.double(), v.double(), pattern, scale=0.25)
        torch.testing.assert_close(out.transpose(1, 2).double(), ref, rtol=1e-5, atol=1e-5)
    # Dense layer at decode and in a chunk continuing a cache (queries aligned to the end).
    for sq in (1, 5):
        out, _ = pt.attention_forward(attn[1], q[:, :, -sq:], k, v, None, scaling=0.25)
        ref = pt.sparse_attention(
            q[:, :, -sq:].double(), k.double(), v.double(), "full", scale=0.25
        )
        torch.testing.assert_close(out.transpose(1, 2).double(), ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_keeps_settings(arch, tmp_path):
    model = pt.apply(_model(arch, layers=4), "power", full_layers="1 of every 2", **POWER)
    ids = _ids()
    with torch.no_grad():
        before = model(ids).logits
    model.save_pretrained(tmp_path)
    pt.register()
    cls = type(model)
    loaded = cls.from_pretrained(tmp_path, attn_implementation="powerattn").eval()
    assert loaded.config._attn_implementation == "powerattn"
    assert loaded.config.powerattn == model.config.powerattn
    assert pt.get_settings(loaded.config) == pt.get_settings(model.config)
    assert loaded.config.powerattn["full_layers"] == [1, 3]
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, before, rtol=0, atol=0)


def test_settings_roundtrip_tuple_parameters(tmp_path):
    pattern = get_pattern("longnet", block_size=4, segments=((4, 1), (8, 2)))
    model = pt.apply(_model("llama", layers=2), pattern)
    model.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path, attn_implementation="powerattn"
    )
    assert pt.get_settings(loaded.config).pattern == pattern


def test_apply_refuses_pattern_that_does_not_roundtrip():
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Unregistered(type(get_pattern("power"))):  # inherits the name "power"
        pass

    model = _model("llama", layers=1)
    with pytest.raises(ValueError, match="cannot be stored"):
        pt.apply(model, Unregistered(**POWER))
    assert pt.CONFIG_KEY not in model.config.to_dict()


def test_register_is_idempotent():
    pt.register()
    pt.register()
    assert transformers.AttentionInterface()["powerattn"] is pt.attention_forward
    from transformers.masking_utils import AttentionMaskInterface

    assert AttentionMaskInterface()["powerattn"] is pt.mask_forward


def test_register_refuses_old_transformers(monkeypatch):
    import sys

    # The module object itself: loading a checkpoint can re-create transformers' lazy module.
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "4.56.2")
    with pytest.raises(ImportError, match="transformers >= 5"):
        pt.register()


def test_mask_function_returns_at_most_2d():
    pt.register()
    from transformers.masking_utils import create_causal_mask

    model = pt.apply(_model("llama", layers=1), "power", **POWER)
    embeds = torch.zeros(2, SEQ, 64)
    none = create_causal_mask(model.config, embeds, torch.ones(2, SEQ, dtype=torch.long), None)
    assert none is None
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[1, :5] = 0
    out = create_causal_mask(model.config, embeds, mask, None)
    assert out.shape == (2, SEQ) and out.dtype == torch.bool and torch.equal(out, mask.bool())


# ---------------------------------------------------------------------------- rules
def test_full_layers_rule():
    assert pt.full_layers_from_rule("2 of every 7", 28) == [5, 6, 12, 13, 19, 20, 26, 27]
    assert pt.full_layers_from_rule("1/3", 7) == [2, 5, 6]
    assert pt.full_layers_from_rule("0 of 4", 8) == []


@pytest.mark.parametrize("rule", ["two of seven", "3 of every 2", "1 of every 0", ""])
def test_full_layers_bad_rule(rule):
    with pytest.raises(ValueError, match="full_layers rule"):
        pt.full_layers_from_rule(rule, 28)


@pytest.mark.parametrize("full_layers", [[0, 3], [-1], [True], "2 of 9 layers", 3])
def test_apply_rejects_bad_full_layers(full_layers):
    with pytest.raises(ValueError, match="full_layers"):
        pt.apply(_model("llama", layers=3), "power", full_layers=full_layers)


@pytest.mark.parametrize("full_layers", [[0, 3], [-1]])
def test_out_of_range_full_layers_in_config_refused(full_layers, tmp_path):
    """Indices the model does not have (a hand-edited config.powerattn) are refused at the
    first forward, naming the valid range, not silently ignored; also after a reload."""
    model = pt.apply(_model("llama", layers=3), "power", full_layers=[1], **POWER)
    model.config.powerattn["full_layers"] = full_layers
    with pytest.raises(ValueError, match=r"full_layers.*out of range.*0\.\.2"):
        model(_ids())
    model.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path, attn_implementation="powerattn"
    )
    with pytest.raises(ValueError, match=r"config.powerattn\['full_layers'\].*0\.\.2"):
        loaded(_ids())


def test_apply_rejects_bad_pattern_and_backend():
    with pytest.raises(ValueError, match="unknown pattern"):
        pt.apply(_model("llama", layers=1), "powr")
    with pytest.raises(ValueError, match="no parameter"):
        pt.apply(_model("llama", layers=1), "power", windw=3)
    with pytest.raises(ValueError, match="backend"):
        pt.apply(_model("llama", layers=1), "power", backend="cuda")


# ---------------------------------------------------------------------------- refusals
def test_mistral_sliding_window_refused():
    model = _model("mistral", layers=2, sliding_window=16)
    with pytest.raises(NotImplementedError, match="sliding_window"):
        pt.apply(model, "power", **POWER)
    # Loaded by name without apply(): refused at the first forward.
    pt.register()
    model.set_attn_implementation("powerattn")
    with pytest.raises(NotImplementedError, match="sliding"):
        model(_ids())


def test_qwen2_use_sliding_window_refused():
    model = _model("qwen2", layers=2, use_sliding_window=True, sliding_window=16)
    with pytest.raises(NotImplementedError, match="sliding"):
        pt.apply(model, "power", **POWER)


def test_static_cache_refused():
    model = pt.apply(_model("llama", layers=1), "power", **POWER)
    with pytest.raises(NotImplementedError, match="static"):
        model.generate(_ids(1, 12), max_new_tokens=2, cache_implementation="static", pad_token_id=0)


def test_padding_with_holes_refused():
    model = pt.apply(_model("llama", layers=1), "power", **POWER)
    mask = torch.ones(2, SEQ, dtype=torch.long)
    mask[0, 10:12] = 0
    with pytest.raises(ValueError, match="attention_mask row 0"):
        model(_ids(), attention_mask=mask)


def test_mask_batch_mismatch_refused():
    # A (1, S) padding mask for a batch of 2 would leave row 1 without attention output.
    model = pt.apply(_model("llama", layers=1), "power", **POWER)
    mask = torch.ones(1, SEQ, dtype=torch.long)
    mask[0, :5] = 0
    with pytest.raises(ValueError, match="attention_mask"):
        model(_ids(), attention_mask=mask)
    q, k = torch.randn(2, 4, SEQ, 16), torch.randn(2, 2, SEQ, 16)
    attn = model.model.layers[0].self_attn
    with pytest.raises(ValueError, match="attention_mask"):
        pt.attention_forward(attn, q, k, k, mask.bool(), scaling=0.25)


def test_4d_mask_refused():
    model = pt.apply(_model("llama", layers=1), "power", **POWER)
    mask = torch.zeros(2, 1, SEQ, SEQ)
    with pytest.raises(ValueError, match="4-D attention_mask"):
        model(_ids(), attention_mask=mask)


def test_packed_sequences_refused():
    model = pt.apply(_model("llama", layers=1), "power", **POWER)
    pos = torch.cat([torch.arange(30), torch.arange(SEQ - 30)])[None].expand(2, -1)
    with pytest.raises(NotImplementedError, match="packed"):
        model(_ids(), position_ids=pos, use_cache=False)  # detection needs no cache


def test_packed_sequences_with_cache_refused():
    # With a cache (use_cache defaults to the config's True) transformers does not look for
    # packing; the attention function refuses restarting position ids itself.
    model = pt.apply(_model("llama", layers=1), "power", **POWER)
    pos = torch.cat([torch.arange(30), torch.arange(SEQ - 30)])[None].expand(2, -1)
    with pytest.raises(NotImplementedError, match="packed"):
        model(_ids(), position_ids=pos)
    model.train()
    with pytest.raises(NotImplementedError, match="packed"):
        model(_ids(), position_ids=pos, labels=_ids())
    # Contiguous position ids that do not start at 0 are one sequence: accepted.
    with torch.no_grad():
        model.eval()(_ids(), position_ids=torch.arange(7, 7 + SEQ)[None])


def test_varlen_kwargs_refused():
    model = pt.apply(_model("llama", layers=1), "power", **POWER)
    cu = torch.tensor([0, 30, SEQ], dtype=torch.int32)
    with pytest.raises(NotImplementedError, match="cu_seq_lens"):
        model(_ids(1), cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=30, max_length_k=30)


def test_output_attentions_refused():
    model = pt.apply(_model("llama", layers=1), "power", **POWER)
    with pytest.raises(NotImplementedError, match="output_attentions"):
        model(_ids(), output_attentions=True)


def test_bidirectional_refused():
    model = pt.apply(_model("llama", layers=1), "power", **POWER)
    q = torch.randn(1, 4, 8, 16)
    k = v = torch.randn(1, 2, 8, 16)
    attn = model.model.layers[0].self_attn
    with pytest.raises(NotImplementedError, match="causal"):
        pt.attention_forward(attn, q, k, v, None, scaling=0.25, is_causal=False)
    model = _model("llama", layers=1)
    model.config.is_causal = False
    with pytest.raises(NotImplementedError, match="is_causal"):
        pt.apply(model, "power", **POWER)


@pytest.mark.parametrize(
    ("name", "value"),
    [("s_aux", torch.zeros(4)), ("position_bias", torch.zeros(1, 4, 8, 8))],
)
def test_attention_sinks_and_position_bias_refused(name, value):
    """Terms the operator does not compute are refused, not silently dropped."""
    model = pt.apply(_model("llama", layers=1), "power", **POWER)
    q = torch.randn(1, 4, 8, 16)
    k = v = torch.randn(1, 2, 8, 16)
    attn = model.model.layers[0].self_attn
    with pytest.raises(NotImplementedError, match=name):
        pt.attention_forward(attn, q, k, v, None, scaling=0.25, **{name: value})
    out, _ = pt.attention_forward(attn, q, k, v, None, scaling=0.25, **{name: None})
    assert out.shape == (1, 8, 4, 16)


def test_apply_refuses_static_cache_config():
    model = _model("llama", layers=1)
    model.generation_config.cache_implementation = "static"
    with pytest.raises(NotImplementedError, match="cache_implementation"):
        pt.apply(model, "power", **POWER)
    assert model.config._attn_implementation != "powerattn"


def test_attention_dropout_refused():
    model = pt.apply(_model("qwen2", layers=1, attention_dropout=0.1), "power", **POWER)
    model.train()
    with pytest.raises(NotImplementedError, match="dropout"):
        model(_ids())


# ---------------------------------------------------------------------------- bench e2e
def test_bench_e2e_plumbing(tmp_path, capsys):
    """The benchmark's code path on a toy model on the CPU: every variant measured, the JSON
    complete, the summary computed, the table re-printed from the JSON (no timing checked)."""
    from powerattn.bench import e2e
    from powerattn.cli import main

    cfg = e2e.E2EConfig(
        model="tiny",
        seq_lens=(96, 64),
        decode_steps=2,
        block_size=16,
        warmup_lens=(32,),
        device="cpu",
        profile_path=str(tmp_path / "prof.txt"),
    )
    doc = e2e.run(cfg, str(tmp_path / "e2e.json"))
    assert {(r["variant"], r["seq_len"]) for r in doc["results"]} == {
        (v, n) for v in e2e.VARIANTS for n in (64, 96)
    }
    assert all("error" not in r and r["decode_steps"] == 2 for r in doc["results"])
    assert "power(block_size=16" in doc["variants"]["power"]
    assert "full layers [0, 1]" in doc["variants"]["hybrid"]  # 2 of every 7 with 2 layers
    assert set(doc["profiles"]) == {"full_decode8_96", "power_decode8_96", "power_prefill_96"}
    text = (tmp_path / "prof.txt").read_text()
    assert text.count("=====") == 3 and text.count("Self CPU time total") == 3  # every table
    assert (
        "table"
        not in json.loads((tmp_path / "e2e.json").read_text())["profiles"]["full_decode8_96"]
    )
    t = doc["summary"]["targets"]
    assert t["seq_len"] == 96 and t["prefill_speedup"] > 0
    assert main(["bench", "e2e", "--from-json", str(tmp_path / "e2e.json")]) == 0
    out = capsys.readouterr().out
    assert "power vs full" in out
    assert "% full" in out  # the decode column is a ratio in percent, not a speed-up
    # --json would be silently ignored with --from-json: refused.
    argv = ["bench", "e2e", "--from-json", str(tmp_path / "e2e.json"), "--json", "x.json"]
    assert main(argv) == 2
    assert "--from-json" in capsys.readouterr().err
