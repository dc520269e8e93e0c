"""Long-range copy opportunities in token windows: a property of the text, not of a model.

Table 1's ceiling rule asks a full-attention model to gain >= 0.05 nats/token on the last
quarter of each 4096-token evaluation window (positions 3072..4095) from context more than
1024 tokens back: the whole window against only ``window[2048:]`` (``powerattn.eval.lm``:
``late_start``, ``late_nll_truncated``, ``keep = context // 4``). This module measures, with no
model, how often the text itself offers something to copy from that far context. It is the
one home of the statistic: ``scripts/corpus_longrange.py`` (corpus summaries with bootstrap
intervals) and ``powerattn eval corpus --select-longrange`` (:func:`document_score`, a
per-document selection) both use it.

Windows are cut as the evaluation cuts them (:func:`cut_windows`, with
``powerattn.eval.lm.window_starts``): each document tokenized with the committed BPE after
``<bos>``, consecutive non-overlapping windows of ``context`` tokens from the document's start,
a shorter tail dropped. For every predicted token ``x[p]`` of the late region (``start <= p <
context``, ``start = 3 * context // 4``; the token is predicted from ``x[..p-1]``, so ``t = p -
1`` is the last visible position) and each n-gram length ``n``:

* an *induction/copy opportunity* at ``t``: the n-gram ``x[t-n+1..t]`` occurred earlier, ending
  at some ``j < t``, followed by the same token (``x[j+1] == x[t+1] == x[p]``);
* ``near``: some such ``j >= cut`` (``cut = start - keep = 2048``): the truncated input
  ``window[cut:]`` still holds the continuation ``x[j+1]`` and the end of the n-gram (an
  occurrence straddling ``cut`` counts as near);
* ``far_only``: such ``j`` exist and all have ``j < cut``: only the whole window sees one;
* ``none``: no such ``j``.

Also the *far-only vocabulary* rate: the share of late tokens ``x[p]`` whose id occurs in
``x[0..cut-1]`` but not in ``x[cut..p-1]`` (no n-gram needed). Matches are found by a 64-bit
polynomial hash of the (n+1)-gram ``x[t-n+1..t+1]`` and checked token by token (an exact
``np.unique`` fallback if a hash ever collides).

These are counts of opportunities in the text. A far-only opportunity is not a gain: a model
may predict the token from the near context anyway, or fail to copy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

CONTEXT = 4096
NS = (4, 8, 16)
SELECT_N = 8  # the n-gram length of the per-document selection score
BOOT = 2000
SEED = 0
NONE, NEAR, FAR_ONLY = 0, 1, 2
LABELS = {NONE: "none", NEAR: "near", FAR_ONLY: "far_only"}
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier; arithmetic wraps mod 2**64


# ---------------------------------------------------------------------------- core


def regions(context: int, keep: int | None = None) -> tuple[int, int]:
    """``(start, cut)``: the late region starts at ``start = 3 * context // 4`` (the
    evaluation's ``late_start`` when its buckets tile the context) and the truncated input is
    ``window[cut:]``, ``cut = start - keep`` (``keep`` defaults to ``context // 4``)."""
    start = 3 * context // 4
    keep = context // 4 if keep is None else keep
    if not 0 < keep <= start < context:
        raise ValueError(f"need 0 < keep <= start < context, got {keep}, {start}, {context}")
    return start, start - keep


def _previous_equal(keys: np.ndarray) -> np.ndarray:
    """For each index ``i``, the largest ``k < i`` with ``keys[k] == keys[i]``, or -1."""
    order = np.lexsort((np.arange(len(keys)), keys))  # by key, then by position
    prev = np.full(len(keys), -1, dtype=np.int64)
    same = keys[order[1:]] == keys[order[:-1]]
    prev[order[1:][same]] = order[:-1][same]
    return prev


def _gram_hash(x: np.ndarray, m: int) -> np.ndarray:
    """64-bit polynomial hash of each ``m``-gram of ``x``: entry ``i`` hashes ``x[i..i+m-1]``."""
    xs = x.astype(np.uint64) + np.uint64(1)
    h = np.zeros(len(x) - m + 1, dtype=np.uint64)
    for k in range(m):
        h = h * _BASE + xs[k : len(x) - m + 1 + k]
    return h


def previous_occurrence(x: np.ndarray, n: int) -> np.ndarray:
    """``(len(x),)`` int64: for each position ``p``, the largest ``e < p`` with
    ``x[e-n..e] == x[p-n..p]`` (the n-gram before ``p`` followed by ``x[p]`` occurred before,
    its continuation at ``e``), or -1 (also for ``p < n``). Exact: hash matches are checked."""
    x = np.asarray(x, dtype=np.int64)
    out = np.full(len(x), -1, dtype=np.int64)
    m = n + 1
    if len(x) < m:
        return out
    prev = _previous_equal(_gram_hash(x, m))  # indices into grams: gram i ends at i + n
    grams = np.lib.stride_tricks.sliding_window_view(x, m)
    has = np.flatnonzero(prev >= 0)
    if not np.array_equal(grams[has], grams[prev[has]]):  # a hash collision: exact ids
        _, ids = np.unique(grams, axis=0, return_inverse=True)
        prev = _previous_equal(ids.reshape(-1))
    out[n:] = np.where(prev >= 0, prev + n, -1)
    return out


def classify_window(
    window: np.ndarray,
    ns: Iterable[int] = NS,
    start: int = 3072,
    cut: int = 2048,
    vocab: bool = True,
) -> dict[str, np.ndarray]:
    """Per predicted late position ``p`` (``start <= p < len(window)``): ``str(n)`` -> int8
    codes (:data:`NONE`, :data:`NEAR`, :data:`FAR_ONLY`) of the copy opportunity with n-grams of
    length ``n`` (see the module docstring: near iff the most recent earlier occurrence ends at
    ``j = e - 1 >= cut``), and ``"far_vocab"`` -> bool: ``x[p]`` occurs in ``x[:cut]`` but not
    in ``x[cut:p]`` (left out with ``vocab=False``)."""
    x = np.asarray(window, dtype=np.int64)
    if not 0 < cut <= start < len(x):
        raise ValueError(f"need 0 < cut <= start < len(window), got {cut}, {start}, {len(x)}")
    out: dict[str, np.ndarray] = {}
    for n in ns:
        if n < 1:
            raise ValueError(f"n-gram lengths must be >= 1, got {n}")
        e = previous_occurrence(x, n)[start:]  # continuation position of the latest match
        code = np.full(len(e), NONE, dtype=np.int8)
        code[e - 1 >= cut] = NEAR
        code[(e >= 0) & (e - 1 < cut)] = FAR_ONLY
        out[str(n)] = code
    if not vocab:
        return out
    prev_tok = previous_occurrence(x, 0)[start:]
    out["far_vocab"] = (prev_tok >= 0) & (prev_tok < cut)
    return out


def window_rates(
    window: np.ndarray, ns: Iterable[int] = NS, start: int = 3072, cut: int = 2048
) -> dict[str, float]:
    """The shares of late tokens of one window: ``n{n}_{none,near,far_only}`` and
    ``far_vocab``."""
    rates: dict[str, float] = {}
    for key, v in classify_window(window, ns, start, cut).items():
        if key == "far_vocab":
            rates[key] = float(v.mean())
        else:
            for code, label in LABELS.items():
                rates[f"n{key}_{label}"] = float((v == code).mean())
    return rates


def bootstrap_mean(
    values: np.ndarray, docs: np.ndarray, boot: int = BOOT, seed: int = SEED
) -> dict[str, float]:
    """Mean of per-window ``values`` and a 95% percentile interval over ``boot`` resamples of
    documents (with replacement; each drawn document brings all its windows)."""
    values = np.asarray(values, dtype=np.float64)
    _, doc_idx = np.unique(docs, return_inverse=True)
    sums = np.bincount(doc_idx, weights=values)
    counts = np.bincount(doc_idx).astype(np.float64)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(sums), size=(boot, len(sums)))
    means = sums[draw].sum(1) / counts[draw].sum(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(values.mean()), "lo": float(lo), "hi": float(hi)}


