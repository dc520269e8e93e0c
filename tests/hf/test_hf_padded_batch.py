"""Padded prefill and training in one operator call per layer (``KeyPlan.runs``): every row's
real tokens one run, the queries all the slots; and the decode step of a left-padded batch in
one call (``KeyPlan.leftpad``).

The rotated path is checked against the row-by-row path it replaces (the same plan with
``runs=None``): real queries within the tolerance rule (float64 row-by-row reference, error at
most 2x -- gradients 3x -- that of the float32 row-by-row path, plus the rounding floor),
padded queries bitwise (the same computation: 0, or the same single-query calls).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import hf_models as H
import pytest
import torch

import powerattn.hf as pt
import powerattn.hf.attention as A
from powerattn import get_pattern
from powerattn.hf.masks import KeyPlan
from powerattn.hf.settings import LayerRoute
from powerattn.testing import FORWARD_FACTOR, GRADIENT_FACTOR, check_close, reduction_terms

USED = 37  # no block size below divides it, nor the runs' lengths
# (start, count) of each row's real run: left, right, both ends, fully padded, one token
# with padding after it, one token at the end, unpadded.
RUNS = [(9, 28), (0, 23), (4, 16), (0, 0), (30, 1), (36, 1), (0, USED)]
# Right padding only (every run starts at slot 0: no rotation), a fully padded row included.
RIGHT = [(0, 28), (0, 23), (0, 0), (0, 1), (0, USED)]
PATTERNS = {
    "power": get_pattern("power", block_size=5, window=2, sink=1),
    "sliding_window": get_pattern("sliding_window", block_size=3, window=3, sink=1),
    "stride_slash": get_pattern("stride_slash", block_size=4, window=2, sink=1, stride=3),
    "kept_full": None,  # a layer kept full: PyTorch's causal SDPA
}


def _mask(runs=RUNS, used: int = USED) -> torch.Tensor:
    valid = torch.zeros(len(runs), used, dtype=torch.bool)
    for b, (start, count) in enumerate(runs):
        valid[b, start : start + count] = True
    return valid


def _qkv(batch: int, hq: int, hkv: int, seed: int = 0, d: int = 16):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, hq, USED, d, generator=g, dtype=torch.float64)
    k = torch.randn(batch, hkv, USED, d, generator=g, dtype=torch.float64)
    v = torch.randn(batch, hkv, USED, d, generator=g, dtype=torch.float64)
    return q, k, v


def _out(route, plan, xs, dtype, grad: bool = True):
    """``(out, leaves)``: ``_run``'s output for leaf copies of ``xs`` in ``dtype``."""
    leaves = [x.detach().to(dtype).requires_grad_(grad) for x in xs]
    out, w = A._run(route, *leaves, plan, 0.3, False)
    assert w is None
    return out, leaves


