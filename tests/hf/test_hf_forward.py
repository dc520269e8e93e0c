"""Forward conformance on tiny Llama / Qwen2 / Mistral models: logits, gradients, padding of
every kind, attention weights, ``logits_to_keep``, hybrid layers.

References are float64 copies of the same model run with an independent attention:
transformers' sdpa (for ``full``), eager attention given the pattern's dense 4-D mask, or a
plain masked softmax registered for the test (per-layer masks). Tolerances are relative to the
error of the same reference computation run in float32 (2x logits, 3x gradients).
"""

from __future__ import annotations

import copy

import hf_models as H
import pytest
import torch
import torch.nn.functional as F

import powerattn.hf as pt
from powerattn import get_pattern, reference_attention

transformers = H.transformers
SEQ = 53
PATTERN = get_pattern("power", **H.POWER)


def _padding(kind: str, batch: int = 3):
    """``(ids, mask, real)`` for padding ``kind``: none, left, right or holes."""
    seqs = [H.ids(1, n, seed=20 + n)[0] for n in (SEQ, 41, 30)[:batch]]
    if kind == "none":
        x = H.ids(batch, SEQ)
        return x, None, [list(range(SEQ))] * batch
    if kind == "holes":
        return H.with_holes(seqs, [[], [3, 4, 20], [0, 10, 11]][:batch])
    x, mask = H.padded(seqs, kind)
    real = [mask[b].nonzero().flatten().tolist() for b in range(batch)]
    return x, mask, real


# ---------------------------------------------------------------------------- full == sdpa
@pytest.mark.parametrize("arch", H.ARCHS)
@pytest.mark.parametrize("kind", ["none", "left", "right", "holes"])
def test_full_equals_sdpa(arch, kind):
    """``full`` gives sdpa's logits at every position (padded ones included), within 2x
    float32 sdpa's own error against float64 sdpa."""
    model = H.model(arch)
    x, mask, _ = _padding(kind)
    pos = None if mask is None else H.positions(mask)
    with torch.no_grad():
        sdpa = model(x, attention_mask=mask, position_ids=pos).logits
        ref = copy.deepcopy(model).double()(x, attention_mask=mask, position_ids=pos).logits
        out = pt.apply(model, "full")(x, attention_mask=mask, position_ids=pos).logits
    H.check(out, ref, sdpa, 2.0)


# ---------------------------------------------------------------------------- power
@pytest.mark.parametrize("arch", H.ARCHS)
def test_power_matches_eager_with_dense_mask(arch):
    model = H.model(arch)
    x = H.ids(2, SEQ)
    with torch.no_grad():
        full = model(x).logits
    ref = H.eager_pattern_logits(model, x, PATTERN)
    same = H.eager_pattern_logits(model, x, PATTERN, dtype=torch.float32)
    with torch.no_grad():
        out = pt.apply(model, PATTERN)(x).logits
    H.check(out, ref, same, 2.0)
    assert (out - full).abs().max() > 1e-2  # the pattern dropped keys at this length


@pytest.mark.parametrize("kind", ["left", "right", "holes"])
def test_padded_rows_equal_sequences_alone(kind):
    """Each padded row, at its real tokens, gives the logits of its sequence alone (the
    pattern's blocks are counted over the real tokens)."""
    model = H.model("qwen2")
    x, mask, real = _padding(kind)
    with torch.no_grad():
        out = pt.apply(model, PATTERN)(x, attention_mask=mask, position_ids=H.positions(mask))
    for b, where in enumerate(real):
        alone = x[b : b + 1, where]
        ref = H.eager_pattern_logits(model, alone, PATTERN)
        same = H.eager_pattern_logits(model, alone, PATTERN, dtype=torch.float32)
        H.check(out.logits[b : b + 1, where], ref, same, 2.0)


