"""Settings, registration, save / load, and every refusal of the HF integration."""

from __future__ import annotations

import dataclasses
import json
import sys

import hf_models as H
import pytest
import torch

import powerattn.hf as pt
import powerattn.hf.settings as hf_settings
from powerattn import get_pattern

transformers = H.transformers
SEQ = 40


def _small(arch: str = "llama", layers: int = 1, **kw):
    return pt.apply(H.model(arch, layers=layers, **kw), "power", **H.POWER)


# ---------------------------------------------------------------------------- settings
def test_settings_parsed_once_and_attached(monkeypatch):
    """apply() resolves the settings once; forwards read the route attached to each layer.
    An edit of config.powerattn is noticed (by value) and resolved again, once per layer."""
    model = pt.apply(H.model("llama", layers=3), "power", full_layers=[1], **H.POWER)
    calls = []
    real = hf_settings.get_settings
    monkeypatch.setattr(hf_settings, "get_settings", lambda c: calls.append(1) or real(c))
    x = H.ids(1, SEQ)
    with torch.no_grad():
        before = model(x).logits
        model(x)
    assert calls == []
    model.config.powerattn["full_layers"] = [0, 1, 2]  # every layer dense now
    with torch.no_grad():
        after = model(x).logits
        model(x)
    assert len(calls) == 3  # once per layer, not per forward
    assert (after - before).abs().max() > 1e-3
    dense = pt.apply(H.model("llama", layers=3), "full")
    with torch.no_grad():
        torch.testing.assert_close(after, dense(x).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", H.ARCHS)
def test_save_load_with_attn_implementation(arch, tmp_path):
    model = pt.apply(H.model(arch, layers=4), "power", full_layers="1 of every 2", **H.POWER)
    x = H.ids(2, SEQ)
    with torch.no_grad():
        before = model(x).logits
    model.save_pretrained(tmp_path)
    pt.register()
    cls = type(model)
    for kw in ({"attn_implementation": "powerattn"}, {}):  # config.json names it: auto
        loaded = cls.from_pretrained(tmp_path, **kw).to(H.DEVICE).eval()
        assert loaded.config._attn_implementation == "powerattn"
        assert loaded.config.powerattn == model.config.powerattn
        assert pt.get_settings(loaded.config) == pt.get_settings(model.config)
        assert loaded.config.powerattn["full_layers"] == [1, 3]
        with torch.no_grad():
            torch.testing.assert_close(loaded(x).logits, before, rtol=0, atol=0)
    # Asking for dense attention explicitly still works.
    dense = cls.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert dense.config._attn_implementation == "sdpa"


def test_saved_settings_not_silently_dropped(tmp_path, monkeypatch):
    """A checkpoint saved after apply() does not load as dense attention where powerattn is
    not registered: transformers refuses the unknown implementation."""
    model = _small()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["attn_implementation"] == "powerattn" and saved["powerattn"]["pattern"] == "power"
    from transformers import AttentionInterface

    mapping = dict(AttentionInterface._global_mapping)
    mapping.pop("powerattn")
    monkeypatch.setattr(AttentionInterface, "_global_mapping", mapping)
    with pytest.raises(ValueError, match="powerattn"):
        transformers.LlamaForCausalLM.from_pretrained(tmp_path)


def test_settings_roundtrip_tuple_parameters(tmp_path):
    pattern = get_pattern("longnet", block_size=4, segments=((4, 1), (8, 2)))
    model = pt.apply(H.model("llama", layers=2), pattern)
    model.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    assert pt.get_settings(loaded.config).pattern == pattern


def test_apply_refuses_pattern_that_does_not_roundtrip():
    @dataclasses.dataclass(frozen=True)
    class Unregistered(type(get_pattern("power"))):  # inherits the name "power"
        pass

    model = H.model("llama", layers=1)
    with pytest.raises(ValueError, match="cannot be stored"):
        pt.apply(model, Unregistered(**H.POWER))
    assert pt.CONFIG_KEY not in model.config.to_dict()
    assert model.config._attn_implementation != "powerattn"


def test_register_is_idempotent():
    pt.register()
    pt.register()
    assert transformers.AttentionInterface()["powerattn"] is pt.attention_forward
    from transformers.masking_utils import AttentionMaskInterface

    assert AttentionMaskInterface()["powerattn"] is pt.mask_forward


@pytest.mark.parametrize("version", ["4.56.2", "5.16.0"])
def test_register_refuses_old_transformers(monkeypatch, version):
    # The module object itself: loading a checkpoint can re-create transformers' lazy module.
    monkeypatch.setattr(sys.modules["transformers"], "__version__", version)
    with pytest.raises(ImportError, match=r"transformers >= 5\.17"):
        pt.register()


def test_old_import_path_is_the_same_api():
    import powerattn.transformers as old

    assert old.apply is pt.apply and old.register is pt.register
    assert old.dense_causal_attention is pt.dense_causal_attention
    assert set(old.__all__) == set(pt.__all__)


# ---------------------------------------------------------------------------- full_layers
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
        pt.apply(H.model("llama", layers=3), "power", full_layers=full_layers)


@pytest.mark.parametrize("full_layers", [[0, 3], [-1]])
def test_out_of_range_full_layers_in_config_refused(full_layers, tmp_path):
    """Indices the model does not have (a hand-edited config.powerattn) are refused at the
    first forward, naming the valid range, not silently ignored; also after a reload."""
    model = pt.apply(H.model("llama", layers=3), "power", full_layers=[1], **H.POWER)
    model.config.powerattn["full_layers"] = full_layers
    with pytest.raises(ValueError, match=r"full_layers.*out of range.*0\.\.2"):
        model(H.ids(1, SEQ))
    model.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).to(H.DEVICE)
    with pytest.raises(ValueError, match=r"config.powerattn\['full_layers'\].*0\.\.2"):
        loaded(H.ids(1, SEQ))