def test_plan_has_runs_only_for_one_run_per_row_and_all_queries():
    valid = _mask()
    plan = KeyPlan.from_mask(valid, USED)
    assert plan.runs is not None
    real = plan.runs.real
    assert torch.equal(real, valid)
    for b in range(len(RUNS)):  # rotated: the run first, in order
        start, count = RUNS[b]
        assert plan.runs.order[b, :count].tolist() == list(range(start, start + count))
        assert torch.equal(plan.runs.order[b][plan.runs.back[b]], torch.arange(USED))
    rows, slots = plan.runs.pad_rows.tolist(), plan.runs.pad_slots.tolist()
    after = [(b, i) for b, (s, n) in enumerate(RUNS) if n for i in range(s + n, USED)]
    assert sorted(zip(rows, slots, strict=True)) == after
    assert KeyPlan.from_mask(valid, USED - 1).runs is None  # a chunk continuing a cache
    holes = valid.clone()
    holes[0, 20] = False
    assert KeyPlan.from_mask(holes, USED).runs is None
    assert KeyPlan.from_mask(torch.ones(2, USED, dtype=torch.bool), USED).runs is None


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("heads", [(4, 2), (2, 2)], ids=["gqa", "mha"])
@pytest.mark.parametrize("runs", [RUNS, RIGHT], ids=["mixed", "right"])
def test_rotated_equals_row_by_row(name, heads, runs):
    """Outputs and gradients of the one-call path against the row-by-row path (dense
    backend): real queries within the tolerance rule, padded queries bitwise."""
    route = LayerRoute(PATTERNS[name], "dense", None)
    valid = _mask(runs)
    plan = KeyPlan.from_mask(valid, USED)
    assert plan.runs.shifted == (runs is RUNS)
    rows = dataclasses.replace(plan, runs=None)
    xs = _qkv(len(runs), *heads)
    out, leaves = _out(route, plan, xs, torch.float32)
    base, base_leaves = _out(route, rows, xs, torch.float32)
    ref, ref_leaves = _out(route, rows, xs, torch.float64)
    terms = reduction_terms(xs[0], xs[1])
    real = valid[:, None, :, None].expand_as(out)
    r = check_close(out[real], ref[real], base[real], FORWARD_FACTOR, terms["out"])
    assert r["ok"], r
    assert torch.equal(out[~real], base[~real])

    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = torch.autograd.grad(out, leaves, dout.float())
    base_grads = torch.autograd.grad(base, base_leaves, dout.float())
    ref_grads = torch.autograd.grad(ref, ref_leaves, dout)
    for g_name, g, gb, gr in zip(("dq", "dk", "dv"), grads, base_grads, ref_grads, strict=True):
        r = check_close(g, gr, gb, GRADIENT_FACTOR, terms[g_name])
        assert r["ok"], (g_name, r)
    pad_q = ~valid[:, None, :, None].expand_as(grads[0])
    assert torch.equal(grads[0][pad_q], base_grads[0][pad_q])  # padded queries: bitwise


def test_rotated_flex_forward_equals_row_by_row():
    """The FlexAttention backend (forward only: no CPU backward) in one call: real queries
    within the tolerance of the float64 row-by-row reference (float32 row-by-row on the dense
    backend as the same-precision baseline: FlexAttention compiles per shape on the CPU, ~5 s
    each), padded queries equal to the row-by-row flex path's."""
    pattern = PATTERNS["power"]
    runs = [(9, 28), (0, 0), (0, USED), (2, 33)]  # left, fully padded, unpadded, both ends
    valid = _mask(runs)
    plan = KeyPlan.from_mask(valid, USED)
    rows = dataclasses.replace(plan, runs=None)
    xs = _qkv(len(runs), 4, 2, seed=1)
    out, _ = _out(LayerRoute(pattern, "flex", None), plan, xs, torch.float32, grad=False)
    dense = LayerRoute(pattern, "dense", None)
    base, _ = _out(dense, rows, xs, torch.float32, grad=False)
    ref, _ = _out(dense, rows, xs, torch.float64, grad=False)
    real = valid[:, None, :, None].expand_as(out)
    r = check_close(out[real], ref[real], base[real], FORWARD_FACTOR, USED)
    assert r["ok"], r
    torch.testing.assert_close(out[~real], base[~real])  # 0, or single-query calls


def _count_calls(monkeypatch) -> list[int]:
    """Patch the operator call of the hf attention; returns the list of call batch sizes."""
    calls: list[int] = []
    attend = A._attend

    def counting(route, q, *args, **kwargs):
        calls.append(q.shape[0])
        return attend(route, q, *args, **kwargs)

    monkeypatch.setattr(A, "_attend", counting)
    return calls


def _batch(side: str):
    seqs = [H.ids(1, n, seed=30 + n)[0] for n in (41, 29, 1, 41)]
    return H.padded(seqs, side)


