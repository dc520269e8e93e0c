"""How much long-range copyable text does a corpus hold? A property of the text, not of a model.

Table 1's ceiling rule asks a full-attention model to gain >= 0.05 nats/token on the last
quarter of each 4096-token evaluation window (positions 3072..4095) from context more than
1024 tokens back: the whole window against only ``window[2048:]`` (``powerattn.eval.lm``:
``late_start``, ``late_nll_truncated``, ``keep = context // 4``). This script measures, with
no model, how often the text itself offers something to copy from that far context.

The statistic lives in :mod:`powerattn.eval.longrange` (its one home; ``powerattn eval corpus
--select-longrange`` uses it too); this script loads corpora, summarizes and plots.
For a corpus it cuts the held-out documents (``test.jsonl``; ``train.jsonl`` with ``:train``)
into the evaluation's windows (:func:`cut_windows`, with ``powerattn.eval.lm.window_starts``:
each document tokenized with the committed BPE after ``<bos>``, consecutive non-overlapping
windows of ``--context`` tokens from the document's start, a shorter tail dropped, at most
``--max-windows`` taken round-robin over documents in file order). For every predicted token
``x[p]`` of the late region (``start <= p < context``, ``start = 3 * context // 4``; the token
is predicted from ``x[..p-1]``, so ``t = p - 1`` is the last visible position) and each n-gram
length ``n``:

* an *induction/copy opportunity* at ``t``: the n-gram ``x[t-n+1..t]`` occurred earlier, ending
  at some ``j < t``, followed by the same token (``x[j+1] == x[t+1] == x[p]``);
* ``near``: some such ``j >= cut`` (``cut = start - keep = 2048``): the truncated input
  ``window[cut:]`` still holds the continuation ``x[j+1]`` and the end of the n-gram (an
  occurrence straddling ``cut`` counts as near);
* ``far_only``: such ``j`` exist and all have ``j < cut``: only the whole window sees one;
* ``none``: no such ``j``.

Also the *far-only vocabulary* rate: the share of late tokens ``x[p]`` whose id occurs in
``x[0..cut-1]`` but not in ``x[cut..p-1]`` (no n-gram needed).

Each rate is the mean over windows of the per-window share of late tokens, with a 95% bootstrap
interval that resamples documents (a document's windows together; ``--boot`` resamples, fixed
seed). Matches are found by a 64-bit polynomial hash of the (n+1)-gram ``x[t-n+1..t+1]`` and
checked token by token (an exact ``np.unique`` fallback if a hash ever collides).

These are counts of opportunities in the text. A far-only opportunity is not a gain: a model
may predict the token from the near context anyway, or fail to copy. The numbers bound
nothing by themselves; they compare how much far-back copyable text corpora offer.

Run (from the repository root; results/lm/corpus-longrange/README.md has the exact commands)::

    PYTHONPATH=src .venv/bin/python scripts/corpus_longrange.py \
        --corpus python=/tmp/corp/python --corpus shakespeare=/tmp/corp/shakespeare \
        --corpus shakespeare-train=/tmp/corp/shakespeare:train \
        --json out.json --plot out.png

``--corpus NAME=DIR[:SPLIT]`` is repeatable; SPLIT (``test`` or ``train``) overrides
``--split`` (default ``test``) for that corpus. A corpus directory is built by
``powerattn eval corpus --out DIR --source ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from powerattn.eval.longrange import (  # the statistic's one home; re-exported for the tests
    BOOT,
    CONTEXT,
    FAR_ONLY,
    LABELS,
    NEAR,
    NONE,
    NS,
    SEED,
    bootstrap_mean,
    classify_window,
    cut_windows,
    previous_occurrence,
    regions,
    window_rates,
)

__all__ = [
    "BOOT",
    "CONTEXT",
    "FAR_ONLY",
    "LABELS",
    "NEAR",
    "NONE",
    "NS",
    "SEED",
    "bootstrap_mean",
    "classify_window",
    "cut_windows",
    "previous_occurrence",
    "regions",
    "window_rates",
]

MAX_WINDOWS = 200


# ---------------------------------------------------------------------------- windows


def load_windows(
    corpus_dir: Path, split: str, context: int, max_windows: int, tokenizer: Any
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Windows of a corpus split and counts. Documents are tokenized in file order in batches,
    stopping once ``max_windows`` documents have a full window (the round-robin then takes
    only first windows, so the documents after them cannot change the result)."""
    path = corpus_dir / f"{split}.jsonl"
    if not path.is_file():
        raise SystemExit(
            f"{path} does not exist; build it: powerattn eval corpus --out {corpus_dir}"
        )
    with open(path) as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    docs: list[list[int]] = []
    chars = 0
    full = 0
    for i in range(0, len(texts), 64):
        batch = texts[i : i + 64]
        for text, ids in zip(batch, tokenizer.encode_batch(batch), strict=True):
            docs.append([tokenizer.bos_id, *ids])
            chars += len(text)
            full += len(ids) + 1 >= context
        if full >= max_windows:
            break
    windows, doc_of = cut_windows(docs, context, max_windows)
    tokens = sum(len(d) for d in docs)
    info = {
        "split": split,
        "documents_in_split": len(texts),
        "documents_tokenized": len(docs),
        "documents_with_a_window": int(full),
        "documents_used": int(len(np.unique(doc_of))),
        "windows": int(len(windows)),
        "tokens_tokenized": int(tokens),
        "chars_per_token": round(chars / max(tokens - len(docs), 1), 3),
    }
    return windows, doc_of, info


