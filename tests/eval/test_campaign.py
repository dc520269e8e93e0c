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


def test_results_from_a_probing_only_call_leaves_lm_alone(tmp_path):
    """``eval results --from`` a call of scripts/gpu_probe.sh (runs.tgz with probe/ and
    passkey/, no lm/ or ruler/): the probing area gets the runs, the summaries and the call's
    log and machine; results/lm, runs included, stays byte for byte as it was."""
    import shutil
    import tarfile
    from pathlib import Path

    from powerattn.commands import eval as eval_cmd

    committed = Path(__file__).resolve().parents[2] / "results"
    out, root = tmp_path / "out", tmp_path / "results"
    out.mkdir()
    with tarfile.open(out / "runs.tgz", "w:gz") as tar:
        tar.add(committed / "probing" / campaign.PER_RUN, arcname="probe")
        tar.add(committed / "probing" / "passkey-runs" / "summary.json", "passkey/summary.json")
    (out / "log.txt").write_text("gpu_probe.sh's log\n")
    (out / "gpu.txt").write_text("the probing call's GPU\n")
    lm_dir = root / "lm"
    shutil.copytree(committed / "lm" / campaign.PER_RUN, lm_dir / campaign.PER_RUN)
    for name in ("call_log.txt", "gpu.txt", "summary.json", "details.json", "table.txt"):
        (lm_dir / name).write_text(f"the lm call's {name}\n")
    before = {p: p.read_bytes() for p in lm_dir.rglob("*") if p.is_file()}

    assert eval_cmd.main(["results", "--from", str(out), "--root", str(root)]) == 0
    assert {p: p.read_bytes() for p in lm_dir.rglob("*") if p.is_file()} == before
    assert not (root / "ruler").exists()
    probing = root / "probing"
    assert (probing / "call_log.txt").read_text() == "gpu_probe.sh's log\n"
    assert (probing / "gpu.txt").read_text() == "the probing call's GPU\n"
    runs = sorted(p.name for p in (probing / campaign.PER_RUN).iterdir())
    assert runs == sorted(p.name for p in (committed / "probing" / campaign.PER_RUN).iterdir())
    for name in ("summary.json", "details.json", "table.txt"):  # as committed
        assert (probing / name).read_bytes() == (committed / "probing" / name).read_bytes()
    assert (probing / "heatmaps.png").stat().st_size > 0