def test_left_padded_prefill_is_one_call_per_layer(monkeypatch):
    """Left-padded prefill (what ``generate`` runs): one operator call per layer for the
    whole batch, kept-full layers included; right padding adds one call per right-padded row
    (its padded queries)."""
    layers = 3
    model = pt.apply(H.model("llama", layers=layers), "power", full_layers=[1], **H.POWER)
    calls = _count_calls(monkeypatch)
    x, mask = _batch("left")
    with torch.no_grad():
        model(x, attention_mask=mask, position_ids=H.positions(mask))
    assert calls == [4] * layers
    calls.clear()
    x, mask = _batch("right")
    with torch.no_grad():
        model(x, attention_mask=mask, position_ids=H.positions(mask))
    assert len(calls) == layers * (1 + 2)  # rows 1 and 2 have padding after their tokens


@pytest.mark.parametrize("side", ["left", "right"])
def test_model_logits_and_gradients_equal_row_by_row(side, monkeypatch):
    """A float64 model trained on a padded batch: logits and parameter gradients of the
    one-call path equal those of the row-by-row path to float64 rounding."""
    base = H.model("qwen2", dtype=torch.float64)
    x, mask = _batch(side)
    pos = H.positions(mask)

    def run(model):
        model = pt.apply(model, "power", **H.POWER).train()
        logits = model(x, attention_mask=mask, position_ids=pos).logits
        logits.square().mean().backward()
        return logits.detach(), {n: p.grad for n, p in model.named_parameters()}

    calls = _count_calls(monkeypatch)
    logits, grads = run(copy.deepcopy(base))
    one_call = len(calls)
    from_mask = KeyPlan.from_mask.__func__
    monkeypatch.setattr(
        KeyPlan,
        "from_mask",
        classmethod(lambda cls, v, q: dataclasses.replace(from_mask(cls, v, q), runs=None)),
    )
    rows_logits, rows_grads = run(copy.deepcopy(base))
    assert one_call < len(calls) - one_call  # the second run took the row-by-row path
    torch.testing.assert_close(logits, rows_logits, rtol=1e-12, atol=1e-12)
    for name, g in grads.items():
        torch.testing.assert_close(g, rows_grads[name], rtol=1e-10, atol=1e-12, msg=name)


# ------------------------------------------------------------ left-padded decode, one call
LEFT = [(9, 28), (0, USED), (30, 7), (35, 2)]  # (start, count): runs ending at the last slot


def test_plan_has_leftpad_only_for_left_padding_with_real_queries():
    plan = KeyPlan.from_mask(_mask(LEFT), 1)
    assert plan.leftpad.dtype == torch.int32
    assert plan.leftpad.tolist() == [s for s, _ in LEFT]
    assert KeyPlan.from_mask(_mask(LEFT), 2).leftpad is not None  # two real queries per row
    assert KeyPlan.from_mask(_mask(LEFT), 3).leftpad is None  # row 3 has a padded query
    assert KeyPlan.from_mask(_mask(LEFT), USED).leftpad is None  # prefill: the rotated path
    assert KeyPlan.from_mask(_mask([(0, 20), (0, USED)]), 1).leftpad is None  # right padding
    holes = _mask(LEFT)
    holes[0, 20] = False
    assert KeyPlan.from_mask(holes, 1).leftpad is None
    assert KeyPlan.from_mask(_mask([(0, 0), (0, USED)]), 1).leftpad is None  # an empty row


