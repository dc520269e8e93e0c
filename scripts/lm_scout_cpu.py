"""CPU scout for Table 1: which recipe makes full attention the ceiling soonest?

Session 5's GPU call (28M-parameter Llama, 4.9M tokens per run) left full attention the worst
model, with no model using context beyond ~1K tokens. This script answers, on a laptop-class
CPU, two questions before more GPU time is spent:

1. ``check``: is anything in the language-model path training ``full`` differently from a
   sparse pattern at equal steps? The same seed gives the same initial weights for every
   pattern; full attention (causal SDPA) and ``sliding_window`` with a window covering the
   whole context (every block attended: the dense kernel, and masked SDPA) must then give
   the same loss curve and the same evaluation, up to float32 rounding; and the GPU preset's
   configs of two patterns must differ in the pattern only.
2. ``run``: tiny Llamas on the same corpus and tokenizer, 1024-token windows of 16-token
   blocks (64 blocks; the sparse patterns at ``equal_budget(1024, 16)``: sliding window 8
   blocks + a sink, so a 2-layer model reaches ~290 tokens back), trained with the project's
   Trainer (the GPU runs' loop) and evaluated on the same held-out windows every
   ``tokens / evals`` tokens: perplexity overall and per 128-token bucket, the ceiling rule's
   gain at this scale, and the gain from context more than 256 tokens back (:func:`evaluate`).
   ``summarize`` pairs each sparse run with the full-attention run of the same recipe and
   writes ``summary.json``, ``table.txt`` and ``scout.png``.

Sparse patterns train here on ``backend="sdpa_mask"`` (the pattern's exact mask through SDPA:
the same model as the GPU's kernels, 3x faster on a CPU than the ``dense`` backend); full
attention on causal SDPA, as everywhere. One thread per process (``torch.set_num_threads(1)``).

Commands (from the repository root; results/lm/scout-cpu/README.md has the exact ones run)::

    .venv/bin/python scripts/lm_scout_cpu.py check --out results/lm/scout-cpu
    .venv/bin/python scripts/lm_scout_cpu.py run --out results/lm/scout-cpu \
        --runs xs-full-lr1e-3-s0,xs-sliding_window-lr1e-3-s0 --tokens 2e6
    .venv/bin/python scripts/lm_scout_cpu.py summarize --out results/lm/scout-cpu

A run name is ``MODEL-PATTERN-lrLR-sSEED[-bBATCH]`` (MODEL one of :data:`MODELS`; BATCH windows
per step, default :data:`BATCH`). ``--corpus`` (default
``runs/scout/corpus``) is built with ``powerattn eval corpus --source python --max-mb 60`` and
tokenized with the committed BPE on first use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from powerattn import equal_budget, get_pattern
from powerattn.eval import lm
from powerattn.eval.bpe import BPETokenizer
from powerattn.eval.corpus import build_corpus
from powerattn.training.config import (
    ModelConfig,
    OptimConfig,
    PatternConfig,
    Stage,
    TaskConfig,
    TrainConfig,
)
from powerattn.training.lm_data import lm_batch_fn
from powerattn.training.model import build_model
from powerattn.training.trainer import Trainer

CONTEXT = 1024
BLOCK = 16
BUCKET = 128
EVAL_WINDOWS = 64  # tokens 1024-2048 of the 57 held-out files, then 2048-3072 of 7
BATCH = 4  # windows per step: 4096 tokens

MODELS = {
    # ~0.4M parameters besides the tied 1M-parameter embedding.
    "xs": ModelConfig(layers=2, hidden=128, heads=4, kv_heads=4, intermediate=384),
    # Depth alone: the same width, twice the layers (a sliding window reaches twice as far).
    "xs4": ModelConfig(layers=4, hidden=128, heads=4, kv_heads=4, intermediate=384),
    # Width: ~3.4M besides the 2.1M embedding (defined, not run in session 7: CPU time).
    "s": ModelConfig(layers=4, hidden=256, heads=4, kv_heads=4, intermediate=768),
}


def parse_name(name: str) -> tuple[str, str, float, int, int]:
    """``MODEL-PATTERN-lrLR-sSEED[-bBATCH]`` -> (model, pattern, lr, seed, windows per step,
    :data:`BATCH` unless given)."""
    m = re.fullmatch(r"(\w+)-(\w+)-lr([0-9.e+-]+?)-s(\d+)(?:-b(\d+))?", name)
    if m is None or m[1] not in MODELS:
        raise ValueError(f"run name {name!r} is not MODEL-PATTERN-lrLR-sSEED[-bBATCH]")
    return m[1], m[2], float(m[3]), int(m[4]), int(m[5] or BATCH)


def scout_config(
    model: str,
    pattern: str,
    lr: float,
    seed: int,
    steps: int,
    evals: int,
    backend: str,
    batch: int = BATCH,
) -> TrainConfig:
    """The run's config: one 1024-token stage cut into ``evals`` equal stages (so that the
    Trainer calls back after each; the schedule counts all of them: warm-up then one cosine
    over the whole run, as on the GPU)."""
    per = steps // evals
    return TrainConfig(
        model=dataclasses.replace(MODELS[model]),
        pattern=PatternConfig(name=pattern),
        task=TaskConfig(block_size=BLOCK, digits=1),
        optim=OptimConfig(lr=lr, warmup_steps=max(min(40, steps // 10), 1)),
        stages=[Stage(CONTEXT, per) for _ in range(evals)],
        batch_size=batch,
        seed=seed,
        loss_on="all",
        checkpoint_every=per * evals,
        log_every=10,
        device="cpu",
        backend="auto" if pattern == "full" else backend,
    )


def tokens_dir(corpus: Path) -> Path:
    if not (corpus / "manifest.json").is_file():
        build_corpus(corpus, ["python"], max_mb=60)
    return lm.tokenize_corpus(corpus)


def ln_ppl_by_bucket(nll: np.ndarray) -> np.ndarray:
    """``(buckets,)`` ln ppl of the windows' summed NLL ``(n, buckets)``."""
    return nll.sum(0) / (lm.bucket_counts(CONTEXT, BUCKET) * len(nll))


