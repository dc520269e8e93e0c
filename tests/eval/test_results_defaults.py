"""Where ``eval ppl``, ``eval ruler`` and ``eval probe`` write their summary, and which
passkey preset ``eval probe`` trains by default. The summary writers and the training are
replaced by stand-ins: only the CLI's choices are under test (the real ones:
test_cli_eval.py)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from powerattn.commands import eval as eval_cmd
from powerattn.eval import probe_runs

WRITERS = {
    "ppl": "write_lm_results",
    "ruler": "write_ruler_results",
    "probe": "write_probe_results",
}
COMMITTED = {"ppl": "lm", "ruler": "ruler", "probe": "probing"}  # the repository's results/


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="powerattn")
    eval_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


@pytest.fixture
def writes(monkeypatch):
    """Every summary writer replaced by one that writes summary.json naming its runs; returns
    the list of (runs, results) it was called with."""
    calls = []

    def fake(runs, results):
        calls.append((str(runs), str(results)))
        results.mkdir(parents=True, exist_ok=True)
        (results / "summary.json").write_text(json.dumps({"runs": str(runs)}))
        return "table"

    for name in WRITERS.values():
        monkeypatch.setattr(eval_cmd, name, fake)
    return calls


def _summary(results) -> str:
    return json.loads((results / "summary.json").read_text())["runs"]


@pytest.mark.parametrize("what", list(WRITERS))
def test_default_results_live_under_the_runs_not_the_working_directory(
    tmp_path, monkeypatch, writes, what
):
    """In a checkout, the default no longer rewrites the committed results/<area>."""
    monkeypatch.chdir(tmp_path)
    committed = tmp_path / "results" / COMMITTED[what]
    committed.mkdir(parents=True)
    (committed / "summary.json").write_text('{"committed": true}')
    runs = tmp_path / "runs" / what
    runs.mkdir(parents=True)
    assert _run(what, "--summarize", str(runs)) == 0
    assert (committed / "summary.json").read_text() == '{"committed": true}'
    assert _summary(runs / "results") == str(runs)
    assert (runs / "results" / "written_from.txt").read_text() == f"{runs.resolve()}\n"


@pytest.mark.parametrize("what", list(WRITERS))
def test_a_summary_of_other_runs_is_refused_without_force(tmp_path, writes, what, capsys):
    res = tmp_path / "res"
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    # A folder holding a summary of unrecorded runs (the committed results; an older call).
    res.mkdir()
    (res / "summary.json").write_text('{"committed": true}')
    with pytest.raises(ValueError, match="--force") as err:
        _run(what, "--summarize", str(a), "--results", str(res))
    assert "another --results" in str(err.value) and "not recorded" in str(err.value)
    assert (res / "summary.json").read_text() == '{"committed": true}' and writes == []
    assert eval_cmd.main([what, "--summarize", str(a), "--results", str(res)]) == 2  # one line
    assert capsys.readouterr().err.startswith("powerattn eval: error: --results")
    assert _run(what, "--summarize", str(a), "--results", str(res), "--force") == 0
    assert _summary(res) == str(a)
    # Now of a: a's summary again is rewritten (a rerun, a resume), b's is refused.
    assert _run(what, "--summarize", str(a), "--results", str(res)) == 0
    with pytest.raises(ValueError, match=f"other runs \\({a.resolve()}"):
        _run(what, "--summarize", str(b), "--results", str(res))
    assert _summary(res) == str(a)
    # An empty folder, or one without a summary, is written.
    (tmp_path / "empty").mkdir()
    assert _run(what, "--summarize", str(b), "--results", str(tmp_path / "empty")) == 0


def test_the_committed_layout_is_rewritten_from_its_own_per_run(tmp_path, writes):
    """results/AREA from results/AREA/per_run (what `eval results` does) is the same runs; no
    machine path is recorded there."""
    res = tmp_path / "results" / "lm"
    (res / "per_run").mkdir(parents=True)
    (res / "summary.json").write_text("{}")
    assert _run("ppl", "--summarize", str(res / "per_run"), "--results", str(res)) == 0
    assert not (res / "written_from.txt").exists()


def test_refused_before_any_training(tmp_path, monkeypatch, writes):
    from powerattn.eval import campaign

    def no_training(*a, **k):
        raise AssertionError("trained before the --results check")

    monkeypatch.setattr(campaign, "lm_specs", no_training)
    monkeypatch.setattr(campaign, "run_pool", no_training)
    monkeypatch.setattr(probe_runs, "train_runs", no_training)
    res = tmp_path / "res"
    res.mkdir()
    (res / "summary.json").write_text("{}")
    out = str(tmp_path / "out")
    for argv in (
        ["ppl", "--corpus", str(tmp_path), "--out", out, "--device", "cpu"],
        ["ruler", "--train", "--out", out, "--device", "cpu", "--preset", "tiny"],
        ["probe", "--out", out, "--device", "cpu"],
    ):
        with pytest.raises(ValueError, match="already holds a summary.json"):
            _run(*argv, "--results", str(res))


def test_the_gpu_scripts_flow_reruns_into_its_own_results(tmp_path, monkeypatch, writes):
    """scripts/gpu_eval.sh and gpu_probe.sh: a call's part, then --summarize of the same runs
    into the same --results; sent again (a resume), both again."""
    from powerattn.eval import campaign

    monkeypatch.setattr(campaign, "lm_specs", lambda *a, **k: [])
    monkeypatch.setattr(campaign, "run_pool", lambda *a, **k: [])
    monkeypatch.setattr(probe_runs, "find_run", lambda *a: None)
    monkeypatch.setattr(probe_runs, "probe_run", lambda *a: None)
    work = tmp_path / "work"
    lm, res = str(work / "lm"), str(work / "results" / "lm")
    pres = str(work / "results" / "probing")
    for _ in range(2):
        assert _run("ppl", "--corpus", str(tmp_path), "--out", lm, "--device", "cpu",
                    "--results", res) == 0  # fmt: skip
        assert _run("ppl", "--summarize", lm, "--results", res) == 0
        assert _run("probe", "--from-runs", str(tmp_path), "--out", str(work / "probe"),
                    "--device", "cpu", "--results", pres) == 0  # fmt: skip
        assert _run("probe", "--summarize", str(work / "probe"), "--results", pres) == 0
    assert len(writes) == 8


# ---------------------------------------------------------------- eval probe's preset
@pytest.fixture
def trained(monkeypatch):
    """train_runs replaced by one that records its preset and stops the command there."""
    presets = []

    class Stop(Exception):
        pass

    def fake(out, preset, *a, **k):
        presets.append(preset)
        raise Stop

    monkeypatch.setattr(probe_runs, "train_runs", fake)
    return presets, Stop


@pytest.mark.parametrize(
    "cuda, argv, preset",
    [
        (False, [], "smoke-mix"),  # no CUDA: the CPU twin, not days of gpu-mix
        (False, ["--device", "cpu"], "smoke-mix"),
        (False, ["--preset", "gpu-mix"], "gpu-mix"),  # asked for: as given
        (True, [], "gpu-mix"),
        (True, ["--device", "cpu"], "smoke-mix"),
        (True, ["--preset", "smoke-mix"], "smoke-mix"),
    ],
)
def test_probe_preset_defaults_by_cuda(tmp_path, monkeypatch, capsys, trained, cuda, argv, preset):
    presets, stop = trained
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    with pytest.raises(stop):
        _run("probe", "--out", str(tmp_path / "p"), "--patterns", "power", *argv)
    assert presets == [preset]
    err = capsys.readouterr().err
    assert (f"preset {preset}, the default on" in err) == ("--preset" not in argv)  # named


def test_probe_help_names_both_defaults(capsys):
    with pytest.raises(SystemExit):
        _run("probe", "--help")
    out = " ".join(capsys.readouterr().out.split())
    assert "the default with CUDA" in out and "the default without CUDA" in out
