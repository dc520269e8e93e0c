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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..testing import FORWARD_FACTOR, check_close
from ..training.config import (
    ModelConfig,
    OptimConfig,
    PatternConfig,
    Stage,
    TaskConfig,
    TrainConfig,
    speed_options,
)
from .bpe import DEFAULT_PATH, BPETokenizer
from .corpus import read_documents

PATTERNS = ["full", "sliding_window", "power", "stride_slash", "longnet", "dilated"]
PPL_FILE = "ppl.json"
CHECK_WINDOWS = 2  # held-out windows of the backend check


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
    # full), 4096 tokens = 128 blocks of 32, 4 windows (16K tokens) per step: 12 runs share
    # the GPU's memory (about 6 GB of activations and float32 logits each). ``steps`` is the
    # one-call plan of scripts/gpu_eval.sh: 12 runs of 900 steps = 14.7M tokens each, ~365 s
    # of training at the 5.0e5 tokens/s that 12 runs measured together (session 5, whose 300
    # steps were far too few: full attention was the worst model).
    "gpu": LMPreset(
        model=ModelConfig(layers=7, hidden=512, heads=8, kv_heads=8, intermediate=1536),
        context=4096,
        block_size=32,
        batch_size=4,
        steps=900,
        optim=OptimConfig(lr=1e-3, warmup_steps=40),
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
    speed: Iterable[str] | None = None,
) -> TrainConfig:
    """The :class:`TrainConfig` of one run (language modelling at ``preset.context``), with
    the trainer speed options ``speed`` switched on (:func:`speed_options`)."""
    steps = preset.steps if steps is None else steps
    return TrainConfig(
        model=dataclasses.replace(preset.model),
        pattern=PatternConfig(name=pattern, full_layers=list(full_layers)),
        task=TaskConfig(block_size=preset.block_size, digits=1),  # digits: unused (loss "all")
        optim=dataclasses.replace(
            # Warm-up: the preset's, or a tenth of a shorter run.
            preset.optim,
            warmup_steps=min(preset.optim.warmup_steps, max(steps // 10, 1)),
        ),
        stages=[Stage(preset.context, steps)],
        batch_size=preset.batch_size,
        seed=seed,
        loss_on="all",
        checkpoint_every=max(min(200, steps), 1),
        log_every=max(min(10, steps), 1),
        device=device,
        **{name: True for name in speed_options(speed)},
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
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.int32
    for split in ("train", "test"):
        docs = read_documents(corpus_dir, split)
        out.mkdir(parents=True, exist_ok=True)  # only in a built corpus (not a missing one)
        pieces, offsets = [], [0]
        for i in range(0, len(docs), 256):  # bounded memory for a large corpus
            for ids in tok.encode_batch([d["text"] for d in docs[i : i + 256]]):
                pieces.append(np.asarray([tok.bos_id, *ids], dtype=dtype))
                offsets.append(offsets[-1] + len(ids) + 1)
        np.save(out / f"{split}.npy", np.concatenate(pieces))
        if split == "test":
            np.save(out / "test_offsets.npy", np.asarray(offsets, dtype=np.int64))
    return out


def window_starts(
    spans: Sequence[tuple[int, int]], context: int, max_windows: int
) -> list[tuple[int, int]]:
    """``(document index, start)`` of the evaluation windows of documents at ``spans``
    (``[start, end)`` each): consecutive windows of ``context`` tokens from each document's
    start (a shorter tail is dropped), at most ``max_windows`` taken round-robin over the
    documents in order, so that long documents do not dominate."""
    per_doc = [
        [(d, s) for s in range(a, b - context + 1, context)] for d, (a, b) in enumerate(spans)
    ]
    picked: list[tuple[int, int]] = []
    depth = 0
    while len(picked) < max_windows and any(depth < len(w) for w in per_doc):
        picked.extend(w[depth] for w in per_doc if depth < len(w))
        depth += 1
    return picked[:max_windows]


def eval_windows(tokens_dir: Path, context: int, max_windows: int) -> tuple[np.ndarray, np.ndarray]:
    """``(windows (n, context) int64, document index of each window)`` of the held-out
    documents, in corpus order (by hash), cut by :func:`window_starts`."""
    tokens = np.load(tokens_dir / "test.npy", mmap_mode="r")
    offsets = np.load(tokens_dir / "test_offsets.npy")
    picked = window_starts(list(zip(offsets[:-1], offsets[1:], strict=True)), context, max_windows)
    if not picked:
        raise ValueError(
            f"no held-out document has {context} tokens; build the corpus with a larger "
            "--min-chars or use a shorter context"
        )
    windows = np.stack([np.asarray(tokens[s : s + context], dtype=np.int64) for _, s in picked])
    return windows, np.asarray([d for d, _ in picked])


def _token_nll(model: torch.nn.Module, ids: torch.Tensor, amp: bool) -> torch.Tensor:
    """``(b, context - 1)`` float32 next-token NLL of ``ids`` (b, context) on the model's
    device, under bfloat16 autocast if ``amp`` (CUDA only)."""
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = model(ids).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
    )


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
        nll = _token_nll(model, ids, amp=device.type == "cuda")  # (b, context - 1)
        sums = torch.zeros(ids.shape[0], buckets, device=device, dtype=torch.float64)
        sums.index_add_(1, bucket_of, nll.double())
        out[i : i + ids.shape[0]] = sums.cpu().numpy()
    model.train(was_training)
    return out


def late_start(context: int, bucket: int) -> int:
    """First position of the window's late region: the first bucket boundary at or after
    ``3/4`` of the context (the last quarter when the buckets tile it)."""
    return -(-3 * context // 4 // bucket) * bucket


@torch.no_grad()
def late_nll_truncated(
    model: torch.nn.Module, windows: np.ndarray, start: int, keep: int, batch_size: int = 4
) -> np.ndarray:
    """``(n,)`` float64: the summed next-token NLL of each window's tokens at positions
    ``start .. C - 1`` when the model sees only the ``keep`` tokens before ``start`` (its
    input is ``window[start - keep:]``) instead of the whole window. Minus the same tokens'
    NLL in the whole window (:func:`window_nll`), it is what the model gains from context more
    than ``keep`` tokens back, the text predicted held fixed (:func:`context_gain`)."""
    device = next(model.parameters()).device
    n, context = windows.shape
    if not 0 < keep <= start < context:
        raise ValueError(f"need 0 < keep <= start < context, got {keep}, {start}, {context}")
    was_training = model.training
    model.eval()
    out = np.zeros(n)
    for i in range(0, n, batch_size):
        ids = torch.from_numpy(windows[i : i + batch_size, start - keep :]).to(device)
        nll = _token_nll(model, ids, amp=device.type == "cuda")  # predicts positions 1..
        out[i : i + ids.shape[0]] = nll[:, keep - 1 :].double().sum(1).cpu().numpy()
    model.train(was_training)
    return out


CHECK_FACTOR = FORWARD_FACTOR  # the kernel may err at most 2x the same-precision baseline


@torch.no_grad()
def backend_check(
    model: torch.nn.Module, cfg: TrainConfig, windows: np.ndarray, tokenizer: Any
) -> dict[str, Any]:
    """Does the trained model's attention (our kernels) compute what its pattern says?

    The same weights are loaded into a twin whose attention is masked SDPA with the pattern's
    exact token mask (``backend="sdpa_mask"``). Reference: the twin in float32. Baseline: the
    twin at the model's precision (bfloat16 autocast on CUDA). The check passes when the mean
    absolute per-token NLL difference of the model to the reference is at most
    :data:`CHECK_FACTOR` times the baseline's plus the float32 rounding floor of a
    ``context``-term sum (:func:`powerattn.testing.check_close` with ``statistic="mean"``:
    the project's tolerance rule, docs/operator.md, applied to the loss a run reports; on the
    CPU the baseline *is* the reference, so the floor alone holds the kernel's float32
    summation order). A wrong mask or a kernel bug in a trained model moves the NLL of many
    tokens by far more than rounding.
    """
    from ..training.model import build_model

    device = next(model.parameters()).device
    amp = device.type == "cuda"
    with torch.random.fork_rng(devices=[]):
        twin = build_model(
            cfg.model, cfg.build_pattern(), windows.shape[1], cfg.pattern.full_layers,
            backend="sdpa_mask", seed=cfg.seed, tokenizer=tokenizer,
        ).to(device)  # fmt: skip
    twin.load_state_dict(model.state_dict())
    was_training = model.training
    model.eval()
    twin.eval()
    nll = {"ref": [], "kernel": [], "baseline": []}
    for w in windows:
        ids = torch.from_numpy(w[None]).to(device)
        nll["ref"].append(_token_nll(twin, ids, amp=False).cpu())
        nll["kernel"].append(_token_nll(model, ids, amp).cpu())
        nll["baseline"].append(_token_nll(twin, ids, amp).cpu())
    model.train(was_training)
    del twin
    nll = {k: torch.cat(v) for k, v in nll.items()}  # (windows, context - 1) float32
    # The floor's sum: a token's attention adds up to `context` keys in the kernel's order.
    r = check_close(
        nll["kernel"], nll["ref"], nll["baseline"], CHECK_FACTOR, windows.shape[1], "mean"
    )
    kernel, base = ((nll[k].double() - nll["ref"].double()).abs() for k in ("kernel", "baseline"))
    return {
        "windows": int(windows.shape[0]),
        "mean_abs_nll_diff": r["err"],
        "max_abs_nll_diff": kernel.max().item(),
        "baseline_mean_abs_nll_diff": r["baseline_err"],
        "baseline_max_abs_nll_diff": base.max().item(),
        "bound": r["tol"],
        "pass": r["ok"],
    }


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
    speed: list[str] = (),
    init_from: str | None = None,
) -> dict[str, Any]:
    """Train (resuming) and evaluate one run into ``out/NAME``, with the trainer speed
    options ``speed`` (:func:`speed_options`); returns its ``ppl.json``.

    ``init_from``: a directory of ``eval ppl`` runs whose ``full-s<seed>`` run is this run's
    starting point (weights only; a fresh optimizer and schedule), as the paper's sparse
    patterns continue the pretraining of a full-attention model."""
    from ..training.lm_data import lm_batch_fn
    from ..training.trainer import CHECKPOINT, Trainer

    p = PRESETS[preset]
    cfg = train_config(p, pattern, seed, steps, device, list(full_layers), speed)
    run_dir = Path(out) / run_name(pattern, seed, list(full_layers))
    tokens_dir = tokenize_corpus(corpus, tokenizer)
    train_tokens = np.load(tokens_dir / "train.npy", mmap_mode="r")
    tok = BPETokenizer(tokenizer)
    trainer = Trainer(
        cfg, run_dir, progress=progress, tokenizer=tok, batch_fn=lm_batch_fn(train_tokens)
    )
    windows, docs = eval_windows(tokens_dir, p.context, p.eval_windows)
    check_windows = windows[:CHECK_WINDOWS]
    checks = {}
    base = _continue_from(trainer, run_dir, init_from, seed) if init_from else None
    if base is None and (run_dir / INIT_FILE).exists():
        raise ValueError(f"{run_dir} continues a base run: resume it with --init-from")
    if not (run_dir / CHECKPOINT).exists():
        # Correctness first, at initialisation. A failure is reported and the run excluded
        # from every comparison (check_pass), but it still trains: the GPU time of a campaign
        # call is spent anyway, and a false alarm would otherwise lose the run.
        checks["init"] = backend_check(trainer.model, cfg, check_windows, tok)
        if not checks["init"]["pass"]:
            print(f"CHECK FAILED {run_dir.name} at initialisation: {checks['init']}", flush=True)
    t0 = time.time()
    last = trainer.train(stop_time=stop_time)
    train_s = time.time() - t0
    if trainer.step < cfg.total_steps:
        trainer.save_checkpoint()
    nll = window_nll(trainer.model, windows, p.bucket, p.eval_batch)
    start, keep = late_start(p.context, p.bucket), p.context // 4
    late_truncated = late_nll_truncated(trainer.model, windows, start, keep, p.eval_batch)
    checks["trained"] = backend_check(trainer.model, cfg, check_windows, tok)
    if not checks["trained"]["pass"]:
        print(f"CHECK FAILED {run_dir.name} after training: {checks['trained']}", flush=True)
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
        "speed": speed_options(speed),  # this call's (also in the trainer's config.json)
        "tokenizer": tok.path.name,
        "tokenizer_sha": _file_hash(tok.path),
        "corpus_test_docs": int(len(np.load(tokens_dir / "test_offsets.npy")) - 1),
        "window_docs": docs.tolist(),
        "window_nll": nll.tolist(),
        "late_nll_truncated": late_truncated.tolist(),
        "late_start": start,
        "late_keep": keep,
        "bucket_tokens": bucket_counts(p.context, p.bucket).tolist(),
        "check": checks,
        "check_pass": all(c["pass"] for c in checks.values()),
    }
    if base is not None:
        result["init_from"] = base
    tmp = run_dir / (PPL_FILE + ".tmp")
    tmp.write_text(json.dumps(result) + "\n")
    os.replace(tmp, run_dir / PPL_FILE)
    return result


INIT_FILE = "init_from.json"


def _continue_from(trainer: Any, run_dir: Path, init_from: str, seed: int) -> dict[str, Any]:
    """Start ``trainer`` (a run without a checkpoint) from the weights of the base run
    ``init_from/full-s<seed>``; returns what was loaded (also kept in ``run_dir/init_from.json``
    so that a resumed run reports it)."""
    from ..training.trainer import CHECKPOINT

    record = run_dir / INIT_FILE
    if (run_dir / CHECKPOINT).exists():
        if not record.exists():
            raise ValueError(
                f"{run_dir} has a checkpoint that did not start from a base run; give it "
                "another --out, or drop --init-from"
            )
        return json.loads(record.read_text())
    path = Path(init_from) / run_name("full", seed) / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(
            f"--init-from {init_from}: no base checkpoint {path} (train the base first: "
            f"powerattn eval ppl --patterns full --seeds {seed} --out {init_from} ...)"
        )
    state = torch.load(path, map_location=trainer.device, weights_only=False)
    trainer.model.load_state_dict(state["model"])  # strict: the same model or an error
    base_ppl = path.parent / PPL_FILE
    base = {
        "path": str(path),
        "sha256": _file_hash(path),
        "step": int(state["step"]),
        "tokens": json.loads(base_ppl.read_text())["tokens_trained"] if base_ppl.exists() else None,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(base) + "\n")
    return base


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
        "check_failed_runs": [r["name"] for r in runs if not r.get("check_pass", True)],
        "steps": {r["name"]: [r["steps"], r["steps_planned"]] for r in runs},
        "throughput": throughput(runs_dir, runs),
        "verdicts": table1_verdicts(runs),
    }
    return summary, details


