"""Language models per pattern at equal budget, and their perplexity by position (Table 1).

Every run trains the same Llama (:func:`powerattn.training.model.build_model`, vocabulary of
the committed BPE) with :class:`powerattn.training.Trainer` on random windows of the corpus'
training split (:mod:`powerattn.training.lm_data`, ``loss_on="all"``), one stage at the
context length, for the same number of steps; only the attention pattern (at the equal budget
of :func:`powerattn.equal_budget`) and the seed differ. Each run directory holds the trainer's
files plus ``ppl.json``: the held-out documents cut into consecutive windows of ``context``
tokens, the summed negative log-likelihood per window and per position bucket.

Perplexity over all tokens is ``exp(total NLL / predicted tokens)``; per bucket the same over
the tokens whose position in their window falls in ``[lo, hi)`` (position 0 is never
predicted). ``summarize`` turns a directory of runs into ``summary.json`` (the issue's schema)
and ``details.json`` (per pattern: mean and range over seeds, and a paired bootstrap interval of
the gap to full attention over held-out documents).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..training.config import (
    ModelConfig,
    OptimConfig,
    PatternConfig,
    Stage,
    TaskConfig,
    TrainConfig,
)
from .bpe import DEFAULT_PATH, BPETokenizer
from .corpus import read_documents

PATTERNS = ["full", "sliding_window", "power", "stride_slash", "longnet", "dilated"]
PPL_FILE = "ppl.json"
DONE_FILE = "done.json"


@dataclass
class LMPreset:
    """Model and data of a campaign; ``steps`` is the default of every run."""

    model: ModelConfig
    context: int
    block_size: int
    batch_size: int
    steps: int
    optim: OptimConfig = field(default_factory=OptimConfig)
    bucket: int = 512  # width of the position buckets
    eval_windows: int = 256  # at most this many held-out windows
    eval_batch: int = 4


PRESETS: dict[str, LMPreset] = {
    # Seconds on a CPU: every code path, learns nothing.
    "tiny": LMPreset(
        model=ModelConfig(layers=2, hidden=32, heads=2, kv_heads=2, intermediate=64),
        context=320,  # a RULER training document needs >= 286 tokens
        block_size=16,
        batch_size=2,
        steps=3,
        optim=OptimConfig(warmup_steps=1),
        bucket=64,
        eval_windows=4,
        eval_batch=2,
    ),
    # The H200 campaign: ~28M parameters (7 layers so that the RULER hybrid can keep 2 of 7
    # full), 4096 tokens = 128 blocks of 32, 8 windows (32K tokens) per step (the float32
    # logits of a step take 1 GB: 12 runs share the GPU's memory).
    "gpu": LMPreset(
        model=ModelConfig(layers=7, hidden=512, heads=8, kv_heads=8, intermediate=1536),
        context=4096,
        block_size=32,
        batch_size=8,
        steps=1000,
        optim=OptimConfig(lr=1e-3, warmup_steps=100),
    ),
}


def run_name(pattern: str, seed: int, full_layers: list[int] = ()) -> str:
    hybrid = "-full" + "_".join(map(str, full_layers)) if full_layers else ""
    return f"{pattern}{hybrid}-s{seed}"


def train_config(
    preset: LMPreset,
    pattern: str,
    seed: int,
    steps: int | None = None,
    device: str = "auto",
    full_layers: list[int] = (),
) -> TrainConfig:
    """The :class:`TrainConfig` of one run (language modelling at ``preset.context``)."""
    steps = preset.steps if steps is None else steps
    return TrainConfig(
        model=dataclasses.replace(preset.model),
        pattern=PatternConfig(name=pattern, full_layers=list(full_layers)),
        task=TaskConfig(block_size=preset.block_size, digits=1),  # digits: unused (loss "all")
        optim=dataclasses.replace(
            preset.optim, warmup_steps=min(preset.optim.warmup_steps, max(steps // 2, 1))
        ),
        stages=[Stage(preset.context, steps)],
        batch_size=preset.batch_size,
        seed=seed,
        loss_on="all",
        checkpoint_every=max(min(200, steps), 1),
        log_every=max(min(10, steps), 1),
        device=device,
    )


# ---------------------------------------------------------------------------- tokens


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def tokenize_corpus(corpus_dir: str | Path, tokenizer_path: str | Path = DEFAULT_PATH) -> Path:
    """Token arrays of a built corpus, cached in ``CORPUS/tokens-<tokenizer hash>/``:
    ``train.npy`` (the training documents concatenated, each after ``<bos>``), ``test.npy``
    and ``test_offsets.npy`` (start of each held-out document, and the end). Returns the
    directory."""
    tok = BPETokenizer(tokenizer_path)
    out = Path(corpus_dir) / f"tokens-{_file_hash(tok.path)}"
    if (out / "test_offsets.npy").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.int32
    for split in ("train", "test"):
        docs = read_documents(corpus_dir, split)
        pieces, offsets = [], [0]
        for i in range(0, len(docs), 256):  # bounded memory for a large corpus
            for ids in tok.encode_batch([d["text"] for d in docs[i : i + 256]]):
                pieces.append(np.asarray([tok.bos_id, *ids], dtype=dtype))
                offsets.append(offsets[-1] + len(ids) + 1)
        np.save(out / f"{split}.npy", np.concatenate(pieces))
        if split == "test":
            np.save(out / "test_offsets.npy", np.asarray(offsets, dtype=np.int64))
    return out


def eval_windows(tokens_dir: Path, context: int, max_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """``(windows (n, context) int64, document index of each window)``: consecutive windows
    of ``context`` tokens from the start of each held-out document (a shorter tail is
    dropped), documents in corpus order (by hash), at most ``max_windows`` taken round-robin
    over documents so that long documents do not dominate."""
    tokens = np.load(tokens_dir / "test.npy", mmap_mode="r")
    offsets = np.load(tokens_dir / "test_offsets.npy")
    per_doc = [
        [(d, s) for s in range(a, b - context + 1, context)]
        for d, (a, b) in enumerate(zip(offsets[:-1], offsets[1:], strict=True))
    ]
    picked: list[tuple[int, int]] = []
    depth = 0
    while len(picked) < max_windows and any(depth < len(w) for w in per_doc):
        picked.extend(w[depth] for w in per_doc if depth < len(w))
        depth += 1
    picked = picked[:max_windows]
    if not picked:
        raise ValueError(
            f"no held-out document has {context} tokens; build the corpus with a larger "
            "--min-chars or use a shorter context"
        )
    windows = np.stack([np.asarray(tokens[s : s + context], dtype=np.int64) for _, s in picked])
    return windows, np.asarray([d for d, _ in picked])


@torch.no_grad()
def window_nll(
    model: torch.nn.Module, windows: np.ndarray, bucket: int, batch_size: int = 4
) -> np.ndarray:
    """``(n, buckets)`` float64: the summed next-token NLL of each window's tokens at positions
    ``[k * bucket, (k + 1) * bucket)`` (the token at position 0 is not predicted)."""
    device = next(model.parameters()).device
    n, context = windows.shape
    buckets = -(-context // bucket)
    bucket_of = torch.arange(1, context, device=device) // bucket  # (context - 1,)
    was_training = model.training
    model.eval()
    out = np.zeros((n, buckets))
    for i in range(0, n, batch_size):
        ids = torch.from_numpy(windows[i : i + batch_size]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(ids).logits
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
        )  # (b, context - 1)
        sums = torch.zeros(ids.shape[0], buckets, device=device, dtype=torch.float64)
        sums.index_add_(1, bucket_of, nll.double())
        out[i : i + ids.shape[0]] = sums.cpu().numpy()
    model.train(was_training)
    return out


def bucket_counts(context: int, bucket: int) -> np.ndarray:
    """Predicted tokens per position bucket of one window (positions 1..context-1)."""
    return np.bincount(np.arange(1, context) // bucket, minlength=-(-context // bucket))


# ---------------------------------------------------------------------------- runs


def run_one(
    corpus: str,
    out: str,
    preset: str,
    pattern: str,
    seed: int,
    steps: int | None = None,
    device: str = "auto",
    full_layers: list[int] = (),
    stop_time: float | None = None,
    progress: bool = False,
    tokenizer: str = str(DEFAULT_PATH),
) -> dict[str, Any]:
    """Train (resuming) and evaluate one run into ``out/NAME``; returns its ``ppl.json``."""
    from ..training.lm_data import lm_batch_fn
    from ..training.trainer import Trainer

    p = PRESETS[preset]
    cfg = train_config(p, pattern, seed, steps, device, list(full_layers))
    run_dir = Path(out) / run_name(pattern, seed, list(full_layers))
    tokens_dir = tokenize_corpus(corpus, tokenizer)
    train_tokens = np.load(tokens_dir / "train.npy", mmap_mode="r")
    tok = BPETokenizer(tokenizer)
    trainer = Trainer(
        cfg, run_dir, progress=progress, tokenizer=tok, batch_fn=lm_batch_fn(train_tokens)
    )
    t0 = time.time()
    last = trainer.train(stop_time=stop_time)
    train_s = time.time() - t0
    if trainer.step < cfg.total_steps:
        trainer.save_checkpoint()
    windows, docs = eval_windows(tokens_dir, p.context, p.eval_windows)
    nll = window_nll(trainer.model, windows, p.bucket, p.eval_batch)
    result = {
        "name": run_dir.name,
        "pattern": pattern,
        "pattern_desc": trainer.pattern.describe(),
        "full_layers": list(full_layers),
        "seed": seed,
        "preset": preset,
        "context": p.context,
        "bucket": p.bucket,
        "steps": trainer.step,
        "steps_planned": cfg.total_steps,
        "complete": trainer.step >= cfg.total_steps,
        "tokens_trained": trainer.step * cfg.batch_size * p.context,
        "parameters": sum(x.numel() for x in trainer.model.parameters()),
        "train_s_this_call": train_s,
        "tokens_per_s": last.get("tokens_per_s"),  # this call's, at its last logged step
        "tokenizer": tok.path.name,
        "tokenizer_sha": _file_hash(tok.path),
        "corpus_test_docs": int(len(np.load(tokens_dir / "test_offsets.npy")) - 1),
        "window_docs": docs.tolist(),
        "window_nll": nll.tolist(),
        "bucket_tokens": bucket_counts(p.context, p.bucket).tolist(),
    }
    tmp = run_dir / (PPL_FILE + ".tmp")
    tmp.write_text(json.dumps(result) + "\n")
    os.replace(tmp, run_dir / PPL_FILE)
    return result


# ---------------------------------------------------------------------------- summary


def load_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Every ``ppl.json`` below ``runs_dir`` (one level), sorted by pattern and seed."""
    runs = [json.loads(p.read_text()) for p in sorted(Path(runs_dir).glob(f"*/{PPL_FILE}"))]
    if not runs:
        raise ValueError(f"no {PPL_FILE} under {runs_dir}/*/; train runs first (eval ppl)")
    return sorted(runs, key=lambda r: (r["pattern"], r["full_layers"], r["seed"]))


