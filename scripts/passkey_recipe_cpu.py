"""Tiny CPU checks of the passkey recipe levers (results/passkey/README.md, "Recipe search").

Trains a 2-layer Llama with PowerAttention (the config's default pattern, at the equal budget
of the last stage's length: 10-14 blocks of 32 tokens; every needle is in reach in 2 layers)
on short documents with one lever changed at a time and prints exact match on held-out keys
at each length (10 depth bins, random positions inside each bin). Minutes on one CPU
thread; it checks that each lever works, it does not rank them at GPU scale.

    .venv/bin/python scripts/passkey_recipe_cpu.py [NAME ...]   # default: every variant
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time

import numpy as np
import torch

from powerattn.training import ModelConfig, OptimConfig, Stage, TaskConfig, TrainConfig, Trainer
from powerattn.training.evaluate import depth_bins, evaluate_passkey

BASE = TrainConfig(
    model=ModelConfig(layers=2, hidden=64, heads=4, kv_heads=4, intermediate=128),
    task=TaskConfig(heldout_keys=True),
    optim=OptimConfig(lr=3e-3, warmup_steps=20),
    stages=[Stage(320, 80), Stage(448, 80)],
    batch_size=8,
    device="cpu",
    log_every=25,
    checkpoint_every=10_000,
)
_LONG = [Stage(320, 400)]
# The variants run for results/passkey/README.md ("Recipe search"), ~8 CPU-minutes in all.
VARIANTS = {
    # 320 -> 448 tokens, 80 steps each, cosine: too few steps, nothing learned.
    "stages": {},
    # 160 steps drawing 320 or 448 tokens, next-token loss, constant LR: nothing learned.
    "mix+lm+const": {
        "stages": [Stage(448, 160, mix=[320])],
        "lm_weight": 1.0,
        "optim": {"schedule": "constant"},
    },
    # One length, 400 steps: learned (eval 1.00 at 320, 0.00 at 448) ...
    "320-const": {"stages": _LONG, "optim": {"schedule": "constant"}},
    # ... but not with the next-token loss at weight 1 (haystack learned, answer at chance).
    "320-const+lm": {"stages": _LONG, "optim": {"schedule": "constant"}, "lm_weight": 1.0},
}


def config(name: str) -> TrainConfig:
    cfg = dataclasses.replace(BASE, optim=dataclasses.replace(BASE.optim))
    for key, value in VARIANTS[name].items():
        if key == "optim":
            cfg.optim = dataclasses.replace(cfg.optim, **value)
        else:
            setattr(cfg, key, value)
    return cfg


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    centres, width = depth_bins(10)
    for name in names:
        cfg = config(name)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, tmp, progress=False)
            last = trainer.train(resume=False)
            curve = [json.loads(x) for x in open(f"{tmp}/metrics.jsonl")]
        accs = {}
        for n in (320, 448):
            res = evaluate_passkey(
                trainer.model, n, centres, 8, depth_width=width, keys="heldout", seed=99
            )
            accs[n] = float(np.mean(res["correct"]))
        em = " ".join(f"{m['exact_match']:.2f}" for m in curve)
        lm = (
            f"  lm loss {curve[0]['lm_loss']:.2f} -> {last['lm_loss']:.2f}"
            if "lm_loss" in last
            else ""
        )
        print(
            f"{name:<14} steps {cfg.total_steps}  answer loss {curve[0]['loss']:.2f} -> "
            f"{last['loss']:.3f}{lm}  train em every {cfg.log_every} steps: {em}  "
            + "  ".join(f"eval@{n} {a:.2f}" for n, a in accs.items())
            + f"  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:] or list(VARIANTS))
