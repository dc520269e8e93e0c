"""The declarative benchmark runner (powerattn.bench.runner): rows, notes, ratios, table, JSON
and plot from a benchmark that only lists configs and providers (no timing is checked)."""

from __future__ import annotations

import json

import pytest

from powerattn.bench import runner
from powerattn.bench.runner import Benchmark, Column, Plot, Ratio, Skip

COLUMNS = (
    Column("case", "case", 6),
    Column("n", "n", 5, "d", align=">"),
    Column("method", "method", 6),
    Column("ms", "ms", 7, ".2f", align=">"),
    Column("vs_slow", "vs slow", 8, ".2f", "x", align=">"),
)


def _bench(**kw):
    speed = {"slow": 4.0, "fast": 1.0, "self": 2.0}

    def measure(cfg, provider, state):
        assert state == cfg["n"] * 10  # setup's result, once per config
        if provider == "broken":
            raise Skip(f"broken at {cfg['n']}" if cfg["n"] == 8 else None)
        if provider == "multi":  # several rows, one of another case
            return [{"case": "first", "ms": 100.0}, {"ms": 3.0, "extra": "x"}]
        return speed[provider] * cfg["n"]

    args = dict(
        name="toy",
        configs=[{"case": "run", "n": n} for n in (8, 16)],
        providers=["fast", "slow", "broken", "self", "multi"],
        measure=measure,
        setup=lambda cfg: cfg["n"] * 10,
        columns=COLUMNS,
        ratios={"vs_slow": Ratio("slow", 2)},
        plot=Plot(x="n", panel="case"),
    )
    return Benchmark(**{**args, **kw})


def test_rows_notes_and_ratios():
    logged, progress = [], []
    res = runner.run(_bench(), log=logged.append, on_progress=progress.append)
    rows = res["rows"]
    assert [(r["n"], r["case"], r["method"]) for r in rows[:6]] == [
        (8, "run", "fast"), (8, "run", "slow"), (8, "run", "self"),
        (8, "first", "multi"), (8, "run", "multi"), (16, "run", "fast"),
    ]  # fmt: skip
    assert list(rows[0]) == ["case", "n", "method", "ms"]  # config, provider, value
    assert rows[4] == {"case": "run", "n": 8, "method": "multi", "ms": 3.0, "extra": "x",
                       "vs_slow": 10.67}  # fmt: skip
    # Ratios: on rows measured after the baseline, at the same config and case only.
    assert "vs_slow" not in rows[0] and "vs_slow" not in rows[1]
    assert rows[2]["vs_slow"] == 2.0 and "vs_slow" not in rows[3]
    assert res["notes"] == ["broken at 8"]  # a Skip without a note is silent
    assert len(progress) == 2 and progress[-1]["rows"] == rows
    assert any("note: broken at 8" in x for x in logged)
    assert sum("  run        8 fast" in x for x in logged) == 1


def test_ratio_on_the_baseline_row():
    res = runner.run(_bench(ratios={"vs_slow": Ratio("slow", 3, on_baseline=True)}), log=None)
    assert res["rows"][1]["vs_slow"] == 1.0


def test_errors_other_than_skip_stop_the_run():
    def measure(cfg, provider, state):
        raise RuntimeError("kernel fault")

    with pytest.raises(RuntimeError, match="kernel fault"):
        runner.run(_bench(measure=measure), log=None)


def test_providers_may_depend_on_the_config():
    b = _bench(providers=lambda cfg: ["fast"] if cfg["n"] == 8 else ["fast", "slow"])
    assert [r["method"] for r in runner.run(b, log=None)["rows"]] == ["fast", "fast", "slow"]


def test_table_json_and_plot(tmp_path):
    res = runner.run(_bench(), log=None)
    text = runner.table(res["rows"], COLUMNS, res["notes"]).splitlines()
    assert text[0] == "case       n method      ms  vs slow"
    assert text[3] == "run        8 self     16.00    2.00x"
    assert text[-1] == "note: broken at 8"
    runner.write_json(tmp_path / "a" / "r.json", res)
    assert json.loads((tmp_path / "a" / "r.json").read_text()) == res
    runner.write_json(None, res)  # no path: nothing
    runner.plot(res["rows"], _bench().plot, tmp_path / "p.png", title="toy")
    assert (tmp_path / "p.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="nothing to plot"):
        runner.plot(res["rows"], Plot(x="n", panel="case", panels=["none"]), tmp_path / "q.png")


def test_on_row_setup_skip_and_ratio_options():
    """``on_row`` sees each row as it is measured; ``setup`` may skip a whole config; a ratio
    on another key, inverted, unrounded; ``add_ratios`` on saved rows."""

    def setup(cfg):
        if cfg["n"] == 16:
            raise Skip("16: budget spent")
        return cfg["n"] * 10

    seen = []
    ratios = {
        "vs_slow": Ratio("slow", None, key="ms", invert=True, on_baseline=True),
        "of_slow": Ratio("slow", 1, key="extra_ms"),
    }

    def measure(cfg, provider, state):
        ms = {"slow": 4.0, "fast": 1.0}[provider] * cfg["n"]
        return {"ms": ms, "extra_ms": 2 * ms}

    b = _bench(setup=setup, providers=["slow", "fast"], measure=measure, ratios=ratios)
    res = runner.run(b, log=None, on_row=lambda r: seen.append(dict(r)))
    assert [(r["n"], r["method"]) for r in seen] == [(8, "slow"), (8, "fast")]
    assert "vs_slow" not in seen[1]  # on_row comes before the config's ratios
    assert res["notes"] == ["16: budget spent"]
    slow, fast = res["rows"]
    assert slow["vs_slow"] == 1.0 and "of_slow" not in slow
    assert fast["vs_slow"] == 0.25 and fast["of_slow"] == 4.0
    runner.add_ratios(seen, {"x": Ratio("slow", 2)}, ["case", "n"])
    assert seen[1]["x"] == 4.0 and "x" not in seen[0]


def test_write_json_default(tmp_path):
    runner.write_json(tmp_path / "d.json", {"dtype": object}, default=str)
    assert "object" in json.loads((tmp_path / "d.json").read_text())["dtype"]