def run_ppl(run: dict[str, Any]) -> tuple[float, list[list[float]]]:
    """``(perplexity over all tokens, [[lo, hi, ppl], ...] per position bucket)``."""
    nll = np.asarray(run["window_nll"])  # (windows, buckets)
    counts = np.asarray(run["bucket_tokens"]) * nll.shape[0]
    total = float(np.exp(nll.sum() / counts.sum()))
    ctx, b = run["context"], run["bucket"]
    by_pos = [
        [k * b, min((k + 1) * b, ctx), float(np.exp(nll[:, k].sum() / counts[k]))]
        for k in range(nll.shape[1])
    ]
    return total, by_pos


def _paired_gap(run: dict, ref: dict, draws: int = 2000, seed: int = 0) -> dict[str, float]:
    """ln-ppl gap ``run - ref`` on the same windows, with a 95 % bootstrap interval over
    held-out documents (evaluation-sample noise only, not seed noise)."""
    a, b = np.asarray(run["window_nll"]).sum(1), np.asarray(ref["window_nll"]).sum(1)
    if a.shape != b.shape or run["window_docs"] != ref["window_docs"]:
        raise ValueError(f"runs {run['name']} and {ref['name']} were evaluated on other windows")
    docs = np.asarray(run["window_docs"])
    ids = np.unique(docs)
    per_doc = np.stack([[a[docs == d].sum(), b[docs == d].sum(), (docs == d).sum()] for d in ids])
    tokens_per_window = sum(run["bucket_tokens"])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), size=(draws, len(ids)))
    s = per_doc[pick].sum(1)  # (draws, 3)
    boot = (s[:, 0] - s[:, 1]) / (s[:, 2] * tokens_per_window)
    gap = (a.sum() - b.sum()) / (a.size * tokens_per_window)
    return {
        "ln_ppl_gap": float(gap),
        "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
    }


