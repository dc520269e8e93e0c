"""The pattern protocol: one block-level rule, everything else derived from it.

A pattern decides, for a query block ``qb`` and a key/value block ``kb`` (both absolute
block indices, ``kb <= qb``), whether the query block attends to that key block. From that
single rule (:meth:`Pattern.block_rule`) we derive:

* :meth:`Pattern.kv_blocks` / :meth:`Pattern.block_layout` -- index lists, built from a
  small per-pattern *candidate* enumeration (``_candidates``) filtered by the rule, so the
  cost is O(blocks x degree), never O(blocks^2) and never O(S^2);
* :meth:`Pattern.mask_mod` -- the token-level predicate in FlexAttention's convention;
* :meth:`Pattern.dense_mask` -- a boolean matrix for tests and small sizes.

The candidate enumeration only has to be a superset of the allowed blocks; the tests check
that it is complete against the dense evaluation of the rule.

Alignment: positions are absolute. When ``q_len < kv_len`` the queries are the *last*
``q_len`` positions (decode, chunked prefill), as in FlashAttention's bottom-right
convention::

    kv:  0 1 2 3 4 5 6 7
    q:           0 1 2 3      (q_len=4, kv_len=8: query i sits at position 4 + i)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

# Dense masks above this many elements are refused: a 64K x 64K bool matrix is 4 GiB.
MAX_DENSE_ELEMENTS = 1 << 28


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_nonnegative_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class BlockLayout:
    """The attended key blocks of a run of query blocks, as padded index tensors.

    Attributes:
        kv_count: ``(num_q_blocks,)`` int32 -- how many key blocks each query block attends.
        kv_indices: ``(num_q_blocks, max_degree)`` int32 -- the attended key blocks, sorted
            ascending; entries past ``kv_count`` are padding and hold ``-1``.
        is_full: ``(num_q_blocks, max_degree)`` bool -- True where every query token of the
            block attends every key token of the key block (no token-level mask needed);
            False for partial blocks (the diagonal block, cut by causality) and for padding.
        q_block_offset: absolute index of the first query block.
        num_kv_blocks: number of key blocks in the key sequence.
    """

    kv_count: torch.Tensor
    kv_indices: torch.Tensor
    is_full: torch.Tensor
    q_block_offset: int
    num_kv_blocks: int

    @property
    def num_q_blocks(self) -> int:
        return int(self.kv_count.shape[0])

    @property
    def max_degree(self) -> int:
        return int(self.kv_count.max()) if self.kv_count.numel() else 0

    def split(self, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """``(count, indices)`` of only the full (``full=True``) or only the partial blocks.

        Indices are left-packed and padded with 0 (FlexAttention's ``from_kv_blocks`` layout).
        """
        valid = self.kv_indices >= 0
        keep = valid & (self.is_full if full else ~self.is_full)
        count = keep.sum(dim=1, dtype=torch.int32)
        # Stable sort on ~keep moves kept entries to the front, in their ascending order.
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
        idx = torch.gather(self.kv_indices, 1, order)
        width = max(int(count.max()) if count.numel() else 0, 1)
        idx = idx[:, :width].clone()
        idx[torch.arange(width).expand_as(idx) >= count[:, None]] = 0
        return count, idx.to(torch.int32)


@dataclass(frozen=True)
class Pattern:
    """Base class of a block-sparse causal attention pattern.

    Subclasses are frozen dataclasses that set ``name``, implement :meth:`block_rule` (the
    definition) and ``_candidates`` (a vectorised superset of the allowed key blocks).
    """

    name: ClassVar[str] = ""
    block_size: int = 256

    def __post_init__(self) -> None:
        _check_positive_int("block_size", self.block_size)

    # ------------------------------------------------------------------ the rule
    def block_rule(self, qb: Any, kb: Any) -> Any:
        """Whether query block ``qb`` attends key block ``kb`` (``0 <= kb <= qb``).

        Written with operators only (``<``, ``==``, ``&``, ``|``, ``%``, ``//``) so it
        evaluates on Python ints, numpy arrays and torch tensors alike.
        """
        raise NotImplementedError

    def _candidates(self, qb: np.ndarray) -> np.ndarray:
        """``(len(qb), C)`` int64 candidate key blocks for each query block (a superset of the
        allowed ones; may hold duplicates, negatives or blocks past ``qb``)."""
        raise NotImplementedError

    # ---------------------------------------------------------- derived: block level
    def _layout_arrays(
        self, num_q_blocks: int, num_kv_blocks: int, q_block_offset: int
    ) -> tuple[np.ndarray, np.ndarray]:
        qb = np.arange(q_block_offset, q_block_offset + num_q_blocks, dtype=np.int64)
        cand = self._candidates(qb)  # (nq, C)
        q = qb[:, None]
        ok = (cand >= 0) & (cand <= q) & (cand < num_kv_blocks)
        ok &= np.asarray(self.block_rule(q, np.where(ok, cand, 0)), dtype=bool)
        cand = np.where(ok, cand, np.iinfo(np.int64).max)
        cand.sort(axis=1)
        dup = np.zeros_like(ok)
        dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
        cand[dup] = np.iinfo(np.int64).max
        cand.sort(axis=1)
        count = (cand != np.iinfo(np.int64).max).sum(axis=1)
        width = int(count.max()) if count.size else 0
        cand = cand[:, :width]
        cand[cand == np.iinfo(np.int64).max] = -1
        return count, cand

    def kv_blocks(self, q_block: int) -> list[int]:
        """Sorted key blocks that query block ``q_block`` attends (before the token-level
        causal cut inside its own, diagonal, block)."""
        _check_nonnegative_int("q_block", q_block)
        count, idx = self._layout_arrays(1, q_block + 1, q_block)
        return [int(x) for x in idx[0, : count[0]]]

    def block_layout(
        self, num_q_blocks: int, num_kv_blocks: int | None = None, q_block_offset: int = 0
    ) -> BlockLayout:
        """The layout of query blocks ``q_block_offset .. q_block_offset + num_q_blocks - 1``.

        Args:
            num_q_blocks: number of query blocks.
            num_kv_blocks: number of key blocks (default: ``q_block_offset + num_q_blocks``,
                i.e. the queries end where the keys end).
            q_block_offset: absolute block index of the first query block; place queries at
                the end of the keys for decode and chunked prefill.

        Computed analytically in O(num_q_blocks x degree).
        """
        _check_positive_int("num_q_blocks", num_q_blocks)
        _check_nonnegative_int("q_block_offset", q_block_offset)
        if num_kv_blocks is None:
            num_kv_blocks = q_block_offset + num_q_blocks
        _check_positive_int("num_kv_blocks", num_kv_blocks)
        if q_block_offset + num_q_blocks > num_kv_blocks:
            raise ValueError(
                f"query blocks {q_block_offset}..{q_block_offset + num_q_blocks - 1} end past "
                f"the last key block ({num_kv_blocks - 1}); need q_block_offset + num_q_blocks"
                " <= num_kv_blocks"
            )
        count, idx = self._layout_arrays(num_q_blocks, num_kv_blocks, q_block_offset)
        qb = np.arange(q_block_offset, q_block_offset + num_q_blocks)[:, None]
        # Off-diagonal blocks are entirely allowed; the diagonal one is cut by causality
        # (unless a block holds a single token).
        full = (idx >= 0) & ((idx != qb) | (self.block_size == 1))
        return BlockLayout(
            kv_count=torch.from_numpy(count.astype(np.int32)),
            kv_indices=torch.from_numpy(idx.astype(np.int32)),
            is_full=torch.from_numpy(full),
            q_block_offset=q_block_offset,
            num_kv_blocks=num_kv_blocks,
        )

    def num_blocks(self, seq_len: int) -> int:
        """Number of blocks covering ``seq_len`` tokens (the last one may be partial)."""
        _check_positive_int("seq_len", seq_len)
        return math.ceil(seq_len / self.block_size)

    def max_degree(self, num_blocks: int) -> int:
        """The largest number of key blocks any query block attends in a sequence of
        ``num_blocks`` blocks (the compute budget of the pattern)."""
        return self.block_layout(num_blocks).max_degree

    def density(self, seq_len: int) -> float:
        """Fraction of the causal triangle (``seq_len (seq_len + 1) / 2`` query-key pairs)
        that the pattern computes, counted exactly at token level."""
        n = self.num_blocks(seq_len)
        lay = self.block_layout(n)
        bs = self.block_size
        sizes = np.minimum(bs, seq_len - np.arange(n) * bs)  # tokens per block
        idx = lay.kv_indices.numpy().astype(np.int64)
        valid = idx >= 0
        qb = np.arange(n)[:, None]
        kv_tok = np.where(valid, sizes[np.clip(idx, 0, None)], 0)
        off = np.where(valid & (idx != qb), kv_tok * sizes[:, None], 0).sum()
        # The diagonal block, where attended (LongNet without a rate-1 pair skips some rows).
        on_diag = (idx == qb).any(axis=1)
        diag = (sizes * (sizes + 1) // 2)[on_diag].sum()
        return float(off + diag) / (seq_len * (seq_len + 1) / 2)

    # ---------------------------------------------------------- derived: token level
    def mask_mod(self, b: Any, h: Any, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> Any:
        """FlexAttention ``mask_mod``: whether absolute position ``q_idx`` attends ``kv_idx``.

        Tensor ops only, so FlexAttention can compile it. Positions are absolute. Hand
        FlexAttention :meth:`mask_mod_for` rather than this bound method: FlexAttention counts
        ``self`` among the positional parameters and would take it for a ``score_mod``.
        """
        bs = self.block_size
        return (kv_idx <= q_idx) & self.block_rule(q_idx // bs, kv_idx // bs)

    def mask_mod_for(self, q_len: int, kv_len: int):
        """A ``mask_mod`` taking *local* query indices ``0..q_len-1`` aligned to the end of
        ``kv_len`` keys (FlexAttention's ``q_idx`` is local)."""
        _check_lengths(q_len, kv_len)
        offset = kv_len - q_len

        # Always a plain 4-argument function (also for offset 0): see mask_mod.
        def mask_mod(b, h, q_idx, kv_idx):
            return self.mask_mod(b, h, q_idx + offset, kv_idx)

        return mask_mod

    def dense_mask(self, q_len: int, kv_len: int | None = None) -> torch.Tensor:
        """``(q_len, kv_len)`` bool: True where the query attends the key. Queries are aligned
        to the end of the keys when ``q_len < kv_len``. Refused above 2^28 elements."""
        kv_len = q_len if kv_len is None else kv_len
        _check_lengths(q_len, kv_len)
        if q_len * kv_len > MAX_DENSE_ELEMENTS:
            raise ValueError(
                f"dense_mask({q_len}, {kv_len}) would hold {q_len * kv_len:,} elements; the "
                f"limit is {MAX_DENSE_ELEMENTS:,} (use block_layout for long sequences)"
            )
        bs = self.block_size
        nq = math.ceil(kv_len / bs)
        blocks = np.arange(nq)
        # Evaluate the rule once per block pair (numpy), then expand to tokens.
        rule = np.asarray(self.block_rule(blocks[:, None], blocks[None, :]), dtype=bool)
        allowed = rule & (blocks[None, :] <= blocks[:, None])
        qpos = np.arange(kv_len - q_len, kv_len)
        kpos = np.arange(kv_len)
        mask = allowed[qpos[:, None] // bs, kpos[None, :] // bs] & (kpos[None, :] <= qpos[:, None])
        return torch.from_numpy(mask)

    # ---------------------------------------------------------------------- misc
    def params(self) -> dict[str, Any]:
        """The pattern's parameters, as keyword arguments for :func:`powerattn.get_pattern`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def describe(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params().items())
        return f"{self.name}({args})"


def _check_lengths(q_len: int, kv_len: int) -> None:
    _check_positive_int("q_len", q_len)
    _check_positive_int("kv_len", kv_len)
    if q_len > kv_len:
        raise ValueError(
            f"q_len ({q_len}) > kv_len ({kv_len}): queries are aligned to the end of the "
            "keys, so there must be at least as many keys as queries"
        )