@pytest.mark.parametrize("arch", H.ARCHS)
def test_gradients_flow_and_match(arch):
    x = H.ids(2, SEQ)
    dense = PATTERN.dense_mask(SEQ).to(H.DEVICE)

    def grads(model, dtype=None):
        model.train()
        mask = None
        if dtype is not None:
            add = torch.zeros(dense.shape, dtype=dtype, device=H.DEVICE)
            mask = add.masked_fill(~dense, float("-inf"))[None, None].expand(2, 1, -1, -1)
        model(x, labels=x, attention_mask=mask).loss.backward()
        return {n: p.grad.detach().clone() for n, p in model.named_parameters()}

    base = H.model(arch)
    ref_model = copy.deepcopy(base).double()
    ref_model.set_attn_implementation("eager")
    same_model = copy.deepcopy(base)
    same_model.set_attn_implementation("eager")
    ref, same = grads(ref_model, torch.float64), grads(same_model, torch.float32)
    out = grads(pt.apply(copy.deepcopy(base), PATTERN))
    for name, g in out.items():
        assert torch.isfinite(g).all(), name
        if "proj" in name:
            assert g.abs().max() > 0, f"no gradient reached {name}"
        H.check(g, ref[name], same[name], 3.0)


def test_gradients_with_holes_equal_sequences_alone():
    """Training on a batch with padding holes: the gradient of a function of the real
    positions' logits equals the sum of the same function over the sequences alone."""
    dtype = H.GEN_DTYPE  # float64 on the CPU; float32 on CUDA (FlexAttention's backward)
    base = H.model("llama", dtype=dtype)
    x, mask, real = _padding("holes", batch=2)
    g = torch.Generator().manual_seed(5)
    weights = [torch.randn(len(r), H.VOCAB, generator=g, dtype=dtype) for r in real]

    model = pt.apply(copy.deepcopy(base), PATTERN).train()
    logits = model(x, attention_mask=mask, position_ids=H.positions(mask)).logits
    pairs = list(zip(real, weights, strict=True))
    sum((logits[b, r] * w.to(H.DEVICE)).sum() for b, (r, w) in enumerate(pairs)).backward()
    alone = pt.apply(copy.deepcopy(base), PATTERN).train()
    for b, (r, w) in enumerate(pairs):
        (alone(x[b : b + 1, r]).logits[0] * w.to(H.DEVICE)).sum().backward()
    # Same computation, batched differently: float64 agrees to rounding; float32 kernels sum
    # in another order, so allow 1e-4 of the gradient's scale.
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for (name, p), q in zip(model.named_parameters(), alone.parameters(), strict=True):
        scale = q.grad.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(p.grad, q.grad, rtol=tol, atol=tol * scale)


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


@pytest.mark.parametrize("arch", H.ARCHS)
def test_hybrid_layers_are_dense(arch):
    layers, full = 4, [1, 3]
    model = H.model(arch, layers=layers)
    x = H.ids(2, SEQ)
    causal = get_pattern("full").dense_mask(SEQ).to(H.DEVICE)
    sparse = PATTERN.dense_mask(SEQ).to(H.DEVICE)
    _LAYER_MASKS.clear()
    _LAYER_MASKS.update({i: causal if i in full else sparse for i in range(layers)})
    transformers.AttentionInterface.register("powerattn_test_ref", _masked_softmax_attention)

    def reference(dtype):
        ref = copy.deepcopy(model).to(dtype)
        ref.set_attn_implementation("powerattn_test_ref")
        with torch.no_grad():
            return ref(x).logits

    ref, same = reference(torch.float64), reference(torch.float32)
    with torch.no_grad():
        all_full = copy.deepcopy(model)(x).logits
    hybrid = pt.apply(copy.deepcopy(model), PATTERN, full_layers="2 of every 4")
    assert hybrid.config.powerattn["full_layers"] == [2, 3]
    hybrid = pt.apply(copy.deepcopy(model), PATTERN, full_layers=full)
    with torch.no_grad():
        out = hybrid(x).logits
    H.check(out, ref, same, 2.0)
    dense = pt.apply(copy.deepcopy(model), PATTERN, full_layers=list(range(layers)))
    with torch.no_grad():
        torch.testing.assert_close(dense(x).logits, all_full, rtol=1e-4, atol=1e-4)