def _manifest_counts(corpus_dir: Path) -> dict[str, Any]:
    path = corpus_dir / "manifest.json"
    if not path.is_file():
        return {}
    m = json.loads(path.read_text())
    keys = ("sources", "min_chars", "max_mb", "test_permille", "counts", "documents", "chars")
    return {k: m[k] for k in keys if k in m}


def analyse(
    name: str,
    corpus_dir: Path,
    split: str,
    tokenizer: Any,
    ns: Sequence[int],
    context: int,
    keep: int | None,
    max_windows: int,
    boot: int,
) -> dict[str, Any]:
    """All numbers of one corpus: per-window rates, their bootstrap summaries, counts."""
    start, cut = regions(context, keep)
    windows, doc_of, info = load_windows(corpus_dir, split, context, max_windows, tokenizer)
    if len(windows) == 0:
        raise SystemExit(f"{name}: no {split} document of {corpus_dir} has {context} tokens")
    per_window = [window_rates(w, ns, start, cut) for w in windows]
    keys = list(per_window[0])
    values = {k: np.asarray([r[k] for r in per_window]) for k in keys}
    return {
        "name": name,
        "corpus": str(corpus_dir),
        **info,
        "manifest": _manifest_counts(corpus_dir),
        "rates": {k: bootstrap_mean(values[k], doc_of, boot) for k in keys},
        "per_window": {"document": doc_of.tolist(), **{k: v.tolist() for k, v in values.items()}},
    }


# ---------------------------------------------------------------------------- output


def _fmt(r: dict[str, float]) -> str:
    return f"{100 * r['mean']:6.2f} [{100 * r['lo']:5.2f},{100 * r['hi']:6.2f}]"


def table(results: Sequence[dict[str, Any]], ns: Sequence[int]) -> str:
    """A text table: percent of late tokens, mean over windows [95% bootstrap interval]."""
    head = (
        f"{'corpus':<20} {'split':<5} {'win':>4} {'docs':>4} {'n':>3}  "
        f"{'near %':>22}  {'far-only %':>22}  {'none %':>22}"
    )
    lines = [head, "-" * len(head)]
    for res in results:
        for n in ns:
            r = res["rates"]
            lines.append(
                f"{res['name']:<20} {res['split']:<5} {res['windows']:>4} "
                f"{res['documents_used']:>4} {n:>3}  {_fmt(r[f'n{n}_near']):>22}  "
                f"{_fmt(r[f'n{n}_far_only']):>22}  {_fmt(r[f'n{n}_none']):>22}"
            )
        lines.append(
            f"{res['name']:<20} {res['split']:<5} {res['windows']:>4} "
            f"{res['documents_used']:>4} {'voc':>3}  {'far-only vocabulary:':>22}  "
            f"{_fmt(res['rates']['far_vocab']):>22}"
        )
    return "\n".join(lines)


