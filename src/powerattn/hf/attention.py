"""The attention function transformers calls in every layer (``AttentionInterface``).

Padding: each padded row is computed on its real tokens only (gathered when the padding has
holes), so the pattern's blocks are counted over the real tokens -- the positions
``generate`` gives them -- and a padded row equals its unpadded sequence. A query at a padded
position attends what the real token before it attends (with ``full``: the real keys before
it, as sdpa; right-padded ``generate`` reads its first token there), one single-query call per
padded query; with no real token before it, it has no key and gives 0, as sdpa. Prefill and
training whose rows each hold one run of real tokens (left, right or both-ends padding) run
the real queries of all rows in one call (:func:`_run_rotated`); so does the decode step of a
left-padded batch (:func:`_attend_leftpad`: the decode kernel's per-row start).

Static caches: the keys tensor is the whole pre-allocated cache; only the first ``used`` slots
are written (the mask function says how many). Without padding the mask function hands over the
lengths as a device tensor and decode runs :func:`powerattn.sparse_attention_with_kvcache` on
the whole cache (:func:`_attend_cache`); otherwise attention runs on the prefix
(:func:`_attend_prefix`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn.attention.flex_attention import BlockMask

from ..ops.api import DECODE_MAX_Q, sparse_attention
from ..ops.dense import sdpa_attention
from ..ops.kvcache import sparse_attention_with_kvcache
from ..patterns import Pattern, get_pattern
from .masks import (
    KeyPlan,
    RowPlan,
    check_slot_mask,
    plan_of,
    refuse_packed_positions,
    slot_bounds,
    valid_from_slots,
)
from .settings import LayerRoute, layer_route

_FULL = get_pattern("full")  # the layers kept full, where an operator takes a pattern

# Keyword arguments that change the attention's scores or softmax, which the operator does not
# implement: refused rather than silently dropped.
_UNSUPPORTED_TERMS = {
    "s_aux": "attention sinks (a learned per-head logit in the softmax, as in gpt-oss)",
    "position_bias": "an additive position bias on the attention scores",
    "head_mask": "a head mask",
}


def dense_causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Dense causal attention with the queries aligned to the end of the keys (``q (B, Hq,
    Sq, D)``, ``k, v (B, Hkv, Sk, D)`` -> ``(B, Hq, Sq, D)``): the layers kept full.

    PyTorch's causal SDPA kernel where its top-left ``is_causal`` equals bottom-right alignment
    (``Sq == Sk`` or ``Sq == 1``, through :func:`powerattn.ops.dense.sdpa_attention`); a chunk
    continuing a cache goes to :func:`powerattn.sparse_attention` with the ``full`` pattern."""
    if q.shape[2] in (1, k.shape[2]):
        return sdpa_attention(q, k, v, "full", scale)
    return sparse_attention(q, k, v, "full", scale=scale)


