"""``powerattn bench e2e`` plumbing on a toy model on the CPU (moved from the former
tests/test_transformers.py; the benchmark drives the HF integration)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")


def test_bench_e2e_plumbing(tmp_path, capsys):
    """The benchmark's code path on a toy model on the CPU: every variant measured, the JSON
    complete, the summary computed, the table re-printed from the JSON (no timing checked)."""
    from powerattn.bench import e2e
    from powerattn.cli import main

    cfg = e2e.E2EConfig(
        model="tiny",
        seq_lens=(96, 64),
        decode_steps=2,
        block_size=16,
        warmup_lens=(32,),
        device="cpu",
        profile_path=str(tmp_path / "prof.txt"),
    )
    doc = e2e.run(cfg, str(tmp_path / "e2e.json"))
    assert {(r["variant"], r["seq_len"]) for r in doc["results"]} == {
        (v, n) for v in e2e.VARIANTS for n in (64, 96)
    }
    assert all("error" not in r and r["decode_steps"] == 2 for r in doc["results"])
    assert all(r["prefill_first_s"] > 0 and r["prefill_s"] > 0 for r in doc["results"])
    assert "power(block_size=16" in doc["variants"]["power"]
    assert "full layers [1]" in doc["variants"]["hybrid"]  # 2 of every 7 would be both layers
    assert set(doc["profiles"]) == {
        "full_decode8_96",
        "power_decode8_96",
        "full_prefill_96",
        "power_prefill_96",
    }
    text = (tmp_path / "prof.txt").read_text()
    assert text.count("=====") == 4 and text.count("Self CPU time total") == 4  # every table
    assert (
        "table"
        not in json.loads((tmp_path / "e2e.json").read_text())["profiles"]["full_decode8_96"]
    )
    t = doc["summary"]["targets"]
    assert t["seq_len"] == 96 and t["prefill_speedup"] > 0
    assert main(["bench", "e2e", "--from-json", str(tmp_path / "e2e.json")]) == 0
    out = capsys.readouterr().out
    assert "power vs full" in out
    assert "% full" in out  # the decode column is a ratio in percent, not a speed-up
    # --json would be silently ignored with --from-json: refused.
    argv = ["bench", "e2e", "--from-json", str(tmp_path / "e2e.json"), "--json", "x.json"]
    assert main(argv) == 2
    assert "--from-json" in capsys.readouterr().err