def steady_tokens_per_s(metrics_path: str | Path) -> float | None:
    """Training tokens/s of a run's last call between its first and last logged step (the
    first log interval, which holds compilation, is left out); None with fewer than two
    logged steps. ``metrics.jsonl`` logs, per line, the call's cumulative ``tokens_per_s``
    and ``time_s``; a resumed call starts ``time_s`` again near 0."""
    path = Path(metrics_path)
    if not path.is_file():
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    call: list[dict[str, Any]] = []
    for r in rows:
        if call and r["time_s"] < call[-1]["time_s"]:
            call = []  # a new call
        call.append(r)
    if len(call) < 2:
        return None
    a, b = call[0], call[-1]
    tokens = b["tokens_per_s"] * b["time_s"] - a["tokens_per_s"] * a["time_s"]
    return float(tokens / (b["time_s"] - a["time_s"]))


def throughput(runs_dir: str | Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per run: its last call's tokens/s over the whole call (compilation included) and in
    steady state (:func:`steady_tokens_per_s`).

    ``makespan_tokens_per_s`` is the figure to plan the next campaign with: the tokens all
    runs trained in their last call over the longest run's training time in it, start-up
    included -- what equal-step runs started together (``--jobs`` >= runs) get from the GPU.
    ``aggregate_steady_tokens_per_s``, the sum of the per-run steady rates, overstates it
    when runs do not share the GPU for the same time: a run that compiles fast (full
    attention on SDPA) trains alone at first and ends early, so its average rate is higher
    than its share while all ran (session 5: 6.6e5 summed, 5.0e5 while all 12 shared, 5.2e5
    makespan)."""
    per_run = {
        r["name"]: {
            "call_tokens_per_s": r.get("tokens_per_s"),
            "steady_tokens_per_s": steady_tokens_per_s(
                Path(runs_dir) / r["name"] / "metrics.jsonl"
            ),
            "train_s_this_call": r.get("train_s_this_call"),
            "speed": r.get("speed", []),  # the last call's trainer speed options
        }
        for r in runs
    }
    steady = [v["steady_tokens_per_s"] for v in per_run.values()]
    timed = [
        (v["call_tokens_per_s"], v["train_s_this_call"])
        for v in per_run.values()
        if v["call_tokens_per_s"] and v["train_s_this_call"]
    ]
    makespan = max((s for _, s in timed), default=0.0)
    every = makespan and len(timed) == len(runs)
    return {
        "runs": per_run,
        "makespan_s": makespan or None,
        "makespan_tokens_per_s": sum(r * s for r, s in timed) / makespan if every else None,
        "aggregate_steady_tokens_per_s": sum(steady) if None not in steady else None,
    }


# ---------------------------------------------------------------------------- verdicts

SPARSE = [p for p in PATTERNS if p != "full"]
# The ceiling precondition (docs/evaluation.md; fixed in session 5 after the first call, before
# any further run): full attention must gain at least this much ln ppl from long context, or
# Table 1's claims are not tested. 0.05: below the paper's smallest gap to full (0.057).
CEILING_GAIN = 0.05
CLOSE_GROUP = ["power", "sliding_window", "stride_slash"]  # Table 1: close to one another
WORSE_GROUP = ["longnet", "dilated"]  # Table 1: worse than the close group


def _ln_ppl(run: dict[str, Any]) -> float:
    return float(np.log(run_ppl(run)[0]))


def context_gain(run: dict[str, Any]) -> float | None:
    """How much the model gains from long context, in ln ppl per token, on the window's late
    region (from :func:`late_start`, ~the last quarter): its NLL there with only the ``C/4``
    tokens before the region as input (``late_nll_truncated``) minus its NLL there in the
    whole window; the same tokens are predicted both ways, so the text's own difficulty
    cancels. None for runs without it (session 5's; see :func:`context_gain_by_position`)."""
    if "late_nll_truncated" not in run:
        return None
    windows = np.asarray(run["window_nll"])
    start = run.get("late_start", late_start(run["context"], run["bucket"]))
    late = np.arange(windows.shape[1]) * run["bucket"] >= start
    tokens = (run["context"] - start) * len(windows)
    return float((np.sum(run["late_nll_truncated"]) - windows[:, late].sum()) / tokens)


def context_gain_by_position(run: dict[str, Any]) -> float | None:
    """Session 5's ceiling measure: ln ppl on the window's second position bucket minus ln
    ppl on its last quarter. It mixes context use with the text's own change of difficulty
    along a window (CPU scout, results/lm/scout-cpu/: +-0.05 without any context use), so the
    ceiling rule no longer uses it; reported for the runs made before."""
    windows = np.asarray(run["window_nll"])
    nll = windows.sum(0)
    counts = np.asarray(run["bucket_tokens"], dtype=float) * len(windows)
    lows = np.arange(len(counts)) * run["bucket"]
    late = lows >= 3 * run["context"] // 4
    if len(counts) < 3 or not late.any() or late[1]:
        return None
    return float(nll[1] / counts[1] - nll[late].sum() / counts[late].sum())


def table1_verdicts(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The decision rules of docs/evaluation.md (fixed before any run) applied to the runs
    without hybrids: ``{"seed_noise", "comparable", "excluded", "pairs", "claims"}``.

    ``seed_noise`` (σ): the largest range over seeds of ln-perplexity of any pattern. A
    pattern A is distinguishable from B when the seed-mean of the paired difference
    ``ln ppl(A, s) - ln ppl(B, s)`` exceeds 2σ in absolute value and every seed's paired
    bootstrap interval over held-out documents excludes 0 on the same side. Runs that did not
    reach their planned steps, failed the backend check, or differ in steps from the others
    are excluded; a claim that needs an excluded pattern is inconclusive.

    The ceiling precondition (``ceiling``): every seed's full-attention run must gain at least
    :data:`CEILING_GAIN` from long context (:func:`context_gain`). A model that predicts the
    end of a 4096-token window no better than tokens 512-1024 does not use the context whose
    loss the claims are about, so then claims 1 and 2 are "inconclusive (ceiling not
    reached)" whatever the pairs say; the pairs are still reported. Without a full-attention
    run to measure, a claim that the pairs would decide is "inconclusive (ceiling unknown)".
    """
    plain = [r for r in runs if not r["full_layers"]]
    steps = {r["steps_planned"] for r in plain}
    excluded = sorted(
        r["name"]
        for r in plain
        if not r.get("complete", True)
        or not r.get("check_pass", True)
        or r["steps"] != max(x["steps"] for x in plain)
    )
    by = {(r["pattern"], r["seed"]): r for r in plain if r["name"] not in excluded}
    seeds = sorted({s for _, s in by})
    # No run left (e.g. every run stopped by a deadline): no pattern, rather than every one.
    patterns = [p for p in PATTERNS if seeds and all((p, s) in by for s in seeds)]
    ln = {k: _ln_ppl(r) for k, r in by.items()}
    ranges = [max(ln[p, s] for s in seeds) - min(ln[p, s] for s in seeds) for p in patterns]
    sigma = max(ranges) if len(seeds) >= 2 and ranges else None

    def compare(a: str, b: str) -> dict[str, Any] | None:
        """``a - b``: seed-mean, per-seed paired intervals, and the verdict's sign."""
        if sigma is None or a not in patterns or b not in patterns:
            return None
        per_seed = [_paired_gap(by[a, s], by[b, s]) for s in seeds]
        mean = float(np.mean([g["ln_ppl_gap"] for g in per_seed]))
        side = np.sign(mean)
        clear = all((np.asarray(g["ci95"]) * side > 0).all() for g in per_seed)
        return {
            "mean_ln_gap": mean,
            "per_seed": per_seed,
            "distinguishable": bool(abs(mean) > 2 * sigma and clear),
            "sign": int(side),
        }

    pairs = {f"{a} - {b}": compare(a, b) for i, a in enumerate(PATTERNS) for b in PATTERNS[i + 1 :]}

    def cmp(a: str, b: str) -> dict[str, Any] | None:
        c = pairs.get(f"{a} - {b}")
        if c is not None:
            return c
        c = pairs.get(f"{b} - {a}")
        return None if c is None else {**c, "mean_ln_gap": -c["mean_ln_gap"], "sign": -c["sign"]}

    def worse(a: str, b: str) -> bool | None:  # a distinguishably worse (higher ppl) than b
        c = cmp(a, b)
        return None if c is None else c["distinguishable"] and c["sign"] > 0

    claims = {}
    # 1. Every sparse pattern is worse than full attention, by a small margin.
    vs_full = {p: cmp(p, "full") for p in SPARSE}
    if any(v is None for v in vs_full.values()):
        claims["sparse_worse_than_full_small_margin"] = "inconclusive"
    elif any(worse("full", p) for p in SPARSE) or any(
        v["mean_ln_gap"] > 0.30 for v in vs_full.values()
    ):
        claims["sparse_worse_than_full_small_margin"] = "refuted"
    elif all(worse(p, "full") and v["mean_ln_gap"] < 0.15 for p, v in vs_full.items()):
        claims["sparse_worse_than_full_small_margin"] = "reproduced"
    else:
        claims["sparse_worse_than_full_small_margin"] = "inconclusive"
    # 2. Power, sliding window and stride slash are close; LongNet and dilated are worse.
    needed = CLOSE_GROUP + WORSE_GROUP
    if any(p not in patterns for p in needed) or sigma is None:
        verdict = "inconclusive"
    elif any(worse(a, b) for a in CLOSE_GROUP for b in WORSE_GROUP):
        verdict = "refuted"
    elif not any(
        cmp(a, b)["distinguishable"]
        for i, a in enumerate(CLOSE_GROUP)
        for b in CLOSE_GROUP[i + 1 :]
    ) and all(worse(b, a) for a in CLOSE_GROUP for b in WORSE_GROUP):
        verdict = "reproduced"
    else:
        verdict = "inconclusive"
    claims["power_sliding_stride_close_longnet_dilated_worse"] = verdict
    # The context-controlled gain where the runs have it (session 7 on); session 5's runs
    # only have the by-position measure, which the rule used then.
    full_runs = [by["full", s] for s in seeds] if "full" in patterns else []
    measures = ["truncated" if "late_nll_truncated" in r else "by_position" for r in full_runs]
    gains = [
        context_gain(r) if m == "truncated" else context_gain_by_position(r)
        for r, m in zip(full_runs, measures, strict=True)
    ]
    reached = bool(gains) and None not in gains and min(gains) >= CEILING_GAIN
    if gains and None not in gains and not reached:
        claims = {k: "inconclusive (ceiling not reached)" for k in claims}
    elif not reached:  # no full-attention reference to measure: nothing may be decided
        claims = {k: "inconclusive" if v == "inconclusive" else "inconclusive (ceiling unknown)"
                  for k, v in claims.items()}  # fmt: skip
    # 3. No claim: the seed-mean ln-ppl gap to full attention per position bucket.
    by_bucket = {}
    if "full" in patterns:
        for p in SPARSE:
            if p in patterns:
                gaps = [
                    (
                        np.asarray(by[p, s]["window_nll"]) - np.asarray(by["full", s]["window_nll"])
                    ).sum(0)
                    / (np.asarray(by[p, s]["bucket_tokens"]) * len(by[p, s]["window_nll"]))
                    for s in seeds
                ]
                by_bucket[p] = np.mean(gaps, axis=0).round(5).tolist()
    # No claim either: every pattern's own gain from the context beyond the late region's
    # last C/4 tokens (the ceiling's measure), per seed: which models use far context at all.
    far_gain = {
        p: [None if (g := context_gain(by[p, s])) is None else round(g, 5) for s in seeds]
        for p in patterns
    }
    return {
        "seeds": seeds,
        "planned_steps": sorted(steps),
        "seed_noise_ln_ppl": sigma,
        "comparable_patterns": patterns,
        "excluded_runs": excluded,
        "pairs": pairs,
        "ceiling": {
            "context_gain_full": gains,
            "measure": measures,
            "threshold": CEILING_GAIN,
            "reached": reached,
        },
        "claims": claims,
        "ln_gap_to_full_by_bucket": by_bucket,
        "context_gain_by_pattern": far_gain,
    }


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


def verdict_text(details: dict[str, Any]) -> str:
    """The decision rules' outcome (:func:`table1_verdicts`) in a few lines."""
    v = details["verdicts"]
    sigma = v["seed_noise_ln_ppl"]
    lines = [
        f"seeds {v['seeds']}, seed noise (largest range of ln ppl over seeds) "
        + ("n/a (under two seeds complete)" if sigma is None else f"{sigma:.4f}")
        + f"; excluded runs: {v['excluded_runs'] or 'none'}"
    ]
    ceiling = v.get("ceiling")
    if ceiling is not None:  # details.json written before session 5 have none
        gains = " ".join(f"{g:+.4f}" for g in ceiling["context_gain_full"] if g is not None)
        how = {  # details.json written before session 7 have no "measure": by position
            "truncated": "on the window's last quarter, whole window vs only the quarter "
            "before it as input",
            "by_position": "from the second position bucket to the window's last quarter",
        }
        measures = set(ceiling.get("measure") or ["by_position"])
        lines.append(
            "  ceiling: full attention's ln ppl gain from long context ("
            + "; ".join(how[m] for m in sorted(measures))
            + f"), per seed: {gains or 'n/a'} (needs >= {ceiling['threshold']}): "
            + ("reached" if ceiling["reached"] else "NOT reached")
        )
    far = {p: g for p, g in v.get("context_gain_by_pattern", {}).items() if None not in g}
    if far:  # details.json written before session 14 have none
        lines.append(
            "  every pattern's ln ppl gain from context more than a quarter window before the late "
            "region (no claim), per seed: "
            + "; ".join(f"{p} " + " ".join(f"{g:+.4f}" for g in gs) for p, gs in far.items())
        )
    for claim, verdict in v["claims"].items():
        lines.append(f"  {claim}: {verdict}")
    for pair, c in v["pairs"].items():
        if c is not None:
            cis = " ".join(f"[{g['ci95'][0]:+.4f},{g['ci95'][1]:+.4f}]" for g in c["per_seed"])
            tag = "distinguishable" if c["distinguishable"] else "not distinguishable"
            lines.append(f"  ln ppl {pair:<30} {c['mean_ln_gap']:+.4f}  seeds {cis}  {tag}")
    return "\n".join(lines)


def plot_ppl(summary: dict[str, Any], details: dict[str, Any], path: str | Path) -> Path:
    """Perplexity by position bucket per pattern (seed mean, min-max band), and the
    seed-mean ln-perplexity gap to full attention per bucket."""
    import matplotlib.pyplot as plt

    from ..plots import save_figure  # matplotlib on the Agg backend

    edges = [(lo, hi) for lo, hi, _ in summary["runs"][0]["ppl_by_position"]]
    x = np.asarray([(lo + hi) / 2 for lo, hi in edges])
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    colour = {label: f"C{i}" for i, label in enumerate(details["patterns"])}
    for label, v in details["patterns"].items():
        a.plot(x, v["by_position_mean"], marker="o", ms=3, label=label, color=colour[label])
        a.fill_between(x, v["by_position_min"], v["by_position_max"], alpha=0.2,
                       color=colour[label])  # fmt: skip
    a.set_xlabel("position in the window (bucket centre)")
    a.set_ylabel("perplexity (mean over seeds; band: min-max)")
    a.set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter

    for axis in (a.yaxis.set_major_formatter, a.yaxis.set_minor_formatter):
        axis(FormatStrFormatter("%g"))  # 7, 8, 9, 10 rather than 7x10^0 ...
    a.legend(fontsize=8, ncol=2)
    for p, gaps in details["verdicts"]["ln_gap_to_full_by_bucket"].items():
        b.plot(x, gaps, marker="o", ms=3, label=p, color=colour.get(p))
    sigma = details["verdicts"]["seed_noise_ln_ppl"]
    if sigma is not None:
        b.axhspan(-2 * sigma, 2 * sigma, color="grey", alpha=0.2, label="±2σ (seed noise)")
    b.axhline(0, color="black", lw=0.8)
    b.set_xlabel("position in the window (bucket centre)")
    b.set_ylabel("ln ppl - ln ppl(full), mean over seeds")
    if b.get_legend_handles_labels()[0]:  # empty while every run is excluded
        b.legend(fontsize=8)
    fig.suptitle(f"Perplexity by position at {summary['context']} tokens", fontsize=10)
    fig.tight_layout()
    return Path(save_figure(fig, path, dpi=110))
