"""Figure 5's decision rules (docs/evaluation.md) on constructed probe.json contents whose
outcome is known: every status of each claim, missing runs, seeds that disagree, the passkey
exception, and planted leaks for the structural check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from powerattn.eval import campaign, probe

LAYERS, BLOCKS, NEEDLE = 4, 16, 2  # maps of (LAYERS + 1) x BLOCKS; the key in block 2
PER_KEY = 32  # 6 keys: 192 documents, 96 held out
CLAIM1, CLAIM2, CHECK = "power_last_block_finds_key", "sliding_window_cannot", "structural_check"


def make_run(pattern, seed=0, last=16, exact=1.0, steps=100):
    """A probe.json-like run: every cell at chance (16/96) except blocks the needle reached
    after training (0.9), the trained model's last block of the last layer ``last``/96. Power
    reaches every later block from layer 1, sliding window 2 more blocks per layer."""
    n = 96
    reached = np.zeros((LAYERS + 1, BLOCKS), dtype=bool)
    for layer in range(LAYERS + 1):
        stop = BLOCKS if pattern != "sliding_window" and layer else NEEDLE + 1 + 2 * layer
        reached[layer, NEEDLE:stop] = True
    before = np.full(reached.shape, 16 / n)
    after = np.where(reached, 0.9, 16 / n)
    after[-1, -1] = last / n
    return {
        "name": f"{pattern}-s{seed}",
        "pattern": pattern,
        "seed": seed,
        "seq_len": BLOCKS * 32,
        "steps": steps,
        "steps_planned": 100,
        "passkey": None if exact is None else {"exact_match": {"4096": exact}},
        "per_key": PER_KEY,
        "documents": 6 * PER_KEY,
        "earliest_key_block": NEEDLE,
        "chance": 1 / 6,
        "before": before.tolist(),
        "after": after.tolist(),
        "reached": reached.astype(int).tolist(),
    }


def claims(*runs):
    return campaign.probe_verdicts(list(runs))["claims"]


@pytest.mark.parametrize(
    "last, status",
    [(92, "reproduced"), (30, "refuted"), (60, "inconclusive"), (73, "inconclusive")],
)  # 92/96: [0.90, 0.98]; 30/96: upper 0.41; 60/96: [0.53, 0.72]; 73/96: lower 0.67
def test_power_finds_key(last, status):
    c = claims(make_run("power", last=last), make_run("sliding_window"))[CLAIM1]
    assert c["status"] == status
    lo, hi = c["per_seed"][0]["wilson95"]
    assert f"{last}/96" in c["evidence"] and f"[{lo:.3f}, {hi:.3f}]" in c["evidence"]


@pytest.mark.parametrize(
    "last, exact, status",
    [(92, 0.9, "inconclusive"), (30, 0.5, "inconclusive"), (92, 0.95, "reproduced")],
)
def test_power_that_cannot_do_passkey_is_inconclusive(last, exact, status):
    c = claims(make_run("power", last=last, exact=exact))[CLAIM1]
    assert c["status"] == status
    assert c["per_seed"][0]["passkey_exact_match"] == exact


def test_power_without_passkey_eval_is_judged_and_says_so():
    c = claims(make_run("power", last=92, exact=None))[CLAIM1]
    assert c["status"] == "reproduced" and "unknown" in c["evidence"]


def test_seeds_must_agree():
    agree = claims(make_run("power", 0, last=92), make_run("power", 1, last=95))[CLAIM1]
    assert agree["status"] == "reproduced" and [s["seed"] for s in agree["per_seed"]] == [0, 1]
    split = claims(make_run("power", 0, last=92), make_run("power", 1, last=30))[CLAIM1]
    assert split["status"] == "inconclusive"
    assert [s["status"] for s in split["per_seed"]] == ["reproduced", "refuted"]


@pytest.mark.parametrize(
    "last, status",
    [(16, "reproduced"), (30, "inconclusive"), (47, "inconclusive"), (8, "inconclusive")],
)  # 16/96: [0.10, 0.25]; 30/96 excludes 1/6; 47/96: upper 0.59; 8/96: upper 0.16 < 1/6
def test_sliding_window_cannot(last, status):
    got = claims(make_run("sliding_window", last=last))
    assert got[CLAIM2]["status"] == status
    assert got[CHECK]["bug"] is False  # all of them at most 0.5 outside reach


def test_missing_runs_are_not_tested():
    got = claims(make_run("full", last=92))
    assert got[CLAIM1]["status"] == got[CLAIM2]["status"] == "not tested"
    assert got[CHECK]["status"] == "reproduced"
    assert campaign.probe_verdicts([])["claims"][CHECK]["status"] == "not tested"


@pytest.mark.parametrize(
    "model, layer, block, value",
    [("before", 0, 1, 0.6), ("after", 3, 0, 0.52), ("after", 2, 12, 0.55)],
)  # before the needle (untrained, trained) and outside the sliding window's reach
def test_structural_check_flags_a_planted_leak(model, layer, block, value):
    run = make_run("sliding_window")
    acc = np.asarray(run[model])
    acc[layer, block] = value
    run[model] = acc.tolist()
    c = claims(make_run("power", last=92), run)[CHECK]
    assert c["status"] == "refuted" and c["bug"] is True
    assert f"sliding_window-s0 {model} training" in c["evidence"]
    assert f"{value:.3f} at layer {layer}, block {block}" in c["evidence"]
    acc[layer, block] = 0.5  # "not above chance (accuracy <= 0.5)"
    run[model] = acc.tolist()
    assert claims(make_run("power", last=92), run)[CHECK]["bug"] is False


def test_held_out_documents_match_the_split():
    for per_key in (4, 5, 32):
        labels = np.repeat(np.arange(6), per_key)
        _, test = probe._split(labels, seed=0)
        run = {"documents": labels.size, "per_key": per_key}
        assert campaign._test_documents(run) == test.size


def test_results_carry_the_verdicts(tmp_path):
    from powerattn.commands.eval import write_probe_results

    for r in (make_run("power", last=92), make_run("sliding_window", last=16)):
        (tmp_path / "runs" / r["name"]).mkdir(parents=True)
        (tmp_path / "runs" / r["name"] / campaign.PROBE_FILE).write_text(json.dumps(r))
    text = write_probe_results(tmp_path / "runs", tmp_path / "res")
    details = json.loads((tmp_path / "res" / "details.json").read_text())
    got = {k: v["status"] for k, v in details["verdicts"]["claims"].items()}
    assert got == {CLAIM1: "reproduced", CLAIM2: "reproduced", CHECK: "reproduced"}
    assert set(details) == {"power-s0", "sliding_window-s0", "verdicts"}
    rows = json.loads((tmp_path / "res" / "summary.json").read_text())["runs"]
    assert set(rows[0]) == {"pattern", "seed", "trained", "layer", "block", "accuracy"}
    assert f"{CLAIM1}: reproduced" in text
    assert text in (tmp_path / "res" / "table.txt").read_text()