def _bar_fmt(v: float) -> str:
    return f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def plot(results: Sequence[dict[str, Any]], ns: Sequence[int], path: Path, title: str) -> None:
    """Bars: far-only (left) and near (right) opportunity rates by n, one bar per corpus, with
    95% bootstrap intervals over documents."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4))
    width = 0.8 / len(results)
    groups = [f"n={n}" for n in ns] + ["far-only\nvocabulary"]
    for ax, kind, label in (
        (axes[0], "far_only", "far-only (every match > 1024 tokens back)"),
        (axes[1], "near", "near (a match within the kept 1024 tokens)"),
    ):
        for i, res in enumerate(results):
            keys = [f"n{n}_{kind}" for n in ns] + (["far_vocab"] if kind == "far_only" else [])
            r = [res["rates"][k] for k in keys]
            mean = np.array([100 * v["mean"] for v in r])
            err = np.array(
                [[100 * (v["mean"] - v["lo"]) for v in r], [100 * (v["hi"] - v["mean"]) for v in r]]
            )
            xs = np.arange(len(keys)) + (i - (len(results) - 1) / 2) * width
            bars = ax.bar(
                xs,
                mean,
                width,
                yerr=err,
                capsize=3,
                label=f"{res['name']} ({res['split']}, {res['windows']} windows)",
            )
            ax.bar_label(bars, fmt=_bar_fmt, fontsize=7, padding=2)
        ax.set_xticks(np.arange(len(groups) if kind == "far_only" else len(ns)))
        ax.set_xticklabels(groups if kind == "far_only" else groups[: len(ns)])
        ax.set_ylabel("% of late-quarter tokens")
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(results), 3), fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1 + 0.03 * ((len(results) - 1) // 3), 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


# ---------------------------------------------------------------------------- main


def _parse_corpus(spec: str, default_split: str) -> tuple[str, Path, str]:
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise SystemExit(f"--corpus takes NAME=DIR[:SPLIT], got {spec!r}")
    split = default_split
    head, colon, tail = rest.rpartition(":")
    if colon and tail in ("train", "test"):
        rest, split = head, tail
    return name, Path(rest), split


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", action="append", required=True, help="NAME=DIR[:SPLIT]")
    ap.add_argument("--split", choices=("test", "train"), default="test")
    ap.add_argument("--n", type=int, nargs="+", default=list(NS), help="n-gram lengths")
    ap.add_argument("--context", type=int, default=CONTEXT)
    ap.add_argument("--keep", type=int, default=None, help="kept tokens (context // 4)")
    ap.add_argument("--max-windows", type=int, default=MAX_WINDOWS)
    ap.add_argument("--boot", type=int, default=BOOT, help="bootstrap resamples")
    ap.add_argument("--tokenizer", type=Path, default=None, help="BPE json (the committed one)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    args = ap.parse_args(argv)

    from powerattn.eval.bpe import DEFAULT_PATH, BPETokenizer

    tok_path = args.tokenizer or DEFAULT_PATH
    tokenizer = BPETokenizer(tok_path)
    start, cut = regions(args.context, args.keep)
    results = []
    for spec in args.corpus:
        name, corpus_dir, split = _parse_corpus(spec, args.split)
        res = analyse(
            name,
            corpus_dir,
            split,
            tokenizer,
            args.n,
            args.context,
            args.keep,
            args.max_windows,
            args.boot,
        )
        results.append(res)
        print(
            f"{name}: {res['windows']} windows from {res['documents_used']} documents "
            f"({split}), {res['chars_per_token']} chars/token",
            file=sys.stderr,
        )
    print(
        f"late region {start}..{args.context - 1}, truncated input window[{cut}:]; percent of "
        "late tokens, mean over windows [95% bootstrap interval over documents]"
    )
    print(table(results, args.n))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {
            "command": shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
            "tokenizer": str(Path(tok_path).name),
            "tokenizer_sha256": hashlib.sha256(Path(tok_path).read_bytes()).hexdigest(),
            "context": args.context,
            "late_start": start,
            "cut": cut,
            "ns": args.n,
            "max_windows": args.max_windows,
            "boot": args.boot,
            "seed": SEED,
            "definitions": {
                "near": "latest earlier (n+1)-gram match ends at j >= cut (continuation at j+1)",
                "far_only": "earlier matches exist, all with j < cut",
                "none": "no earlier match of the n-gram followed by the same token",
                "far_vocab": "x[p] occurs in x[:cut] and not in x[cut:p]",
            },
            "corpora": results,
        }
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    if args.plot:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        plot(
            results,
            args.n,
            args.plot,
            f"Copy opportunities in the last quarter of {args.context}-token windows "
            f"(positions {start}..{args.context - 1}); text statistics, no model",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