# ---------------------------------------------------------------------------- windows


def cut_windows(
    docs: Sequence[Sequence[int]], context: int, max_windows: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(windows (w, context) int64, document index of each)`` from token lists ``docs`` (each
    already starting with ``<bos>``), as ``powerattn.eval.lm.eval_windows`` cuts them:
    consecutive windows from each document's start, round-robin over documents in order."""
    from .lm import window_starts  # lazily: lm imports torch

    picked = window_starts([(0, len(ids)) for ids in docs], context, max_windows)
    if not picked:
        return np.zeros((0, context), dtype=np.int64), np.zeros(0, dtype=np.int64)
    windows = np.stack([np.asarray(docs[d][s : s + context], dtype=np.int64) for d, s in picked])
    return windows, np.asarray([d for d, _ in picked], dtype=np.int64)


# ---------------------------------------------------------------------------- per document


def far_only_share(
    window: np.ndarray, n: int = SELECT_N, start: int = 3072, cut: int = 2048
) -> float:
    """The share of late tokens of one window with a far-only copy opportunity of length
    ``n`` (``window_rates(window, (n,), start, cut)[f"n{n}_far_only"]``, without the rest)."""
    return float(
        (classify_window(window, (n,), start, cut, vocab=False)[str(n)] == FAR_ONLY).mean()
    )


def document_score(
    ids: Sequence[int] | np.ndarray,
    n: int = SELECT_N,
    context: int = CONTEXT,
    keep: int | None = None,
) -> float | None:
    """The far-only copy share of one document: the mean over all its evaluation windows
    (consecutive ``context``-token windows from its start, as :func:`cut_windows` cuts one
    document; every window has ``context - start`` late tokens, so this is also the pooled
    share of its late tokens) of :func:`far_only_share`. ``ids`` start with ``<bos>``.
    ``None`` for a document shorter than one window: it has no late region."""
    start, cut = regions(context, keep)
    x = np.asarray(ids, dtype=np.int64)
    shares = [
        far_only_share(x[s : s + context], n, start, cut)
        for s in range(0, len(x) - context + 1, context)
    ]
    return float(np.mean(shares)) if shares else None


def document_scores(
    texts: Sequence[str],
    tokenizer: Any = None,
    n: int = SELECT_N,
    context: int = CONTEXT,
    keep: int | None = None,
    batch: int = 64,
) -> list[float | None]:
    """:func:`document_score` of each text, tokenized after ``<bos>`` by ``tokenizer`` (a
    :class:`powerattn.eval.bpe.BPETokenizer`; the committed one by default) as
    ``powerattn.eval.lm.tokenize_corpus`` tokenizes a corpus."""
    if tokenizer is None:
        from .bpe import BPETokenizer

        tokenizer = BPETokenizer()
    out: list[float | None] = []
    for i in range(0, len(texts), batch):
        for ids in tokenizer.encode_batch(list(texts[i : i + batch])):
            out.append(document_score([tokenizer.bos_id, *ids], n, context, keep))
    return out


def top_fraction(
    scores: dict[str, float | None], fraction: float
) -> tuple[list[str], float | None]:
    """``(kept keys, threshold)``: the ``ceil(fraction * S)`` keys with the highest score of the
    ``S`` keys that have one (``None``: never kept), ties broken by key (ascending), and the
    lowest kept score. Nested: a larger ``fraction`` keeps a superset."""
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"the selected fraction must be in (0, 1], got {fraction!r}")
    scored = sorted((-s, k) for k, s in scores.items() if s is not None)
    k = math.ceil(fraction * len(scored) - 1e-9)
    kept = [key for _, key in scored[:k]]
    return kept, (-scored[k - 1][0] if k else None)


def summary(values: Iterable[float]) -> dict[str, float | int]:
    """Count, mean, quantiles (0, 10, 25, 50, 75, 90, 100 %) and the share of zeros."""
    v = np.asarray(list(values), dtype=np.float64)
    if not len(v):
        return {"count": 0}
    q = np.percentile(v, [0, 10, 25, 50, 75, 90, 100])
    names = ("min", "p10", "p25", "median", "p75", "p90", "max")
    return {
        "count": int(len(v)),
        "mean": round(float(v.mean()), 6),
        **{name: round(float(x), 6) for name, x in zip(names, q, strict=True)},
        "zero_share": round(float((v == 0).mean()), 4),
    }