def test_apply_rejects_bad_pattern_and_backend():
    with pytest.raises(ValueError, match="unknown pattern"):
        pt.apply(H.model("llama", layers=1), "powr")
    with pytest.raises(ValueError, match="no parameter"):
        pt.apply(H.model("llama", layers=1), "power", windw=3)
    with pytest.raises(ValueError, match="backend"):
        pt.apply(H.model("llama", layers=1), "power", backend="cuda")


# ---------------------------------------------------------------------------- architectures
def _other_model(kind: str):
    tiny = dict(vocab_size=97, num_hidden_layers=1, num_attention_heads=4, pad_token_id=0)
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_layer=1, n_head=4))
    if kind == "gemma":
        cfg = transformers.GemmaConfig(
            hidden_size=64, intermediate_size=96, num_key_value_heads=2, head_dim=16, **tiny
        )
        return transformers.GemmaForCausalLM(cfg)
    cfg = transformers.Phi3Config(hidden_size=64, intermediate_size=96, **tiny)
    return transformers.Phi3ForCausalLM(cfg)


@pytest.mark.parametrize("kind", ["gpt2", "gemma", "phi3"])
def test_untested_architectures_refused(kind, tmp_path):
    """GPT-2, Gemma and Phi-3 are outside the conformance suite: refused by apply() and, when
    loaded by name, at the first forward -- before any attention is computed."""
    model = _other_model(kind).eval()
    with pytest.raises(NotImplementedError, match=f"model_type='{model.config.model_type}'"):
        pt.apply(model, "power", **H.POWER)
    pt.register()
    model.set_attn_implementation("powerattn")
    with pytest.raises(NotImplementedError, match="supports model types"):
        model(torch.randint(3, 97, (1, 12)))


# ---------------------------------------------------------------------------- refusals
def test_mistral_sliding_window_refused():
    model = H.model("mistral", layers=2, sliding_window=16)
    with pytest.raises(NotImplementedError, match="sliding_window"):
        pt.apply(model, "power", **H.POWER)
    pt.register()
    model.set_attn_implementation("powerattn")  # loaded by name without apply()
    with pytest.raises(NotImplementedError, match="sliding"):
        model(H.ids(1, SEQ))


def test_qwen2_use_sliding_window_refused():
    model = H.model("qwen2", layers=2, use_sliding_window=True, sliding_window=16)
    with pytest.raises(NotImplementedError, match="sliding"):
        pt.apply(model, "power", **H.POWER)


def test_mask_batch_mismatch_refused():
    model = _small()
    mask = torch.ones(1, SEQ, dtype=torch.long, device=H.DEVICE)
    mask[0, :5] = 0
    with pytest.raises(ValueError, match="attention_mask"):
        model(H.ids(2, SEQ), attention_mask=mask)
    q, k = torch.randn(2, 4, SEQ, 16), torch.randn(2, 2, SEQ, 16)
    with pytest.raises(ValueError, match="attention_mask"):
        pt.attention_forward(model.model.layers[0].self_attn, q, k, k, mask.bool(), scaling=0.25)


def test_4d_mask_refused():
    model = _small()
    with pytest.raises(ValueError, match="4-D attention_mask"):
        model(H.ids(2, SEQ), attention_mask=torch.zeros(2, 1, SEQ, SEQ, device=H.DEVICE))


PACKED = "packed sequences: position_ids restart .* own row"  # the error names a way out


def test_packed_sequences_refused():
    model = _small()
    pos = torch.cat([torch.arange(30), torch.arange(SEQ - 30)])[None].expand(2, -1)
    pos = pos.to(H.DEVICE)
    with pytest.raises(NotImplementedError, match=PACKED):
        model(H.ids(2, SEQ), position_ids=pos, use_cache=False)  # transformers detects it
    with pytest.raises(NotImplementedError, match=PACKED):
        model(H.ids(2, SEQ), position_ids=pos)  # with a cache: the attention function does
    model.train()
    with pytest.raises(NotImplementedError, match=PACKED):
        model(H.ids(2, SEQ), position_ids=pos, labels=H.ids(2, SEQ))
    with torch.no_grad():  # contiguous position ids not starting at 0: one sequence
        model.eval()(H.ids(1, SEQ), position_ids=torch.arange(7, 7 + SEQ, device=H.DEVICE)[None])


