"""Intervals of the campaign summaries: RULER's paired bootstrap and probing's Wilson."""

from __future__ import annotations

import json

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


def test_results_from_a_base_call_go_to_lm_base(tmp_path):
    """A continued-pretraining base (gpu_eval.sh ``LM_DIR=base``: runs.tgz with base/ only) is
    rebuilt into results/lm-base, from its runs alone; results/lm is not touched."""
    import tarfile
    from pathlib import Path

    from powerattn.commands import eval as eval_cmd

    committed = Path(__file__).resolve().parents[2] / "results"
    out, root = tmp_path / "out", tmp_path / "results"
    out.mkdir()
    with tarfile.open(out / "runs.tgz", "w:gz") as tar:
        tar.add(committed / "lm" / campaign.PER_RUN, arcname="base")
    assert eval_cmd.main(["results", "--from", str(out), "--root", str(root)]) == 0
    assert not (root / "lm").exists()
    got = json.loads((root / "lm-base" / "summary.json").read_text())
    assert got == json.loads((committed / "lm" / "summary.json").read_text())


def test_results_skip_a_link_in_runs_tgz(tmp_path):
    """A runs.tgz holding a link (``lm -> /tmp/eval/base``, made on the GPU machine to point
    RULER at LM_DIR=base's runs) is read: the link is skipped (tarfile's ``data`` filter
    refuses absolute links, which read as "not a tar archive" before), the real runs count."""
    import tarfile
    from pathlib import Path

    from powerattn.commands import eval as eval_cmd

    committed = Path(__file__).resolve().parents[2] / "results"
    out, root = tmp_path / "out", tmp_path / "results"
    out.mkdir()
    with tarfile.open(out / "runs.tgz", "w:gz") as tar:
        tar.add(committed / "lm" / campaign.PER_RUN, arcname="base")
        link = tarfile.TarInfo("lm")
        link.type, link.linkname = tarfile.SYMTYPE, "/tmp/eval/base"
        tar.addfile(link)
    assert eval_cmd.main(["results", "--from", str(out), "--root", str(root)]) == 0
    assert not (root / "lm").exists()
    got = json.loads((root / "lm-base" / "summary.json").read_text())
    assert got == json.loads((committed / "lm" / "summary.json").read_text())


def _ruler_runs(averages, n=40, seeds=(0,), **override):
    """Hybrid runs (full attention only plain) whose every sample scores 1 with the model's
    probability ``averages[pattern]``, the same hits for every seed (tasks vt and cwe)."""
    runs = []
    for p, avg in averages.items():
        for s in seeds:
            hits = [1.0 if (i * 0.618) % 1 < avg else 0.0 for i in range(n)]
            full_layers = [] if p == "full" else [5, 6]
            name = f"{p}-full5_6-s{s}" if full_layers else f"{p}-s{s}"
            run = _run(name, {"vt": hits[: n // 2], "cwe": hits[n // 2 :]})
            run.update(pattern=p, seed=s, full_layers=full_layers, steps=10, steps_planned=10,
                       categories={"average": sum(hits) / n})  # fmt: skip
            run.update(override.get(name, {}))
            runs.append(run)
    return runs


PAPER_TABLE2 = {"full": 0.95, "power": 0.7, "dilated": 0.45, "stride_slash": 0.45,
                "longnet": 0.4, "sliding_window": 0.1}  # fmt: skip


def test_table2_verdicts():
    """The rules of docs/evaluation.md on runs whose outcome is known: the paper's order is
    reproduced, a reversal refutes, a weak full attention (the floor) or a missing or
    unfinished model leaves the claims open."""
    v = campaign.table2_verdicts(_ruler_runs(PAPER_TABLE2, seeds=(0, 1)))
    assert v["floor"]["reached"] and v["seeds"] == [0, 1]
    assert set(v["claims"].values()) == {"reproduced"}
    assert v["pairs"]["full - power"]["beats"] == 1
    assert v["pairs"]["stride_slash - dilated"]["beats"] == 0  # equal averages
    runs = _ruler_runs(PAPER_TABLE2)
    dilated = next(r for r in runs if r["pattern"] == "dilated")
    dilated["predictions"] = dilated["predictions"][::-1]  # same average, other samples hit
    gap = campaign.table2_verdicts(runs)["pairs"]["stride_slash - dilated"]
    assert gap["per_seed"][0]["ci95"][0] < 0 < gap["per_seed"][0]["ci95"][1]
    assert gap["beats"] == 0  # an interval across 0 decides nothing
    v = campaign.table2_verdicts(_ruler_runs({**PAPER_TABLE2, "dilated": 0.9}))
    assert v["claims"]["power_best_sparse"] == "refuted"
    assert v["claims"]["sliding_window_last"] == "reproduced"
    v = campaign.table2_verdicts(_ruler_runs({**PAPER_TABLE2, "sliding_window": 0.6}))
    assert v["claims"]["sliding_window_last"] == "refuted"
    weak = {p: a * 0.15 for p, a in PAPER_TABLE2.items()}  # full attention at 0.14
    v = campaign.table2_verdicts(_ruler_runs(weak))
    assert not v["floor"]["reached"]
    assert set(v["claims"].values()) == {"inconclusive (floor not reached)"}
    cut = {"longnet-full5_6-s0": {"steps": 4}}
    v = campaign.table2_verdicts(_ruler_runs(PAPER_TABLE2, **cut))
    assert v["excluded_runs"] == ["longnet-full5_6-s0"]
    assert v["claims"]["power_best_sparse"] == "inconclusive"
    assert v["claims"]["full_first"] == "inconclusive"
    no_full = {p: a for p, a in PAPER_TABLE2.items() if p != "full"}
    v = campaign.table2_verdicts(_ruler_runs(no_full))
    assert set(v["claims"].values()) == {"inconclusive (full attention missing)"}
