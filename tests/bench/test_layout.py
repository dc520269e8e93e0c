"""``powerattn bench layout`` on the runner: registration order, the plot (timings unchecked)."""

from __future__ import annotations

import pytest

from powerattn.bench import layout
from powerattn.cli import main
from powerattn.patterns import PATTERNS


def test_rows_in_registration_order_and_quiet():
    rows = layout.run(seq_lens=(2048,), repeats=1, patterns=["full", "power"], log=None)
    want = [n for n in PATTERNS if n in ("full", "power")]
    assert [r["pattern"] for r in rows] == want
    assert all(r["total_ms"] >= r["layout_ms"] > 0 for r in rows)
    with pytest.raises(ValueError, match="unknown"):
        layout.run(seq_lens=(2048,), patterns=["powr"])


def test_plot_flag(tmp_path, capsys):
    png = tmp_path / "l.png"
    argv = ["bench", "layout", "--seq-lens", "2048", "4096", "--repeats", "1", "--plot", str(png)]
    assert main(argv) == 0
    assert png.stat().st_size > 1000
    out = capsys.readouterr().out
    assert "total ms" in out and "all under" in out