def test_packed_sequences_refused_compiled():
    """Compiled without a cache, transformers hands over its packed-sequence mask whatever
    the position ids: a packed batch is still refused, by name (no silent cross-sequence
    attention), in training and in inference."""
    model = _small()
    pos = torch.cat([torch.arange(30), torch.arange(SEQ - 30)])[None].expand(2, -1)
    pos = pos.to(H.DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad(), pytest.raises(NotImplementedError, match=PACKED):
        compiled(H.ids(2, SEQ), position_ids=pos, use_cache=False)
    model.train()
    with pytest.raises(NotImplementedError, match=PACKED):
        compiled(H.ids(2, SEQ), position_ids=pos, labels=H.ids(2, SEQ), use_cache=False)
    torch._dynamo.reset()


def test_packed_sequence_mask_function_is_checked():
    """The mask function accepts transformers' packed-sequence mask (both compositions:
    ``and_masks(causal, same_sequence)`` and, newer, ``and_masks(remap_positions(causal),
    same_sequence)``) only when every row holds one sequence counting up by one; any other
    modified mask is refused."""
    pt.register()
    from transformers import masking_utils as mu

    def seq_ids(pos):  # as transformers' find_packed_sequence_indices, without its shortcut
        return (pos.diff(dim=-1, prepend=pos[:, :1] - 1) != 1).cumsum(-1)

    one = torch.arange(7, 7 + SEQ)[None].expand(2, -1)
    packed = torch.cat([torch.arange(30), torch.arange(SEQ - 30)])[None].expand(2, -1)
    gap = one.clone()
    gap[:, 30:] += 1  # skips a position: not one sequence counting up by one
    remap = getattr(mu, "remap_positions_for_packed_sequence", None)
    for pos, ok in ((one, True), (packed, False), (gap, False)):
        same_seq = mu.packed_sequence_mask_function(seq_ids(pos))
        forms = [mu.and_masks(mu.causal_mask_function, same_seq)]
        if remap is not None:
            forms.append(mu.and_masks(remap(mu.causal_mask_function, pos), same_seq))
        for fn in forms:
            if ok:
                assert pt.mask_forward(2, SEQ, SEQ, mask_function=fn) is None
            else:
                with pytest.raises(NotImplementedError, match=PACKED):
                    pt.mask_forward(2, SEQ, SEQ, mask_function=fn)
    if remap is not None:  # ids of one sequence, positions that skip: the remap matters
        fn = mu.and_masks(
            remap(mu.causal_mask_function, gap),
            mu.packed_sequence_mask_function(torch.zeros_like(gap)),
        )
        with pytest.raises(NotImplementedError, match=PACKED):
            pt.mask_forward(2, SEQ, SEQ, mask_function=fn)
    overlay = mu.and_masks(mu.causal_mask_function, mu.sliding_window_overlay(8))
    with pytest.raises(NotImplementedError, match="modified mask"):
        pt.mask_forward(2, SEQ, SEQ, mask_function=overlay)


def test_varlen_kwargs_refused():
    model = _small()
    cu = torch.tensor([0, 30, SEQ], dtype=torch.int32, device=H.DEVICE)
    with pytest.raises(NotImplementedError, match="cu_seq_lens"):
        model(H.ids(1, SEQ), cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=30, max_length_k=30)


def test_bidirectional_refused():
    model = _small()
    q = torch.randn(1, 4, 8, 16)
    k = torch.randn(1, 2, 8, 16)
    with pytest.raises(NotImplementedError, match="causal"):
        pt.attention_forward(model.model.layers[0].self_attn, q, k, k, None, is_causal=False)
    model = H.model("llama", layers=1)
    model.config.is_causal = False
    with pytest.raises(NotImplementedError, match="is_causal"):
        pt.apply(model, "power", **H.POWER)


@pytest.mark.parametrize(
    ("name", "value"),
    [("s_aux", torch.zeros(4)), ("position_bias", torch.zeros(1, 4, 8, 8)), ("softcap", 30.0)],
)
def test_unsupported_score_terms_refused(name, value):
    """Terms the operator does not compute are refused, not silently dropped."""
    model = _small()
    q = torch.randn(1, 4, 8, 16)
    k = torch.randn(1, 2, 8, 16)
    attn = model.model.layers[0].self_attn
    with pytest.raises(NotImplementedError, match=name):
        pt.attention_forward(attn, q, k, k, None, scaling=0.25, **{name: value})
    out, _ = pt.attention_forward(attn, q, k, k, None, scaling=0.25, **{name: None})
    assert out.shape == (1, 8, 4, 16)


def test_attention_dropout_refused():
    model = _small("qwen2", attention_dropout=0.1).train()
    with pytest.raises(NotImplementedError, match="dropout"):
        model(H.ids(2, SEQ))
