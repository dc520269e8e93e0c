"""Perplexity by position: the bucketed NLL adds up to the model's own loss, the summary has
the issue's schema, and a run compared with itself has no gap."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from powerattn.eval import lm
from powerattn.training.config import ModelConfig
from powerattn.training.model import build_model


def _model(vocab=8192):
    from powerattn.eval.bpe import BPETokenizer

    pat = lm.PRESETS["tiny"]
    from powerattn.patterns import equal_budget

    return build_model(
        ModelConfig(layers=2, hidden=32, heads=2, kv_heads=2, intermediate=64),
        equal_budget(pat.context, pat.block_size)["power"],
        pat.context,
        tokenizer=BPETokenizer(),
    )


def test_bucketed_nll_matches_the_models_loss():
    torch.manual_seed(0)
    model = _model()
    windows = np.random.default_rng(0).integers(0, 8192, size=(3, 320))
    nll = lm.window_nll(model, windows, bucket=64, batch_size=2)
    counts = lm.bucket_counts(320, 64)
    assert nll.shape == (3, 5) and counts.tolist() == [63, 64, 64, 64, 64]
    with torch.no_grad():
        ids = torch.from_numpy(windows)
        ref = model(ids, labels=ids).loss.item()  # HF's mean next-token CE
    assert nll.sum() / (3 * counts.sum()) == pytest.approx(ref, rel=1e-5)
    run = {"window_nll": nll.tolist(), "bucket_tokens": counts.tolist(), "context": 320,
           "bucket": 64}  # fmt: skip
    total, by_pos = lm.run_ppl(run)
    assert total == pytest.approx(math.exp(ref), rel=1e-4)
    assert [b[:2] for b in by_pos] == [[0, 64], [64, 128], [128, 192], [192, 256], [256, 320]]


def test_eval_windows_round_robin(tmp_path):
    tokens = np.arange(1000, dtype=np.uint16)
    np.save(tmp_path / "test.npy", tokens)
    np.save(tmp_path / "test_offsets.npy", np.array([0, 700, 900, 1000]))
    w, docs = lm.eval_windows(tmp_path, 200, max_windows=4)
    # doc 0 has 3 windows, doc 1 one, doc 2 none: round robin takes 0, 1, then 0, 0
    assert docs.tolist() == [0, 1, 0, 0]
    assert w[:, 0].tolist() == [0, 700, 200, 400]
    with pytest.raises(ValueError, match="no held-out document"):
        lm.eval_windows(tmp_path, 800, max_windows=4)


def _fake_run(tmp_path, pattern, seed, scale):
    rng = np.random.default_rng(seed)
    nll = rng.uniform(1, 2, size=(6, 5)) * scale
    run = {
        "name": lm.run_name(pattern, seed), "pattern": pattern, "full_layers": [],
        "seed": seed, "context": 320, "bucket": 64, "steps": 3, "steps_planned": 3,
        "complete": True, "tokens_trained": 1920, "window_docs": [0, 1, 2, 0, 1, 2],
        "window_nll": nll.tolist(), "bucket_tokens": lm.bucket_counts(320, 64).tolist(),
    }  # fmt: skip
    d = tmp_path / run["name"]
    d.mkdir()
    (d / lm.PPL_FILE).write_text(json.dumps(run))


def test_summary_schema_and_gaps(tmp_path):
    for seed in (0, 1):
        _fake_run(tmp_path, "full", seed, 1.0)
        _fake_run(tmp_path, "power", seed, 1.1)
    summary, details = lm.summarize(tmp_path)
    assert set(summary) == {"context", "runs"} and summary["context"] == 320
    for row in summary["runs"]:
        assert set(row) == {"pattern", "seed", "ppl", "ppl_by_position", "tokens_trained"}
        assert len(row["ppl_by_position"]) == 5
    gap = details["gap_to_full_same_seed"]["power-s0"]
    assert gap["ln_ppl_gap"] > 0 and gap["ci95"][0] <= gap["ln_ppl_gap"] <= gap["ci95"][1]
    full = json.loads((tmp_path / "full-s0" / lm.PPL_FILE).read_text())
    same = lm._paired_gap(full, full)
    assert same["ln_ppl_gap"] == 0 and same["ci95"] == [0.0, 0.0]
    assert "power" in lm.summary_table(summary, details)
    with pytest.raises(ValueError, match="no ppl.json"):
        lm.summarize(tmp_path / "none")