def test_a_block_mask_as_attention_mask_is_the_patterns():
    """The pattern's BlockMask passed as the model's ``attention_mask`` (what a compiled
    training step passes, built outside its graph): transformers hands it to every layer as
    it is, the sparse layers run FlexAttention on it, the layers kept full ignore it. The
    compiled forward (dynamo, no code generation) is one graph, without a break, and within
    the tolerance of the float64 reference; a mask for other lengths is refused."""
    from torch._dynamo.utils import counters

    from powerattn.ops.flex import block_mask_for

    base = H.model("llama", layers=2)
    model = pt.apply(copy.deepcopy(base), PATTERN, full_layers=[1], backend="flex")
    dense = pt.apply(copy.deepcopy(base), PATTERN, full_layers=[1], backend="dense")
    x = H.ids(2, SEQ)
    bm = block_mask_for(PATTERN, SEQ, SEQ, H.DEVICE)
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        # use_cache=False: a DynamicCache breaks the graph itself (transformers 5.24)
        out = torch.compile(model, backend="aot_eager")(x, attention_mask=bm, use_cache=False)
        out = out.logits
        ref, same = copy.deepcopy(dense).double()(x).logits, dense(x).logits
        assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
        H.check(out, ref, same, 2.0)
        wrong = block_mask_for(PATTERN, SEQ + 1, SEQ + 1, H.DEVICE)
        with pytest.raises(ValueError, match="BlockMask attention_mask"):
            model(x, attention_mask=wrong)
    torch._dynamo.reset()


# ---------------------------------------------------------------------------- compiled, no cache
def _pattern_mask(batch: int, dtype) -> torch.Tensor:
    """The pattern's additive 4-D mask ``(batch, 1, SEQ, SEQ)`` for eager attention."""
    dense = PATTERN.dense_mask(SEQ).to(H.DEVICE)
    add = torch.zeros(dense.shape, dtype=dtype, device=H.DEVICE)
    return add.masked_fill(~dense, float("-inf"))[None, None].expand(batch, 1, -1, -1)


def _start_positions(kind: str | None, batch: int) -> torch.Tensor | None:
    """``None`` (the model counts from 0), or one sequence per row counting from 0 / from 7."""
    if kind is None:
        return None
    return (torch.arange(SEQ, device=H.DEVICE) + (7 if kind == "shifted" else 0)).expand(batch, -1)


@pytest.mark.parametrize("positions", [None, "arange", "shifted"])
def test_compiled_training_without_cache(positions):
    """A compiled training forward without a KV cache (``use_cache=False``, as the Trainer
    runs with gradient checkpointing) and without a padding mask: while tracing, transformers
    cannot look at the position ids and always hands the mask function its packed-sequence
    mask, which was refused (NotImplementedError). One sequence per row is accepted: the
    compiled logits and the gradients of a cross-entropy loss match float64 eager attention
    given the pattern's dense mask (2x / 3x float32 eager's error)."""
    base = H.model("llama", layers=2)
    x = H.ids(2, SEQ)
    pos = _start_positions(positions, 2)

    def run(model, mask=None, compiled=False):
        model.train()
        call = torch.compile(model, backend="aot_eager") if compiled else model
        logits = call(x, attention_mask=mask, position_ids=pos, use_cache=False).logits
        # in the model's dtype (labels=... would compute the loss in float32 for every model)
        F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        return logits.detach(), grads

    ref_model, same_model = copy.deepcopy(base).double(), copy.deepcopy(base)
    for m in (ref_model, same_model):
        m.set_attn_implementation("eager")
    ref = run(ref_model, _pattern_mask(2, torch.float64))
    same = run(same_model, _pattern_mask(2, torch.float32))
    model = pt.apply(copy.deepcopy(base), PATTERN, backend="dense")
    torch._dynamo.reset()
    out = run(model, compiled=True)
    torch._dynamo.reset()
    H.check(out[0], ref[0], same[0], 2.0)
    for name, g in out[1].items():
        assert torch.isfinite(g).all(), name
        H.check(g, ref[1][name], same[1][name], 3.0)


