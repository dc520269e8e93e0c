"""The mask function transformers calls once per forward, and the key layout it hands to the
layers.

Transformers passes whatever the mask function returns, unchanged, to every attention layer of
that forward. Ours returns

* ``None`` when every key slot is a real token (nothing padded, a cache that holds exactly the
  tokens seen);
* a ``(batch,)`` int32 tensor, the number of written slots per sequence, for a static cache
  (which pre-allocates more slots) with nothing padded: the attention reads it on the device,
  so a compiled decode step needs no host synchronisation there;
* a ``(2 * batch,)`` int32 tensor, those numbers and then each sequence's first real slot,
  for a static cache holding a left-padded batch with fewer queries than slots (the decode
  steps of ``generate``): the same shape at every step, so a compiled decode step, to which
  ``generate`` hands the tensor it built ahead of the forward, is one graph;
* else a fresh ``(batch, used)`` bool tensor: True where one of the first ``used`` key slots
  holds a real token. The host-side analysis of that mask (:class:`KeyPlan`: which slots of
  each row are real) is done once, here, and travels on the returned tensor, which this
  forward created and nobody else holds: a caller that edits its own mask buffer in place
  before the next forward gets a new analysis (nothing is cached across forwards). An
  attention call that receives a mask without the plan (called directly) analyses it itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

_PLAN_ATTR = "_powerattn_plan"


@dataclass(frozen=True)
class RowPlan:
    """One padded row: its real key slots, its real queries, and its padded query runs.

    ``keys`` is a ``slice`` when the real tokens are one contiguous run (views, no copy), else
    a 1-D index tensor on the mask's device; ``queries`` likewise indexes ``0..Sq-1``. The real
    queries are the last ``num_queries`` real keys. ``pad_runs`` lists ``(start, stop, rank)``:
    query rows ``start..stop-1`` are padding and attend what the real token of rank ``rank``
    (the last one before them) attends, as sdpa lets a padded query attend the real keys
    before it; padded queries with no real token before them attend nothing (output 0).
    """

    row: int
    keys: slice | torch.Tensor
    queries: slice | torch.Tensor
    num_queries: int
    pad_runs: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class RunLayout:
    """Index tensors (on the mask's device) for a forward whose queries are all ``used`` key
    slots and whose rows each hold their real tokens as one contiguous run (or none): they
    rotate every row so that its run starts at slot 0, one operator call for all real queries.

    ``order[b, j]`` is the slot read at rank position ``j`` (``(start_b + j) % used``),
    ``back`` the inverse rotation, ``real[b, j]`` whether slot ``j`` holds a real token;
    ``pad_rows, pad_slots`` (P,) list the padded queries that follow a real token (right
    padding), in the order of ``KeyPlan.rows`` and their ``pad_runs``; ``shifted`` says
    whether some run starts after slot 0 (else the rotation is the identity: right padding).

    ::

        slots   p p a b c p        (left and right padding, start 2, count 3)
        order   2 3 4 5 0 1   ->   a b c p p p   (rank j at position j; the rest is never
                                                  attended by a real query: causality)
    """

    order: torch.Tensor
    back: torch.Tensor
    real: torch.Tensor
    pad_rows: torch.Tensor
    pad_slots: torch.Tensor
    shifted: bool

    @classmethod
    def build(
        cls,
        starts: list[int],
        counts: list[int],
        pads: list[tuple[int, int]],
        used: int,
        device: torch.device,
    ) -> RunLayout:
        """From each row's run ``(starts[b], counts[b])`` and the ``(row, slot)`` of each
        right-padded query (host lists; one transfer each)."""
        start, count = torch.tensor([starts, counts], device=device)  # (B,) each
        j = torch.arange(used, device=device)
        pad = torch.tensor(pads, dtype=torch.long, device=device).reshape(-1, 2)
        return cls(
            order=(start[:, None] + j) % used,
            back=(j - start[:, None]) % used,
            real=(j >= start[:, None]) & (j < (start + count)[:, None]),
            pad_rows=pad[:, 0],
            pad_slots=pad[:, 1],
            shifted=any(starts),
        )


@dataclass(frozen=True)
class KeyPlan:
    """Which key slots of a forward are real, for queries that are the last ``q_len`` of the
    first ``used`` slots. ``rows is None``: every slot in use is real (a static cache without
    padding); otherwise ``full_rows`` lists the rows without padding (run as one batch) and
    ``rows`` the others. ``runs`` is set when the queries are all the slots and every row's
    real tokens are one contiguous run or none (left, right or both-ends padding: prefill and
    training), else ``None``. ``leftpad`` is set when there are fewer queries than slots
    (decode, a chunk) and every row's real tokens are one run that ends at the last slot and
    holds all the queries (left padding, as ``generate`` makes it): each row's first real
    slot, a ``(B,)`` int32 tensor on the mask's device, else ``None``."""

    used: int
    q_len: int
    full_rows: tuple[int, ...]
    rows: tuple[RowPlan, ...] | None
    runs: RunLayout | None = None
    leftpad: torch.Tensor | None = None

    @classmethod
    def from_mask(cls, valid: torch.Tensor, q_len: int) -> KeyPlan:
        """Analyse a ``(batch, used)`` bool mask (one host transfer)."""
        used = valid.shape[1]
        if q_len > used:
            raise ValueError(
                f"the padding mask covers {used} key slots but there are {q_len} queries"
            )
        if bool(valid.all()):  # one scalar from the device in the common case
            return cls(used, q_len, tuple(range(valid.shape[0])), None)
        host = valid.detach().to("cpu", torch.bool)
        counts = host.sum(dim=1).tolist()
        full, rows = [], []
        q_start = used - q_len  # slot of query 0
        starts = [0] * len(counts)  # each row's run, while every row has at most one
        one_run = q_len == used
        left_only = q_len < used  # every row one run ending at the last slot, queries real
        for b, count in enumerate(counts):
            if count == used:
                full.append(b)
                continue
            slots = host[b].nonzero().flatten()
            n_q = int((slots >= q_start).sum())
            if count and int(slots[-1] - slots[0]) + 1 == count:  # one contiguous run
                s, e = int(slots[0]), int(slots[-1]) + 1
                keys, queries = slice(s, e), slice(e - n_q - q_start, e - q_start)
                starts[b] = s
                left_only = left_only and e == used and n_q == q_len
            else:
                keys = slots.to(valid.device)
                queries = (slots[count - n_q :] - q_start).to(valid.device)
                one_run = one_run and not count
                left_only = False
            rows.append(RowPlan(b, keys, queries, n_q, _pad_runs(host[b], q_start)))
        runs = None
        if one_run:
            pads = [
                (r.row, i)
                for r in rows
                for start, stop, _ in r.pad_runs
                for i in range(start, stop)
            ]
            runs = RunLayout.build(starts, counts, pads, used, valid.device)
        leftpad = None
        if left_only:
            leftpad = torch.tensor(starts, dtype=torch.int32, device=valid.device)
        return cls(used, q_len, tuple(full), tuple(rows), runs, leftpad)


def _pad_runs(valid: torch.Tensor, q_start: int) -> tuple[tuple[int, int, int], ...]:
    """``(start, stop, rank)`` of each run of padded query rows that has a real token before
    it (``rank``: that token's rank among the real tokens)."""
    rank = valid.long().cumsum(0) - 1  # rank of the last real slot at or before each slot
    runs = []
    pad = (~valid[q_start:]).tolist()
    ranks = rank[q_start:].tolist()
    i = 0
    while i < len(pad):
        if not pad[i]:
            i += 1
            continue
        j = i
        while j < len(pad) and pad[j]:
            j += 1
        if ranks[i] >= 0:
            runs.append((i, j, ranks[i]))
        i = j
    return tuple(runs)


def check_slot_mask(mask: torch.Tensor, batch: int, dtypes: tuple[torch.dtype, ...]) -> None:
    """Refuse a 1-D ``attention_mask`` that is not :func:`mask_forward`'s slot counts:
    ``(batch,)`` written slots per sequence, or ``(2 * batch,)`` those and the first real
    slots (metadata only: no host synchronisation)."""
    if mask.shape not in ((batch,), (2 * batch,)) or mask.dtype not in dtypes:
        raise ValueError(
            "a 1-D attention_mask is the (batch,) int32 tensor of written cache slots per "
            "sequence, or (2 * batch,): those and each sequence's first real slot; got "
            f"{mask.dtype} of shape {tuple(mask.shape)} for batch {batch}"
        )


def slot_bounds(mask: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(ends, starts)`` of a 1-D slot mask (``starts`` None: every row starts at 0)."""
    return (mask, None) if mask.shape[0] == batch else (mask[:batch], mask[batch:])


def valid_from_slots(mask: torch.Tensor, batch: int) -> torch.Tensor:
    """The ``(batch, used)`` bool mask of real key slots that a 1-D slot mask stands for
    (host read: for the paths that analyse padding on the host anyway)."""
    ends, starts = slot_bounds(mask, batch)
    used = int(ends.max())
    j = torch.arange(used, device=mask.device)
    valid = j < ends[:, None]
    return valid if starts is None else valid & (j >= starts[:, None])


def plan_of(mask: torch.Tensor, q_len: int) -> KeyPlan:
    """The plan :func:`mask_forward` attached to ``mask``, or a fresh analysis of it (a 1-D
    mask of lengths: every sequence holds ``mask[0]`` tokens)."""
    if mask.dim() == 1:
        return KeyPlan(int(mask[0]), q_len, tuple(range(mask.shape[0])), None)
    plan = mask.__dict__.get(_PLAN_ATTR)
    if plan is not None and plan.q_len == q_len and plan.used == mask.shape[1]:
        return plan
    return KeyPlan.from_mask(mask, q_len)


PACKED_MESSAGE = (
    "powerattn does not support packed sequences: position_ids restart (or skip) within a "
    "row; give each sequence its own row (with a padding attention_mask)"
)


def mask_forward(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor = 0,
    kv_offset: int = 0,
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    local_size: int | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """The ``AttentionMaskInterface`` function (see the module docstring), never a
    ``q_length x kv_length`` matrix. Returns ``None`` (nothing padded, every key slot written),
    a ``(batch,)`` int32 tensor of written slots per sequence (a static cache, nothing padded),
    ``(2 * batch,)``: those and each sequence's first real slot (a static cache, left padding,
    fewer queries than slots), or the ``(batch, used)`` bool mask of real key slots with its
    analysis (other padding).

    ``q_offset`` is the slot of the first query (a 0-d tensor for a static cache): the slots in
    use are ``0 .. q_offset + q_length - 1``. Refuses what the operator cannot express.

    Without a padding mask there is no host work, a static cache included (its lengths are
    computed on the device): a compiled forward traces through (no graph break).
    ``mask_function`` is transformers' causal mask, or -- no cache, no padding mask, position
    ids given: under ``torch.compile`` always, since transformers cannot look at the position
    ids while tracing -- that mask restricted to packed sequences. The latter is accepted when
    every row holds one sequence (checked on the host: one graph break) and refused
    otherwise.
    """
    from transformers.masking_utils import causal_mask_function

    if local_size is not None:
        raise NotImplementedError(
            f"powerattn does not combine with a sliding-window mask (local_size={local_size}); "
            "set config.sliding_window = None"
        )
    if mask_function is not None and mask_function is not causal_mask_function:
        _check_packed_is_one_sequence(mask_function)
    if (
        attention_mask is None
        and isinstance(q_offset, int)
        and kv_offset == 0
        and q_offset + q_length == kv_length
    ):
        return None  # every key slot is a real token (no cache, or a dynamic cache)
    if kv_offset == 0 and attention_mask is not None and attention_mask.dim() == 1:
        # Our own per-sequence lengths (and starts), which generate built with this function
        # ahead of the forward (it prepares static-cache masks before calling a compiled
        # model) and hands back: already this answer. Metadata checks only, so a compiled
        # step traces through.
        check_slot_mask(attention_mask, batch_size, (torch.int32,))
        return attention_mask
    if kv_offset == 0 and attention_mask is None and isinstance(q_offset, torch.Tensor):
        # A static cache with nothing padded: the written slots per sequence, computed on the
        # device -- no host synchronisation and no graph break, so a compiled decode step is
        # one graph that CUDA graphs can capture (the cache itself bounds the slots: its
        # update would fail first).
        used_t = (q_offset.reshape(()) + q_length).to(torch.int32)
        device = kwargs.get("device")
        if device is not None:
            used_t = used_t.to(device)
        return used_t.expand(batch_size).contiguous()
    return _host_mask(batch_size, q_length, kv_length, q_offset, kv_offset, attention_mask, kwargs)


def _packed_parts(mask_function: Callable) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(sequence ids, position ids or None)``, both ``(batch, S)``, when ``mask_function`` is
    transformers' causal mask restricted to packed sequences -- ``and_masks(causal,
    packed_sequence_mask_function(ids))``, or (transformers 5.24) ``and_masks(
    remap_positions_for_packed_sequence(causal, position_ids), packed_sequence_mask_function(
    ids))`` -- else ``None``. Recognised by the code objects of transformers' own helpers, so
    a user's overlay is never mistaken for it."""
    from transformers import masking_utils as mu

    def code(fn):
        return getattr(fn, "__code__", None)

    def cells(fn) -> dict[str, Any]:
        names = fn.__code__.co_freevars
        return {n: c.cell_contents for n, c in zip(names, fn.__closure__ or (), strict=True)}

    if code(mask_function) is not mu.and_masks(mu.causal_mask_function).__code__:
        return None
    parts = cells(mask_function).get("mask_functions", ())
    if len(parts) != 2 or code(parts[1]) is not mu.packed_sequence_mask_function(None).__code__:
        return None
    seq_ids = cells(parts[1])["packed_sequence_mask"]
    if parts[0] is mu.causal_mask_function:
        return seq_ids, None
    remap = getattr(mu, "remap_positions_for_packed_sequence", None)
    if remap is not None and code(parts[0]) is remap(mu.causal_mask_function, None).__code__:
        inner = cells(parts[0])
        if inner.get("mask_function") is mu.causal_mask_function:
            return seq_ids, inner["position_ids"]
    return None


@torch.compiler.disable  # reads the sequence ids on the host
def _check_packed_is_one_sequence(mask_function: Callable) -> None:
    """Accept transformers' packed-sequence mask when every row holds one sequence (then it
    is the causal mask); refuse it for a packed batch and refuse any other modified mask."""
    parts = _packed_parts(mask_function)
    if parts is None:
        raise NotImplementedError(
            "powerattn supports plain causal language modelling only; transformers asked for a "
            "modified mask (a bidirectional or sliding mask, or an or/and mask overlay)"
        )
    seq_ids, positions = parts
    if not bool((seq_ids == seq_ids[:, :1]).all()):
        raise NotImplementedError(PACKED_MESSAGE)
    if positions is not None:  # the remapped causal mask is causal
        refuse_packed_positions(positions)


def refuse_packed_positions(position_ids: torch.Tensor) -> None:
    """Refuse position ids that do not count up by one along a row (packed sequences)."""
    if position_ids.shape[-1] > 1 and bool((position_ids.diff(dim=-1) != 1).any()):
        raise NotImplementedError(PACKED_MESSAGE)


@torch.compiler.disable  # host-side analysis; runs eagerly around a compiled model
def _host_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | torch.Tensor,
    kv_offset: int,
    attention_mask: torch.Tensor | None,
    kwargs: dict[str, Any],
) -> torch.Tensor | None:
    """:func:`mask_forward` with a padding mask, or a cache that keeps only some keys."""
    used = int(q_offset) + q_length
    if kv_offset != 0 or used > kv_length:
        raise NotImplementedError(
            "powerattn needs a cache that keeps every token from the first (dynamic or static); "
            "a sliding cache that drops old keys is not supported (got "
            f"q_offset={int(q_offset)}, q_length={q_length}, kv_length={kv_length}, "
            f"kv_offset={kv_offset})"
        )
    if attention_mask is not None:
        if attention_mask.dim() != 2 or attention_mask.shape[0] != batch_size:
            raise ValueError(
                "attention_mask must be the 2-D padding mask over the past and new tokens, "
                f"shape ({batch_size}, {used}); got {tuple(attention_mask.shape)}"
            )
        if attention_mask.shape[1] < used or (
            attention_mask.shape[1] > used and attention_mask.shape[1] != kv_length
        ):
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[1]} tokens; this forward has "
                f"{used} (past and new), shape ({batch_size}, {used}) expected"
            )
        valid = attention_mask[:, :used].to(torch.bool, copy=True)
        plan = KeyPlan.from_mask(valid, q_length)
        if (
            plan.rows is not None
            and plan.leftpad is not None
            and isinstance(q_offset, torch.Tensor)
        ):
            # A static cache and a left-padded batch (generate's decode steps): the written
            # slots and each row's first real slot, a shape that does not grow with the
            # step, so that a compiled decode step is one graph (the bool mask would give a
            # new shape, and a host analysis, at every step).
            return torch.cat((torch.full_like(plan.leftpad, used), plan.leftpad))
        if plan.rows is not None:
            setattr(valid, _PLAN_ATTR, plan)
            return valid
    if used == kv_length and not isinstance(q_offset, torch.Tensor):
        return None
    # A static cache and a padding mask with nothing padded: the number of written slots per
    # sequence, as a device tensor the attention reads without a host synchronisation (also
    # when the cache is full: what generate hands a compiled step must not change type).
    return torch.full((batch_size,), used, dtype=torch.int32, device=kwargs.get("device"))
