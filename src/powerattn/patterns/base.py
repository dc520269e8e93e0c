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
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..validate import check_int

# Dense masks above this many elements are refused: a 64K x 64K bool matrix is 4 GiB.
MAX_DENSE_ELEMENTS = 1 << 28
# Block layouts above this many (query block, candidate) entries are refused: the int64
# working arrays alone would take GiBs (full attention at 16M tokens: 32 GiB).
MAX_LAYOUT_ENTRIES = 1 << 27
# Query blocks probed at construction for "attends nothing at all".
_PROBE_BLOCKS = 64


def _check_positive_int(name: str, value: Any) -> None:
    check_int(name, value, 1)


def _check_nonnegative_int(name: str, value: Any) -> None:
    check_int(name, value, 0)


def param(
    default: Any,
    help: str,
    *,
    minimum: int | None = None,
    parse: Callable[[str], Any] | None = None,
    show: Callable[[Any], str] | None = None,
) -> Any:
    """Declare a pattern parameter: a dataclass field carrying what every tool needs.

    Args:
        default: the paper's setting.
        help: one line for ``--help`` and the docs (``powerattn analyze --help``).
        minimum: integer parameters: the smallest valid value, checked at construction (bools
            and non-integers refused) and used for the command-line flag's type.
        parse, show: other values: text -> value for the command line (errors as
            ``argparse.ArgumentTypeError``) and value -> the same text, for tables.
    """
    meta = {"help": help, "minimum": minimum, "parse": parse, "show": show}
    return dataclasses.field(default=default, metadata=meta)


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


