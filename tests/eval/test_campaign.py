"""Intervals of the campaign summaries: RULER's paired bootstrap and probing's Wilson."""

from __future__ import annotations

import pytest

from powerattn.eval import campaign


def _run(name, scores):
    preds = [{"task": t, "score": s} for t, ss in scores.items() for s in ss]
    return {"name": name, "predictions": preds}


def test_paired_average_gap():
    a = _run("a", {"vt": [1, 1, 1, 1], "cwe": [1, 0, 1, 0]})
    b = _run("b", {"vt": [0, 0, 0, 0], "cwe": [1, 0, 1, 0]})
    g = campaign.paired_average_gap(a, b)
    assert g["gap"] == pytest.approx(0.5)  # (1 + 0) / 2
    assert g["ci95"] == pytest.approx([0.5, 0.5])  # the difference is the same in every draw
    same = campaign.paired_average_gap(a, a)
    assert same["gap"] == 0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="other samples"):
        campaign.paired_average_gap(a, _run("c", {"vt": [1]}))


def test_wilson():
    lo, hi = campaign.wilson(0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-3)
    lo, hi = campaign.wilson(48, 48)
    assert hi == pytest.approx(1.0) and 0.9 < lo < 0.95
    with pytest.raises(ValueError, match="positive"):
        campaign.wilson(0, 0)


def test_hybrid_layers_fit_the_papers_rule():
    assert campaign.hybrid_layers("gpu") == [5, 6]  # 7 layers: exactly "2 of every 7"
    assert campaign.hybrid_layers("tiny") == [0, 1]  # a partial group keeps its last 2