def attention_weights(q: torch.Tensor, k: torch.Tensor, pattern: Pattern, scale: float):
    """The softmax probabilities of ``pattern``-masked attention, ``(B, Hq, Sq, Sk)`` in q's
    dtype (computed in float32, float64 for float64 inputs; 0 on masked keys and on rows with
    no key). Dense: what ``output_attentions=True`` returns, at eager attention's cost."""
    B, Hq, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    acc = torch.promote_types(q.dtype, torch.float32)
    mask = pattern.dense_mask(Sq, Sk).to(q.device)
    qg = q.reshape(B, Hkv, Hq // Hkv, Sq, D).to(acc)  # (B, Hkv, G, Sq, D)
    scores = qg @ k.to(acc).unsqueeze(2).transpose(-1, -2) * scale  # (B, Hkv, G, Sq, Sk)
    probs = scores.masked_fill(~mask, float("-inf")).softmax(-1).nan_to_num(0.0)
    return probs.reshape(B, Hq, Sq, Sk).to(q.dtype)


def _attend(route: LayerRoute, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale, bm=None):
    """Attention of queries that are the last ``Sq`` of the keys (``bm``: the pattern's
    BlockMask for these lengths, or None)."""
    if route.pattern is None:
        return dense_causal_attention(q, k, v, scale)
    return sparse_attention(
        q, k, v, route.pattern, scale=scale, backend=route.backend, block_mask=bm
    )


def _attend_prefix(route: LayerRoute, q, k, v, used: int, scale):
    """Attention over the first ``used`` key slots, the queries being the last ``Sq`` of them
    (a static cache: the slots after ``used`` are unwritten)."""
    return _attend(route, q, k[:, :, :used], v[:, :, :used], scale)


def _attend_cache(route: LayerRoute, q, k, v, slots: torch.Tensor, scale):
    """A static cache: ``slots`` is the mask function's 1-D slot mask, ``(B,)`` written
    slots per sequence (all equal, nothing padded), or ``(2B,)`` those and each sequence's
    first real slot (left padding, decode only); the queries are the last ``Sq`` written.

    Decode (``Sq <= DECODE_MAX_Q``, no gradient, backend ``auto``) goes to
    :func:`powerattn.sparse_attention_with_kvcache` on the whole cache, layers kept full with
    the ``full`` pattern: it reads the slots on the device (its CUDA kernel is a custom op,
    traceable, with no host synchronisation). Anything else (never with left padding: the
    caller sends that to the host path) reads the length on the host."""
    ends, starts = slot_bounds(slots, q.shape[0])
    if not _kvcache_route(route, q, k, v):
        return _attend_prefix(route, q, k, v, int(ends[0]), scale)
    pattern = _FULL if route.pattern is None else route.pattern
    return sparse_attention_with_kvcache(
        q, k, v, pattern, cache_seqlens=ends, cache_leftpad=starts, scale=scale
    )


def _kvcache_route(route: LayerRoute, q, k, v) -> bool:
    """Whether :func:`powerattn.sparse_attention_with_kvcache` serves this call: decode
    (``Sq <= DECODE_MAX_Q``), no gradient, backend ``auto``."""
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return not grad and q.shape[2] <= DECODE_MAX_Q and route.backend == "auto"


def _attend_leftpad(route: LayerRoute, q, k, v, plan: KeyPlan, scale):
    """Decode of a left-padded batch (``plan.leftpad``: each row's first real slot, its
    real tokens running to slot ``used - 1``): one call for all rows, each attending its
    real keys at the positions counted from its first real token."""
    pattern = _FULL if route.pattern is None else route.pattern
    used = plan.used
    return sparse_attention_with_kvcache(
        q, k[:, :, :used], v[:, :, :used], pattern, cache_leftpad=plan.leftpad, scale=scale
    )


def _run(route: LayerRoute, q, k, v, plan: KeyPlan | None, scale, weights: bool):
    """Output ``(B, Hq, Sq, D)`` and, when asked, the weights ``(B, Hq, Sq, Sk)``."""
    pattern = _FULL if route.pattern is None else route.pattern
    B, Hq, Sq, _ = q.shape
    Sk = k.shape[2]
    used = Sk if plan is None else plan.used
    if plan is not None and plan.runs is not None and not weights:
        return _run_rotated(route, q, k, v, plan, scale), None
    if (
        plan is not None
        and plan.leftpad is not None
        and not weights
        and _kvcache_route(route, q, k, v)
    ):
        return _attend_leftpad(route, q, k, v, plan, scale), None
    if plan is None or plan.rows is None:
        out = _attend_prefix(route, q, k, v, used, scale)
        if not weights:
            return out, None
        w = q.new_zeros(B, Hq, Sq, Sk)
        w[..., :used] = attention_weights(q, k[:, :, :used], pattern, scale)
        return out, w
    rows_out: list[torch.Tensor] = [q.new_zeros(0)] * B
    w = q.new_zeros(B, Hq, Sq, Sk) if weights else None
    if plan.full_rows:
        idx = torch.tensor(plan.full_rows, device=q.device)
        qf, kf, vf = q.index_select(0, idx), k[:, :, :used], v[:, :, :used]
        kf, vf = kf.index_select(0, idx), vf.index_select(0, idx)
        outf = _attend(route, qf, kf, vf, scale)
        for i, b in enumerate(plan.full_rows):
            rows_out[b] = outf[i]
        if w is not None:
            w[idx, :, :, :used] = attention_weights(qf, kf, pattern, scale)
    for r in plan.rows:
        rows_out[r.row] = _padded_row(route, q, k, v, r, pattern, scale, w)
    return torch.stack(rows_out), w


def _run_rotated(route: LayerRoute, q, k, v, plan: KeyPlan, scale) -> torch.Tensor:
    """Output ``(B, Hq, Sq, D)`` when the queries are all the slots and each row's real
    tokens are one run (``plan.runs``): every row rotated so that its run starts at slot 0,
    one operator call for the real queries of all rows (a real query of rank ``j`` attends
    ranks ``<= j``: real keys only), rotated back; padded queries before the run give 0, those
    after it attend as the last real token (:func:`_pad_run`, one call per padded row)."""
    lay, S = plan.runs, q.shape[2]

    def rotate(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # (B, H, S, D): position j of row b <- slot index[b, j]
        return x.gather(2, index[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[3]))

    if lay.shifted:
        qr, kr, vr = (rotate(x[:, :, :S], lay.order) for x in (q, k, v))
        out = rotate(_attend(route, qr, kr, vr, scale), lay.back)
    else:  # every run starts at slot 0 (right padding): nothing to rotate
        out = _attend_prefix(route, q, k, v, S, scale)
    out = torch.where(lay.real[:, None, :, None], out, 0)  # (B, Hq, S, D)
    pads = [
        _pad_run(route, q[r.row], k[r.row][:, r.keys], v[r.row][:, r.keys], run, scale)
        for r in plan.rows
        for run in r.pad_runs
    ]
    if not pads:
        return out
    vals = torch.cat(pads, dim=1).transpose(0, 1)  # (P, Hq, D)
    out = out.transpose(1, 2).index_put((lay.pad_rows, lay.pad_slots), vals)
    return out.transpose(1, 2)


def _pad_run(route, qb, kb, vb, run: tuple[int, int, int], scale) -> torch.Tensor:
    """Padded queries ``start..stop-1`` of one row (``qb (Hq, Sq, D)``, its real keys ``kb,
    vb (Hkv, n, D)``) that attend what its real token of rank ``rank`` attends: ``(Hq,
    stop - start, D)``. Each padded query is its own batch entry: a query at the position of
    that token, over the real keys up to it."""
    start, stop, rank = run
    n = stop - start
    qp = qb[:, start:stop].transpose(0, 1)[:, :, None]  # (n, Hq, 1, D)
    kp = kb[None, :, : rank + 1].expand(n, -1, -1, -1)
    vp = vb[None, :, : rank + 1].expand(n, -1, -1, -1)
    return _attend(route, qp, kp, vp, scale)[:, :, 0].transpose(0, 1)  # (Hq, n, D)


def _padded_row(route, q, k, v, r: RowPlan, pattern: Pattern, scale, w) -> torch.Tensor:
    """Row ``r.row``'s output ``(Hq, Sq, D)``, computed on its real tokens only; fills its
    weights into ``w`` when given."""
    qb, kb, vb = q[r.row], _select(k[r.row], r.keys), _select(v[r.row], r.keys)
    out = q.new_zeros(qb.shape)
    ki = _indices(r.keys, q.device) if w is not None else None
    if r.num_queries:
        qr = _select(qb, r.queries)
        out = _place(out, r.queries, _attend(route, qr[None], kb[None], vb[None], scale)[0])
        if w is not None:
            qi = _indices(r.queries, q.device)
            w[r.row][:, qi[:, None], ki[None, :]] = attention_weights(
                qr[None], kb[None], pattern, scale
            )[0]
    for start, stop, rank in r.pad_runs:
        out = _place(
            out, slice(start, stop), _pad_run(route, qb, kb, vb, (start, stop, rank), scale)
        )
        if w is not None:
            qp = qb[:, start:stop].transpose(0, 1)[:, :, None]  # (n, Hq, 1, D)
            kp = kb[None, :, : rank + 1].expand(stop - start, -1, -1, -1)
            wp = attention_weights(qp, kp, pattern, scale)[:, :, 0]  # (n, Hq, rank + 1)
            w[r.row][:, start:stop, ki[: rank + 1]] = wp.transpose(0, 1)
    return out


def _select(x: torch.Tensor, idx: slice | torch.Tensor) -> torch.Tensor:
    """``x (H, S, D)`` restricted to the positions ``idx`` along dim 1."""
    return x[:, idx] if isinstance(idx, slice) else x.index_select(1, idx)


def _place(out: torch.Tensor, idx: slice | torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """``out (H, Sq, D)`` with rows ``idx`` replaced by ``val`` (out of place, differentiable)."""
    if isinstance(idx, slice):
        return torch.cat([out[:, : idx.start], val, out[:, idx.stop :]], dim=1)
    return out.index_copy(1, idx, val)


def _indices(idx: slice | torch.Tensor, device) -> torch.Tensor:
    return torch.arange(idx.start, idx.stop, device=device) if isinstance(idx, slice) else idx


def _check_positions(position_ids: torch.Tensor) -> None:
    """Refuse position ids that do not count up by one along a row: packed sequences, which
    transformers detects only without a cache (``use_cache`` defaults to True). Only for
    unpadded prefill and training (generate's left-padded position ids repeat); skipped
    under ``torch.compile``."""
    if not torch.compiler.is_compiling():
        refuse_packed_positions(position_ids)


def attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention function transformers calls in every layer (``AttentionInterface``).

    Args:
        module: the attention module (its route -- pattern or dense -- is attached to it, see
            :func:`powerattn.hf.settings.layer_route`).
        query: ``(B, Hq, Sq, D)``; key, value: ``(B, Hkv, Sk, D)`` -- the whole cache at decode
            (a static cache: all its slots).
        attention_mask: what :func:`~powerattn.hf.masks.mask_forward` returned: ``None``,
            the ``(B, used)`` bool mask of real key slots, or a static cache's 1-D slot
            mask (``(B,)`` written slots, or ``(2B,)`` those and the first real slots); or,
            nothing padded, a
            ``BlockMask`` passed to the model as ``attention_mask`` (transformers hands it to
            the layers as it is): ``powerattn.ops.flex.block_mask_for(pattern, Sq, Sk,
            device)``, built before a compiled forward so that no layer looks it up inside
            the graph (a graph break per layer otherwise); layers kept full ignore it.
        scaling: softmax scale.

    Returns ``(out (B, Sq, Hq, D), weights)``: ``weights`` is ``None`` unless
    ``output_attentions=True``, then the pattern-masked probabilities ``(B, Hq, Sq, Sk)``.
    """
    if dropout:
        raise NotImplementedError(
            f"powerattn has no attention dropout (got dropout={dropout}); set "
            "config.attention_dropout = 0.0"
        )
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError(
            f"powerattn does not combine with sliding_window={kwargs['sliding_window']}; set "
            "config.sliding_window = None"
        )
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("powerattn does not support attention logit softcapping")
    for name, what in _UNSUPPORTED_TERMS.items():
        if kwargs.get(name) is not None:
            raise NotImplementedError(
                f"powerattn does not support {what} ({name}); the operator computes plain "
                "softmax attention under the pattern's mask"
            )
    is_causal = kwargs.get("is_causal")
    if not (getattr(module, "is_causal", True) if is_causal is None else is_causal):
        raise NotImplementedError("powerattn is causal; this attention call is not")
    if kwargs.get("cu_seq_lens_q") is not None or kwargs.get("cu_seq_lens_k") is not None:
        raise NotImplementedError(
            "powerattn does not support packed sequences (cu_seq_lens_q / cu_seq_lens_k)"
        )
    B, Sq = query.shape[0], query.shape[2]
    block_mask = None
    if isinstance(attention_mask, BlockMask):
        if tuple(attention_mask.seq_lengths) != (Sq, key.shape[2]):
            raise ValueError(
                f"a BlockMask attention_mask must be the pattern's for these {Sq} queries and "
                f"{key.shape[2]} keys (block_mask_for(pattern, {Sq}, {key.shape[2]}, device)); "
                f"got one for {tuple(attention_mask.seq_lengths)}"
            )
        block_mask, attention_mask = attention_mask, None  # every key slot is a real token
    if attention_mask is not None and attention_mask.dim() == 1:
        check_slot_mask(attention_mask, B, (torch.int32, torch.int64))
    elif attention_mask is not None:
        if attention_mask.dim() != 2:
            raise ValueError(
                "powerattn takes no 4-D attention_mask (the pattern is the mask); pass the 2-D "
                f"padding mask instead, got shape {tuple(attention_mask.shape)}"
            )
        if attention_mask.shape[0] != B or not Sq <= attention_mask.shape[1] <= key.shape[2]:
            raise ValueError(
                f"attention_mask must be the (batch, kv_len) = ({B}, {key.shape[2]}) padding "
                f"mask, got shape {tuple(attention_mask.shape)}"
            )
    elif kwargs.get("position_ids") is not None:
        _check_positions(kwargs["position_ids"])
    route = layer_route(module)
    scale = query.shape[-1] ** -0.5 if scaling is None else float(scaling)
    want_weights = bool(kwargs.get("output_attentions"))
    if attention_mask is None and not want_weights:
        out, weights = _attend(route, query, key, value, scale, block_mask), None  # traceable
    elif (
        attention_mask is not None
        and attention_mask.dim() == 1
        and not want_weights
        and (attention_mask.shape[0] == B or _kvcache_route(route, query, key, value))
    ):
        out, weights = _attend_cache(route, query, key, value, attention_mask, scale), None
    else:
        out, weights = _run_masked(route, query, key, value, attention_mask, scale, want_weights)
    return out.transpose(1, 2).contiguous(), weights


@torch.compiler.disable  # host-side plan (padding, static-cache length): runs eagerly
def _run_masked(route, query, key, value, attention_mask, scale, want_weights):
    if (
        attention_mask is not None
        and attention_mask.dim() == 1
        and attention_mask.shape[0] != query.shape[0]
    ):
        attention_mask = valid_from_slots(attention_mask, query.shape[0])  # left padding
    plan = None if attention_mask is None else plan_of(attention_mask, query.shape[2])
    return _run(route, query, key, value, plan, scale, want_weights)
