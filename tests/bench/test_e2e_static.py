"""``bench e2e``'s StaticCache benchmark on the runner, without CUDA: the call order of the
former loop (per length, per variant: one ``set_variant``, then every batch), the rows, a
failed point kept as an error row, the budget, and the table (timings faked, unchecked)."""

from __future__ import annotations

import torch

from powerattn.bench import e2e, e2e_static, runner
from powerattn.bench.e2e_report import STATIC_COLUMNS


def test_static_benchmark_rows_and_call_order(monkeypatch):
    calls = []

    def fake_step(model, context, batch, steps, device):
        calls.append(("step", context, batch))
        if context == 64 and batch == 8:
            raise RuntimeError("out of memory")
        res = {"context": context, "batch": batch, "steps": steps, "eager_ms": 2.0}
        if batch == 1:
            res["graph_ms"] = 1.0
        else:
            res["graph_error"] = "capture failed"
        return {**res, "tokens_per_s": batch * 1e3 / res.get("graph_ms", res["eager_ms"])}

    monkeypatch.setattr(e2e_static, "static_decode_step_ms", fake_step)
    monkeypatch.setattr(e2e, "set_variant", lambda m, name, *a: calls.append(("set", name)))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    cfg = e2e.E2EConfig(seq_lens=(64, 32), static_batches=(1, 8), static_steps=3)
    budget = iter([False] * 7 + [True])
    bench = e2e.static_benchmark(
        cfg, None, torch.device("cpu"), ["full", "power", "hybrid"], lambda: next(budget)
    )
    rows = []
    runner.run(bench, log=None, on_row=rows.append)
    assert calls[:6] == [
        ("set", "full"), ("step", 32, 1), ("step", 32, 8),
        ("set", "power"), ("step", 32, 1), ("step", 32, 8),
    ]  # fmt: skip
    assert [(r["seq_len"], r["variant"], r["batch"]) for r in rows] == [
        (n, v, b) for n in (32, 64) for v in ("full", "power") for b in (1, 8)
    ]
    assert rows[0]["graph_ms"] == 1.0 and rows[1]["graph_error"] == "capture failed"
    assert rows[5]["error"] == "RuntimeError: out of memory"
    assert rows[7]["error"] == "skipped: time budget spent"  # the 8th point starts too late
    text = runner.table(rows, STATIC_COLUMNS).splitlines()
    assert text[1].split() == ["32", "full", "1", "2.00", "1.00", "1000"]
    assert "(graph capture failed: capture failed)" in text[2]
    assert text[7].split() == ["64", "power", "1", "2.00", "1.00", "1000"]
    assert text[6].split()[3:] == ["RuntimeError:", "out", "of", "memory"]
    assert text[8].split()[3:] == ["skipped:", "time", "budget", "spent"]