@pytest.mark.parametrize("positions", [None, "shifted"])
def test_compiled_flex_forward_without_cache(positions):
    """The same compiled forward with FlexAttention (forward only: it has no CPU backward):
    logits within 2x float32 eager's error of the float64 reference."""
    base = H.model("llama", layers=2)
    x = H.ids(2, SEQ)
    pos = _start_positions(positions, 2)
    ref_model, same_model = copy.deepcopy(base).double(), copy.deepcopy(base)
    for m in (ref_model, same_model):
        m.set_attn_implementation("eager")
    model = pt.apply(copy.deepcopy(base), PATTERN, backend="flex")
    torch._dynamo.reset()
    with torch.no_grad():
        ref = ref_model(x, attention_mask=_pattern_mask(2, torch.float64), position_ids=pos)
        same = same_model(x, attention_mask=_pattern_mask(2, torch.float32), position_ids=pos)
        out = torch.compile(model, backend="aot_eager")(x, position_ids=pos, use_cache=False)
    torch._dynamo.reset()
    H.check(out.logits, ref.logits, same.logits, 2.0)


def test_compiled_forward_with_dynamic_cache_has_no_mask_break():
    """Nothing padded (no attention_mask) with a dynamic cache: the mask function does no host
    work, so a compiled forward does not break its graph there (it did: the whole function
    ran eagerly), and gives the eager logits."""
    from torch._dynamo.utils import counters

    model = pt.apply(H.model("llama", layers=2), PATTERN, backend="dense")
    x = H.ids(2, SEQ)
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        out = torch.compile(model, backend="aot_eager")(x, use_cache=True).logits
        ref = model(x, use_cache=True).logits
    breaks = [reason for reason in counters["graph_break"] if "mask" in reason]
    torch._dynamo.reset()
    assert not breaks, breaks
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_attention_forward_routes_by_layer_idx():
    model = pt.apply(H.model("qwen2", layers=2), PATTERN, full_layers=[1])
    g = torch.Generator().manual_seed(7)
    q = torch.randn(1, 4, 48, 16, generator=g).to(H.DEVICE)
    k = torch.randn(1, 2, 48, 16, generator=g).to(H.DEVICE)
    v = torch.randn(1, 2, 48, 16, generator=g).to(H.DEVICE)
    attn = [layer.self_attn for layer in model.model.layers]
    for sq in (48, 5, 1):  # prefill, a chunk continuing a cache, decode
        for module, pattern in ((attn[0], PATTERN), (attn[1], "full")):
            out, weights = pt.attention_forward(module, q[:, :, -sq:], k, v, None, scaling=0.25)
            assert weights is None and out.shape == (1, sq, 4, 16)
            expected = reference_attention(
                q[:, :, -sq:].double(), k.double(), v.double(), pattern, scale=0.25
            )
            torch.testing.assert_close(out.transpose(1, 2).double(), expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- weights
@pytest.mark.parametrize("arch", H.ARCHS)
def test_output_attentions_are_the_pattern_masked_weights(arch):
    """``output_attentions=True`` returns eager attention's weights under the pattern's mask
    (float64 eager given the dense mask), the same logits as without, and zeros where the
    pattern drops a key."""
    model = H.model(arch, dtype=torch.float64)
    x = H.ids(2, SEQ)
    dense = PATTERN.dense_mask(SEQ).to(H.DEVICE)
    ref_model = copy.deepcopy(model)
    ref_model.set_attn_implementation("eager")
    add = torch.zeros(dense.shape, dtype=torch.float64, device=H.DEVICE)
    add = add.masked_fill(~dense, float("-inf"))[None, None].expand(2, 1, -1, -1)
    pt.apply(model, PATTERN)
    with torch.no_grad():
        ref = ref_model(x, attention_mask=add, output_attentions=True)
        out = model(x, output_attentions=True)
        plain = model(x).logits
    assert len(out.attentions) == len(ref.attentions) == 2
    for w, w_ref in zip(out.attentions, ref.attentions, strict=True):
        assert w.shape == (2, 4, SEQ, SEQ)
        # eager's softmax runs in float32 even for a float64 model: its weights carry
        # float32 rounding (probabilities <= 1, so 2 float32 epsilons bound it).
        torch.testing.assert_close(w, w_ref, rtol=0, atol=2 * torch.finfo(torch.float32).eps)
        assert torch.all(w[..., ~dense] == 0)
    torch.testing.assert_close(out.logits, plain, rtol=0, atol=0)


def test_output_attentions_padded():
    """Weights of a batch with holes: each row's real rows equal its sequence alone, padded
    keys get 0, every query row with a key sums to 1."""
    model = pt.apply(H.model("llama", dtype=torch.float64), PATTERN)
    x, mask, real = _padding("holes")
    with torch.no_grad():
        out = model(x, attention_mask=mask, position_ids=H.positions(mask), output_attentions=True)
        for b, where in enumerate(real):
            alone = model(x[b : b + 1, where], output_attentions=True).attentions
            idx = torch.tensor(where, device=H.DEVICE)
            for w, w_alone in zip(out.attentions, alone, strict=True):
                torch.testing.assert_close(w[b][:, idx[:, None], idx[None, :]], w_alone[0])
                assert torch.all(w[b][..., mask[b] == 0] == 0)
    has_key = (mask.cumsum(-1) > 0)[:, None].expand(-1, 4, -1)  # a real token at or before
    for w in out.attentions:
        sums = w.sum(-1)
        torch.testing.assert_close(sums[has_key], torch.ones_like(sums[has_key]))
        assert torch.all(sums[~has_key] == 0)


# ---------------------------------------------------------------------------- misc
@pytest.mark.parametrize("arch", H.ARCHS)
def test_logits_to_keep(arch):
    model = pt.apply(H.model(arch), PATTERN)
    x, mask, _ = _padding("left")
    with torch.no_grad():
        whole = model(x, attention_mask=mask).logits
        last = model(x, attention_mask=mask, logits_to_keep=1).logits
    assert last.shape == (3, 1, H.VOCAB)
    torch.testing.assert_close(last, whole[:, -1:], rtol=1e-6, atol=1e-6)


def test_mask_edited_in_place_between_forwards():
    """A serving loop reusing one boolean mask buffer: after an in-place edit, the logits are
    those of a fresh copy of the edited mask (no analysis cached by object identity)."""
    model = pt.apply(H.model("llama"), PATTERN)
    x = H.ids(2, SEQ)
    mask = torch.ones(2, SEQ, dtype=torch.bool, device=H.DEVICE)
    mask[0, :7] = False
    with torch.no_grad():
        model(x, attention_mask=mask)
        mask[0, :7] = True
        mask[1, :12] = False  # same object, new contents
        reused = model(x, attention_mask=mask).logits
        fresh = model(x, attention_mask=mask.clone()).logits
    torch.testing.assert_close(reused, fresh, rtol=0, atol=0)


def test_position_ids_edited_in_place_are_checked_again():
    model = pt.apply(H.model("llama", layers=1), PATTERN)
    pos = torch.arange(SEQ, device=H.DEVICE)[None].expand(2, -1).clone()
    with torch.no_grad():
        model(H.ids(2, SEQ), position_ids=pos)
        pos[:, 30:] = torch.arange(SEQ - 30)  # now two packed sequences per row
        with pytest.raises(NotImplementedError, match="packed"):
            model(H.ids(2, SEQ), position_ids=pos)


def test_mask_function_returns_at_most_2d():
    pt.register()
    from transformers.masking_utils import create_causal_mask

    model = pt.apply(H.model("llama", layers=1), PATTERN)
    embeds = torch.zeros(2, SEQ, 64, device=H.DEVICE)
    ones = torch.ones(2, SEQ, dtype=torch.long, device=H.DEVICE)
    assert create_causal_mask(model.config, embeds, ones, None) is None
    mask = ones.clone()
    mask[1, :5] = 0
    out = create_causal_mask(model.config, embeds, mask, None)
    assert out.shape == (2, SEQ) and out.dtype == torch.bool and torch.equal(out, mask.bool())
    assert out.data_ptr() != mask.data_ptr()