def summarize(runs_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(summary, details)`` of the runs under ``runs_dir``.

    ``summary`` is the issue's schema: ``{"context", "runs": [{"pattern", "seed", "ppl",
    "ppl_by_position", "tokens_trained"}]}`` (a hybrid's pattern is named ``power-full3_6``).
    ``details``: per pattern the mean, min and max over seeds of the perplexity overall and per
    bucket, the largest seed spread of any pattern (the noise floor a gap must clear), and per
    run the paired gap in ln-perplexity to full attention of the same seed with a bootstrap
    interval over documents.
    """
    runs = load_runs(runs_dir)
    contexts = {r["context"] for r in runs}
    if len(contexts) != 1:
        raise ValueError(f"runs of different contexts {sorted(contexts)} under {runs_dir}")
    rows = []
    for r in runs:
        total, by_pos = run_ppl(r)
        label = r["pattern"] + (
            "-full" + "_".join(map(str, r["full_layers"])) if r["full_layers"] else ""
        )
        rows.append(
            {
                "pattern": label,
                "seed": r["seed"],
                "ppl": round(total, 4),
                "ppl_by_position": [[lo, hi, round(p, 4)] for lo, hi, p in by_pos],
                "tokens_trained": r["tokens_trained"],
            }
        )
    summary = {"context": contexts.pop(), "runs": rows}
    per_pattern: dict[str, Any] = {}

    def order(label: str) -> tuple[int, str]:  # full first, then the paper's order
        base = label.split("-full")[0]
        return (PATTERNS.index(base) if base in PATTERNS else len(PATTERNS), label)

    for label in sorted({row["pattern"] for row in rows}, key=order):
        mine = [row for row in rows if row["pattern"] == label]
        ppl = np.asarray([row["ppl"] for row in mine])
        by_pos = np.asarray([[p for _, _, p in row["ppl_by_position"]] for row in mine])
        per_pattern[label] = {
            "seeds": [row["seed"] for row in mine],
            "ppl_mean": float(ppl.mean()),
            "ppl_min": float(ppl.min()),
            "ppl_max": float(ppl.max()),
            "by_position_mean": by_pos.mean(0).round(4).tolist(),
            "by_position_min": by_pos.min(0).round(4).tolist(),
            "by_position_max": by_pos.max(0).round(4).tolist(),
        }
    spreads = [v["ppl_max"] - v["ppl_min"] for v in per_pattern.values() if len(v["seeds"]) > 1]
    fulls = {r["seed"]: r for r in runs if r["pattern"] == "full" and not r["full_layers"]}
    gaps = {}
    for r in runs:
        ref = fulls.get(r["seed"])
        if ref is not None and r is not ref:
            gaps[r["name"]] = _paired_gap(r, ref)
    details = {
        "context": summary["context"],
        "patterns": per_pattern,
        "max_seed_spread_ppl": max(spreads) if spreads else None,
        "gap_to_full_same_seed": gaps,
        "incomplete_runs": [r["name"] for r in runs if not r.get("complete", True)],
        "steps": {r["name"]: [r["steps"], r["steps_planned"]] for r in runs},
        "tokens_per_s": {r["name"]: r.get("tokens_per_s") for r in runs},
    }
    return summary, details


def summary_table(summary: dict[str, Any], details: dict[str, Any]) -> str:
    """Perplexity per pattern (mean [min, max] over seeds), overall and per position bucket."""
    first = summary["runs"][0]["ppl_by_position"]
    heads = [f"{lo}-{hi}" for lo, hi, _ in first]
    lines = [f"{'pattern':<22}{'ppl (mean [min,max])':<26}" + "".join(f"{h:>11}" for h in heads)]
    for label, v in details["patterns"].items():
        rng = f"{v['ppl_mean']:.3f} [{v['ppl_min']:.3f},{v['ppl_max']:.3f}]"
        lines.append(
            f"{label:<22}{rng:<26}" + "".join(f"{x:>11.3f}" for x in v["by_position_mean"])
        )
    return "\n".join(lines)