def scout_windows(tdir: Path) -> np.ndarray:
    """``(EVAL_WINDOWS, CONTEXT)`` held-out windows that do not start a file (window k >= 1
    of each file, round-robin): like the training windows, which start anywhere, and with no
    file head (licence headers, imports) in the early buckets to make position itself look
    like context."""
    tokens = np.load(tdir / "test.npy", mmap_mode="r")
    offsets = np.load(tdir / "test_offsets.npy")
    starts = []  # window k >= 1 of each file, round-robin over files
    for k in range(1, 1000):
        more = [
            a + k * CONTEXT
            for a, b in zip(offsets[:-1], offsets[1:], strict=True)
            if a + (k + 1) * CONTEXT <= b
        ]
        if not more or len(starts) >= EVAL_WINDOWS:
            break
        starts.extend(more)
    return np.stack(
        [np.asarray(tokens[s : s + CONTEXT], dtype=np.int64) for s in starts[:EVAL_WINDOWS]]
    )


def evaluate(model: torch.nn.Module, windows: np.ndarray) -> dict[str, Any]:
    """Perplexity overall and per bucket; the ceiling rule's ``context_gain`` at this scale
    (bucket 128-256 minus the last quarter, 768-1024); and ``long_context_gain``: the same
    last-quarter tokens predicted from only the 256-511 tokens before them (the window's
    last 512 tokens fed alone) minus from the whole window -- what the model gains from
    context more than 256 tokens back, at the same positions in the same files."""
    nll = lm.window_nll(model, windows, BUCKET, batch_size=8)
    by = ln_ppl_by_bucket(nll)
    late = np.arange(len(by)) * BUCKET >= 3 * CONTEXT // 4
    counts = lm.bucket_counts(CONTEXT, BUCKET)
    late_ln = (by[late] * counts[late]).sum() / counts[late].sum()
    short = lm.window_nll(model, np.ascontiguousarray(windows[:, CONTEXT // 2 :]), 256, 8)
    short_ln = short[:, 1].sum() / (256 * len(short))  # local positions 256-511 = 768-1023
    return {
        "ln_ppl": float(nll.sum() / (counts.sum() * len(nll))),
        "ln_ppl_by_bucket": by.round(5).tolist(),
        "context_gain": float(by[1] - late_ln),
        "long_context_gain": float(short_ln - late_ln),
        "window_nll": nll.round(3).tolist(),
    }


# ---------------------------------------------------------------------------- check


def check(out: Path, corpus: Path) -> dict[str, Any]:
    """Full attention vs the pattern with every block attended, same seed (see the module
    docstring). Returns the measured differences and pass flags."""
    tdir = tokens_dir(corpus)
    tokens = np.load(tdir / "train.npy", mmap_mode="r")
    tok = BPETokenizer()
    ctx, steps = 256, 40
    every = {"window": ctx // BLOCK, "sink": 1, "block_size": BLOCK}
    res: dict[str, Any] = {"context": ctx, "steps": steps}

    # 1. The same initial weights whatever the pattern.
    cfgm = MODELS["xs"]
    a = build_model(cfgm, get_pattern("full", block_size=BLOCK), ctx, seed=3, tokenizer=tok)
    b = build_model(cfgm, equal_budget(ctx, BLOCK)["power"], ctx, seed=3, tokenizer=tok)
    res["same_init"] = all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )

    # 2. The GPU preset's configs of two patterns differ in the pattern only.
    cf, cs = (lm.train_config(lm.PRESETS["gpu"], p, 0) for p in ("full", "sliding_window"))
    df, ds = cf.to_dict(), cs.to_dict()
    res["gpu_config_diff"] = sorted(k for k in df if df[k] != ds[k])
    res["gpu_config_same_but_pattern"] = res["gpu_config_diff"] == ["pattern"]

    # 3. Loss curves: full vs sliding_window covering everything (dense kernel, masked SDPA).
    curves = {}
    models = {}
    for label, pattern, params, backend in [
        ("full", "full", {}, "auto"),
        ("sliding_all_dense", "sliding_window", every, "dense"),
        ("sliding_all_sdpa_mask", "sliding_window", every, "sdpa_mask"),
    ]:
        cfg = TrainConfig(
            model=dataclasses.replace(cfgm),
            pattern=PatternConfig(name=pattern, params=params),
            task=TaskConfig(block_size=BLOCK, digits=1),
            optim=OptimConfig(lr=3e-3, warmup_steps=4),
            stages=[Stage(ctx, steps)],
            batch_size=4,
            seed=0,
            loss_on="all",
            checkpoint_every=steps,
            log_every=1,
            device="cpu",
            backend=backend,
        )
        run_dir = Path("runs/scout/check") / label
        trainer = Trainer(cfg, run_dir, progress=False, tokenizer=tok, batch_fn=lm_batch_fn(tokens))
        trainer.train(resume=False)
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        curves[label] = [r["loss"] for r in rows]
        models[label] = trainer.model
    ref = np.asarray(curves["full"])
    windows, _ = lm.eval_windows(tdir, ctx, 8)
    ev = {k: lm.window_nll(m, windows, 64) for k, m in models.items()}
    res["loss_first_last"] = {k: [v[0], v[-1]] for k, v in curves.items()}
    for k in ("sliding_all_dense", "sliding_all_sdpa_mask"):
        d = np.abs(np.asarray(curves[k]) - ref)
        e = np.abs(ev[k] - ev["full"]).max() / np.abs(ev["full"]).max()
        # Chaotic growth of float32 rounding over 40 AdamW steps stays far below the loss's
        # change over the run (a masking or init bug shows at step 1 as 1e-1, not 1e-4).
        res[k] = {
            "max_abs_loss_diff": float(d.max()),
            "step1_abs_loss_diff": float(d[0]),
            "eval_max_rel_nll_diff": float(e),
            "pass": bool(d[0] < 1e-5 and d.max() < 1e-3 and e < 1e-3),
        }
    res["pass"] = bool(
        res["same_init"]
        and res["gpu_config_same_but_pattern"]
        and all(res[k]["pass"] for k in ("sliding_all_dense", "sliding_all_sdpa_mask"))
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "check.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


# ---------------------------------------------------------------------------- runs


def run(
    name: str, out: Path, corpus: Path, tokens: float, evals: int, backend: str
) -> dict[str, Any]:
    """Train one scout run, evaluating ``evals`` times (and at initialisation); writes
    ``out/per_run/NAME.json`` after every evaluation (a killed run keeps what it measured)."""
    model, pattern, lr, seed, batch = parse_name(name)
    steps = int(round(tokens / (batch * CONTEXT) / evals)) * evals
    cfg = scout_config(model, pattern, lr, seed, steps, evals, backend, batch)
    tdir = tokens_dir(corpus)
    tok = BPETokenizer()
    trainer = Trainer(
        cfg,
        Path("runs/scout/train") / name,
        progress=False,
        tokenizer=tok,
        batch_fn=lm_batch_fn(np.load(tdir / "train.npy", mmap_mode="r")),
    )
    windows = scout_windows(tdir)
    path = out / "per_run" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "name": name,
        "model": model,
        "model_config": dataclasses.asdict(MODELS[model]),
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "pattern": pattern,
        "pattern_desc": trainer.pattern.describe(),
        "lr": lr,
        "seed": seed,
        "context": CONTEXT,
        "bucket": BUCKET,
        "batch_tokens": batch * CONTEXT,
        "steps_planned": steps,
        "warmup_steps": cfg.optim.warmup_steps,
        "backend": cfg.backend,
        "eval_windows": len(windows),
        "evals": [],
    }
    clock = {"train_s": 0.0, "eval_s": 0.0, "t": time.time()}

    def record(step: int) -> None:
        clock["train_s"] += time.time() - clock["t"]
        t = time.time()
        ev = evaluate(trainer.model, windows)
        metrics = trainer.out / "metrics.jsonl"
        rows = [json.loads(x) for x in metrics.read_text().splitlines()] if step else []
        ev.update(
            step=step,
            tokens=step * batch * CONTEXT,
            train_loss=rows[-1]["loss"] if rows else None,
            lr_now=rows[-1]["lr"] if rows else None,
        )
        clock["eval_s"] += time.time() - t
        result["evals"].append(ev)
        result["train_s"], result["eval_s"] = clock["train_s"], clock["eval_s"]
        result["train_tokens_per_s"] = step * batch * CONTEXT / max(clock["train_s"], 1e-9)
        path.write_text(json.dumps(result) + "\n")
        print(
            f"{name} step {step} tokens {ev['tokens'] / 1e6:.2f}M ln_ppl {ev['ln_ppl']:.4f} "
            f"gain {ev['context_gain']:+.4f} long {ev['long_context_gain']:+.4f} "
            f"({clock['train_s']:.0f}s train)",
            flush=True,
        )
        clock["t"] = time.time()

    record(0)
    trainer.train(resume=False, on_stage_end=lambda i, s: record(trainer.step))
    return result


# ---------------------------------------------------------------------------- summary


def _gap_ci(a: dict, b: dict, n: int = 2000) -> list[float]:
    """95 % bootstrap interval over held-out windows of ``ln ppl(a) - ln ppl(b)`` (paired)."""
    na, nb = np.asarray(a["window_nll"]).sum(1), np.asarray(b["window_nll"]).sum(1)
    per = (na - nb) / (CONTEXT - 1)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(per), (n, len(per)))
    return np.percentile(per[idx].mean(1), [2.5, 97.5]).round(4).tolist()


def summarize(out: Path) -> dict[str, Any]:
    """``summary.json``, ``table.txt`` and ``scout.png`` from ``out/per_run/*.json``."""
    runs = {p.stem: json.loads(p.read_text()) for p in sorted((out / "per_run").glob("*.json"))}
    lines, pairs = [], {}
    for name, r in runs.items():
        last = r["evals"][-1]
        lines.append(
            f"{name:<34} {r['parameters'] / 1e6:5.2f}M  {last['tokens'] / 1e6:5.2f}M tok  "
            f"ppl {np.exp(last['ln_ppl']):7.2f}  gain(128-256 -> 768-1024) "
            f"{last['context_gain']:+.4f}  long {last['long_context_gain']:+.4f}  "
            f"{r.get('train_tokens_per_s', 0):6.0f} tok/s"
        )
        if r["pattern"] == "full":
            continue
        ref_name = name.replace(f"-{r['pattern']}-", "-full-")
        ref = runs.get(ref_name)
        if ref is None:
            continue
        common = min(len(r["evals"]), len(ref["evals"]))
        track = []
        for ea, eb in zip(r["evals"][:common], ref["evals"][:common], strict=True):
            ga = np.asarray(ea["ln_ppl_by_bucket"]) - np.asarray(eb["ln_ppl_by_bucket"])
            track.append(
                {
                    "tokens": ea["tokens"],
                    "gap_full_minus_sparse": round(eb["ln_ppl"] - ea["ln_ppl"], 4),
                    "gap_by_bucket_sparse_minus_full": ga.round(4).tolist(),
                    "full_context_gain": round(eb["context_gain"], 4),
                    "sparse_context_gain": round(ea["context_gain"], 4),
                    "full_long_context_gain": round(eb["long_context_gain"], 4),
                    "sparse_long_context_gain": round(ea["long_context_gain"], 4),
                }
            )
        # The first evaluation from which on full attention stays better (None: not yet).
        behind = [t["tokens"] for t in track if t["gap_full_minus_sparse"] >= 0]
        after = [t["tokens"] for t in track if t["tokens"] > max(behind, default=-1)]
        overtake = after[0] if after else None
        pairs[f"{ref_name} vs {name}"] = {
            "track": track,
            "full_better_from_tokens": overtake,  # and at every later evaluation
            "final_gap_ci95": _gap_ci(ref["evals"][common - 1], r["evals"][common - 1]),
        }
    pair_lines = []
    for key, p in pairs.items():
        pair_lines.append(f"{key}: full better from {p['full_better_from_tokens']} tokens; "
                          f"final gap full - sparse CI95 {p['final_gap_ci95']}")  # fmt: skip
        for t in p["track"]:
            pair_lines.append(
                f"  {t['tokens'] / 1e6:5.2f}M  full-sparse {t['gap_full_minus_sparse']:+.4f}  "
                f"gain full {t['full_context_gain']:+.4f} sparse {t['sparse_context_gain']:+.4f}  "
                f"long full {t['full_long_context_gain']:+.4f} "
                f"sparse {t['sparse_long_context_gain']:+.4f}"
                "  by bucket (sparse-full) "
                + " ".join(f"{x:+.3f}" for x in t["gap_by_bucket_sparse_minus_full"])
            )
    summary = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads_per_run": 1,
        },
        "context": CONTEXT,
        "block_size": BLOCK,
        "bucket": BUCKET,
        "eval_windows": EVAL_WINDOWS,
        "runs": {
            n: {k: v for k, v in r.items() if k != "evals"}
            | {"evals": [{k: v for k, v in e.items() if k != "window_nll"} for e in r["evals"]]}
            for n, r in runs.items()
        },
        "pairs": pairs,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "table.txt").write_text("\n".join(lines + [""] + pair_lines) + "\n")
    _plot(runs, out / "scout.png")
    return summary