@pytest.mark.parametrize("name", list(PATTERNS))
@pytest.mark.parametrize("sq", [1, 2])
def test_leftpad_decode_equals_row_by_row(name, sq, monkeypatch):
    """A left-padded decode step in one sparse_attention_with_kvcache call (route ``auto``)
    against the row-by-row path it replaces (the same plan with ``leftpad=None``): within the
    tolerance rule of the float64 row-by-row reference."""
    calls = []
    real = A.sparse_attention_with_kvcache
    spy = lambda q, *a, **kw: calls.append(q.shape) or real(q, *a, **kw)  # noqa: E731
    monkeypatch.setattr(A, "sparse_attention_with_kvcache", spy)
    route = LayerRoute(PATTERNS[name], "auto", None)
    plan = KeyPlan.from_mask(_mask(LEFT), sq)
    rows = dataclasses.replace(plan, leftpad=None)
    g = torch.Generator().manual_seed(7)
    q = torch.randn(len(LEFT), 4, sq, 16, generator=g, dtype=torch.float64)
    _, k, v = _qkv(len(LEFT), 4, 2, seed=2)
    xs = (q, k, v)
    out, _ = _out(route, plan, xs, torch.float32, grad=False)
    assert calls == [(len(LEFT), 4, sq, 16)]  # one call for the whole batch
    base, _ = _out(route, rows, xs, torch.float32, grad=False)
    ref, _ = _out(route, rows, xs, torch.float64, grad=False)
    r = check_close(out, ref, base, FORWARD_FACTOR, USED)
    assert r["ok"], r


def test_gpu_leftpad_script_smoke(tmp_path):
    """scripts/gpu_leftpad.py (the GPU check and timing of this path) runs on the CPU."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, OUT=str(tmp_path), PYTHONPATH=str(root / "src"))
    proc = subprocess.run(
        [sys.executable, str(root / "scripts" / "gpu_leftpad.py"), "--smoke"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "leftpad.json").read_text())
    assert all(c["ok"] for c in report["checks"]) and len(report["rows"]) == 2


@pytest.mark.parametrize("backend", ["auto", "dense"])
def test_static_cache_slot_mask_equals_the_padding_mask(backend):
    """A static cache with a left-padded batch at decode: the mask function returns the
    fixed-shape ``(2B,)`` slot mask (written slots, then first real slots), hands it back
    unchanged when given it, and keeps the bool mask for a dynamic cache (int offset). The
    attention given the slot mask over the whole cache (unwritten slots after ``USED`` hold
    noise) equals the attention given the bool mask of the written slots, outputs and
    weights, on the kernel route (``auto``) and the host route (``dense``)."""
    B, sq, s_max = len(LEFT), 1, USED + 11
    valid = _mask(LEFT)
    slots = pt.mask_forward(B, sq, s_max, q_offset=torch.tensor(USED - sq), attention_mask=valid)
    assert slots.dtype == torch.int32 and slots.tolist() == [USED] * B + [s for s, _ in LEFT]
    assert pt.mask_forward(B, sq, s_max, torch.tensor(USED - sq), attention_mask=slots) is slots
    dynamic = pt.mask_forward(B, sq, USED, q_offset=USED - sq, attention_mask=valid)
    assert dynamic.dtype == torch.bool and torch.equal(dynamic, valid)
    with pytest.raises(ValueError, match=r"\(2 \* batch,\)"):
        pt.mask_forward(B, sq, s_max, torch.tensor(USED - sq), attention_mask=slots[:-1])

    model = pt.apply(H.model("llama", layers=1), PATTERNS["power"], backend=backend)
    module = model.model.layers[0].self_attn
    g = torch.Generator().manual_seed(5)
    q = torch.randn(B, 4, sq, 16, generator=g)
    k, v = (torch.randn(B, 2, s_max, 16, generator=g) for _ in range(2))
    with torch.no_grad():
        for weights in (False, True):
            kw = {"scaling": 0.25, "output_attentions": weights}
            out, w = pt.attention_forward(module, q, k, v, slots, **kw)
            ref, w_ref = pt.attention_forward(
                module, q, k[:, :, :USED], v[:, :, :USED], valid, **kw
            )
            torch.testing.assert_close(out, ref, rtol=0, atol=0)
            if weights:
                torch.testing.assert_close(w[..., :USED], w_ref, rtol=0, atol=0)
                assert not w[..., USED:].any()