@dataclass(frozen=True)
class Pattern:
    """Base class of a block-sparse causal attention pattern.

    A pattern is one frozen dataclass (see ``docs/patterns.md``, "Adding a pattern"). It sets
    ``name``, declares its parameters with :func:`param` (help text and bounds: the command
    line, the docs and the checks read them), implements :meth:`block_rule` (the definition)
    and ``_candidates`` (a vectorised superset of the allowed key blocks), and may say how to
    tune itself to a compute budget (:meth:`at_budget`). Validation beyond the declared bounds
    goes in ``_check``; ``__post_init__`` then refuses a pattern that attends nothing.
    """

    name: ClassVar[str] = ""
    #: Colour of the pattern in every figure of the project.
    color: ClassVar[str] = "#17becf"
    #: Part of the paper's comparison: the experiments train every main pattern by default.
    main: ClassVar[bool] = False
    #: The pattern whose degree at its default setting is the default budget (power).
    defines_budget: ClassVar[bool] = False
    #: Attends every earlier block (full attention): the ceiling of a comparison, drawn in
    #: coverage curves but not as a reachability map.
    ceiling: ClassVar[bool] = False
    #: Small parameters (block size excluded) under which the pattern differs from full
    #: attention within a few blocks: the operator tests run every pattern with them.
    small_params: ClassVar[dict[str, Any]] = {}
    #: How :meth:`at_budget` sets the pattern, in a few words (``powerattn compare`` says it
    #: when the pattern ends over the budget).
    budget_rule: ClassVar[str] = "keeps its default setting (no budget rule)"

    block_size: int = param(256, "tokens per block", minimum=1)

    def __post_init__(self) -> None:
        _check_positive_int("block_size", self.block_size)  # even if a subclass redeclares it
        for f in dataclasses.fields(self):
            if f.metadata.get("minimum") is not None:
                check_int(f.name, getattr(self, f.name), f.metadata["minimum"])
        self._check()
        # A pattern that attends nothing would give all-zero outputs and an analysis of
        # nothing: refuse it here (rows without keys remain possible, e.g. LongNet's holes).
        blocks = np.arange(_PROBE_BLOCKS)
        qb, kb = blocks[:, None], blocks[None, :]
        if not (np.asarray(self.block_rule(qb, kb), dtype=bool) & (kb <= qb)).any():
            raise ValueError(
                f"{self.describe()} attends no key block at all; give it something to attend "
                "(e.g. window >= 1 or sink >= 1)"
            )
        # The pattern as one string (name and parameters), for interfaces that take only
        # primitives (a custom op's arguments). Set once here, a plain attribute: compiled
        # code reads it as a constant (torch 2.11's dynamo cannot pass a frozen dataclass to
        # a function it folds into a constant).
        object.__setattr__(self, "spec", json.dumps({"name": self.name, **self.params()}))

    def _check(self) -> None:
        """Checks beyond the declared bounds (relations between parameters); may normalise
        values with ``object.__setattr__`` (the dataclass is frozen)."""

    # -------------------------------------------------------------- what tools ask
    @classmethod
    def at_budget(cls, budget: int, num_blocks: int, block_size: int) -> Pattern:
        """The setting compared at ``budget`` key blocks per query block (the largest
        :meth:`max_degree` allowed) over ``num_blocks`` blocks of ``block_size`` tokens.

        Patterns tune one knob to the largest value that fits (see :func:`largest_fitting`);
        one that cannot fit returns its closest setting, and the caller compares degrees.
        Default: the pattern's defaults (nothing to tune)."""
        return cls(block_size=block_size)

    @classmethod
    def random_params(cls, rng: np.random.Generator) -> dict[str, Any]:
        """Random valid parameters (block size excluded), small enough for dense checks: the
        pattern tests draw from it. Default: every integer parameter from
        ``[minimum, minimum + 8]``, redrawn until the constructor accepts them."""
        fields = [f for f in dataclasses.fields(cls) if f.name != "block_size"]
        for _ in range(100):
            params = {
                f.name: int(rng.integers(f.metadata["minimum"], f.metadata["minimum"] + 9))
                for f in fields
                if f.metadata.get("minimum") is not None
            }
            try:
                cls(**params)
            except ValueError:
                continue
            return params
        return {}

    def decode_closed_form(self) -> tuple[int, int | None, bool] | None:
        """``(sink, window, powers_of_two)`` when a query block's key blocks are exactly the
        first ``sink`` blocks, the distances ``0 .. window - 1`` (``None``: every earlier
        block) and, with ``powers_of_two``, the distances ``1, 2, 4, ...``; the decode
        kernel then enumerates them without a table. ``None`` (the default): no such form.
        """
        return None

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
        _check_layout_size(self, num_q_blocks, cand.shape[1])
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


def _check_layout_size(pattern: Pattern, num_q_blocks: int, width: int) -> None:
    if num_q_blocks * width > MAX_LAYOUT_ENTRIES:
        raise ValueError(
            f"the block layout of {pattern.describe()} over {num_q_blocks:,} query blocks "
            f"would hold {num_q_blocks * width:,} entries; the limit is "
            f"{MAX_LAYOUT_ENTRIES:,}: use a shorter sequence or a larger block_size"
        )


def _check_lengths(q_len: int, kv_len: int) -> None:
    _check_positive_int("q_len", q_len)
    _check_positive_int("kv_len", kv_len)
    if q_len > kv_len:
        raise ValueError(
            f"q_len ({q_len}) > kv_len ({kv_len}): queries are aligned to the end of the "
            "keys, so there must be at least as many keys as queries"
        )


def largest_fitting(make: Callable[[int], Pattern], lo: int, hi: int, budget: int, num_blocks: int):
    """``make(knob)`` for the largest knob in ``[lo, hi]`` whose degree over ``num_blocks``
    blocks is at most ``budget`` (the degree must not decrease as the knob grows; search a
    negated knob for one that shrinks the pattern); ``make(lo)`` if none fits. Binary search:
    O(log(hi - lo)) layouts."""
    if make(lo).max_degree(num_blocks) > budget:
        return make(lo)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if make(mid).max_degree(num_blocks) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return make(lo)