def _plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({n.replace(f"-{r['pattern']}-", "-*-") for n, r in runs.items()})
    fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 7), squeeze=False)
    for j, g in enumerate(groups):
        members = [r for n, r in runs.items() if n.replace(f"-{r['pattern']}-", "-*-") == g]
        common = min(len(r["evals"]) for r in members)  # the bucket profiles at equal tokens
        for r in members:
            ev = [e for e in r["evals"] if e["tokens"]]
            x = [e["tokens"] / 1e6 for e in ev]
            axes[0, j].plot(x, [np.exp(e["ln_ppl"]) for e in ev], marker="o", ms=3,
                            label=r["pattern"])  # fmt: skip
            centres = (np.arange(CONTEXT // BUCKET) + 0.5) * BUCKET
            at = r["evals"][common - 1]
            axes[1, j].plot(centres, np.exp(at["ln_ppl_by_bucket"]), marker="o", ms=3,
                            label=f"{r['pattern']} @ {at['tokens'] / 1e6:.1f}M")  # fmt: skip
        axes[0, j].set_title(g, fontsize=9)
        axes[0, j].set_xlabel("tokens trained (M)")
        axes[0, j].set_ylabel("held-out ppl")
        axes[0, j].set_yscale("log")
        axes[1, j].set_xlabel("position in the 1024-token window")
        axes[1, j].set_ylabel("ppl by position, last common evaluation")
        for a in axes[:, j]:
            a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["check", "run", "summarize"])
    ap.add_argument("--out", type=Path, default=Path("results/lm/scout-cpu"))
    ap.add_argument("--corpus", type=Path, default=Path("runs/scout/corpus"))
    ap.add_argument("--runs", default="", help="comma-separated MODEL-PATTERN-lrLR-sSEED")
    ap.add_argument("--tokens", type=float, default=2e6, help="training tokens per run")
    ap.add_argument("--evals", type=int, default=10, help="evaluations during a run")
    ap.add_argument("--backend", default="sdpa_mask", help="sparse patterns' training backend")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the machine is shared
    if args.command == "check":
        print(json.dumps(check(args.out, args.corpus), indent=1))
    elif args.command == "run":
        for name in filter(None, args.runs.split(",")):
            run(name, args.out, args.corpus, args.tokens, args.evals, args.backend)
        summarize(args.out)
    else:
        print((args.out / "table.txt").read_text() if summarize(args.out) else "")


if __name__ == "__main__":
    main()
