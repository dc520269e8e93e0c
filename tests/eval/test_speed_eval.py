"""The trainer's speed options in the evaluation campaigns: ``--speed`` of ``eval ppl``,
``eval ruler --train`` and ``eval probe`` reaches every run's TrainConfig, is recorded in its
outputs, is validated before any run starts, and is no part of a run's identity (a run
resumes with it switched on or off); and SPEED=auto's decision (:func:`choose_speed`) from a
``scripts/gpu_train_speed.py`` measurement. Compile runs on the "aot_eager" backend here (the
same tracing and autograd graphs as Inductor without code generation); Inductor's code is
checked on the GPU (scripts/gpu_train_speed.py, SPEED=auto of scripts/gpu_eval.sh)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from powerattn.commands import eval as eval_cmd
from powerattn.eval import campaign, lm
from powerattn.training import trainer as trainer_mod
from powerattn.training.config import SPEED_OPTIONS


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="powerattn")
    eval_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


def _config(run_dir) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def test_speed_options_validated():
    assert lm.speed_options(None) == []
    assert lm.speed_options(["fused_optim", "compile", "compile"]) == ["compile", "fused_optim"]
    with pytest.raises(ValueError, match=r"\['turbo'\] unknown; valid: \['fused_optim'"):
        lm.speed_options(["compile", "turbo"])
    cfg = lm.train_config(lm.PRESETS["tiny"], "power", 0, speed=["compile"])
    assert cfg.compile and not cfg.fused_optim and not cfg.pin_memory
    assert not any(getattr(lm.train_config(lm.PRESETS["tiny"], "power", 0), n)
                   for n in SPEED_OPTIONS)  # fmt: skip
    ruler_cfg = campaign.ruler_config("tiny", "power", 0, 2, "cpu", [], ["fused_optim"])
    assert ruler_cfg.fused_optim and ruler_cfg.loss_on == "answer"


def test_cli_refuses_unknown_speed_before_any_run(tmp_path, tiny_corpus):
    out = tmp_path / "runs"
    with pytest.raises(ValueError, match="valid: .*compile"):
        _run("ppl", "--corpus", str(tiny_corpus), "--out", str(out), "--preset", "tiny",
             "--device", "cpu", "--speed", "compile,fast")  # fmt: skip
    with pytest.raises(ValueError, match="valid: .*compile"):
        _run("ruler", "--train", "--out", str(out), "--preset", "tiny", "--speed", "nope")
    with pytest.raises(ValueError, match="valid: .*compile"):
        _run("probe", "--out", str(out), "--preset", "smoke-mix", "--speed", "nope")
    with pytest.raises(ValueError, match="--speed applies to training"):
        _run("ruler", "--model", str(out), "--speed", "compile")
    assert not out.exists() or not any(out.iterdir())  # nothing started
    assert eval_cmd.main(["ppl", "--corpus", str(tiny_corpus), "--out", str(out),
                          "--speed", "nope"]) == 2  # fmt: skip


def test_speed_reaches_every_training_run_and_is_not_identity(tmp_path, tiny_corpus, monkeypatch):
    """compile (aot_eager) for two language models trained in one process (the compiled
    graphs are reset between runs), fused_optim for the RULER continuation, compile for the
    probe; then the language models are run again without --speed: they resume (a speed
    option in the identity would refuse the checkpoint) and record the new setting."""
    monkeypatch.setattr(trainer_mod, "COMPILE_BACKEND", "aot_eager")
    compiled, resets = [], []
    real_compile, real_reset = trainer_mod.compile_loss, campaign._fresh_compile_caches

    def compile_loss(cfg):
        compiled.append(cfg.pattern.name)
        return real_compile(cfg)

    def fresh_caches():
        resets.append(len(compiled))
        real_reset()

    monkeypatch.setattr(trainer_mod, "compile_loss", compile_loss)
    monkeypatch.setattr(campaign, "_fresh_compile_caches", fresh_caches)
    runs, res = tmp_path / "runs", tmp_path / "results"
    common = ["--preset", "tiny", "--device", "cpu"]
    assert _run("ppl", "--corpus", str(tiny_corpus), "--out", str(runs / "lm"), *common,
                "--patterns", "full,power", "--speed", "compile",
                "--results", str(res / "lm")) == 0  # fmt: skip
    assert compiled == ["full", "power"] and resets == [0, 1]  # a fresh cache for each run
    for name in ("full-s0", "power-s0"):
        assert _config(runs / "lm" / name)["compile"] is True
        ppl = json.loads((runs / "lm" / name / "ppl.json").read_text())
        assert ppl["speed"] == ["compile"] and ppl["steps"] == 3 and ppl["check_pass"]
    details = json.loads((res / "lm" / "details.json").read_text())
    assert details["throughput"]["runs"]["power-s0"]["speed"] == ["compile"]

    assert _run("ruler", "--train", "--lm-runs", str(runs / "lm"), "--out", str(runs / "ruler"),
                *common, "--patterns", "power", "--samples", "1", "--tasks", "vt",
                "--speed", "fused_optim", "--results", str(res / "ruler")) == 0  # fmt: skip
    cfg = _config(runs / "ruler" / "power-s0")
    assert cfg["fused_optim"] is True and cfg["compile"] is False
    assert json.loads((runs / "ruler" / "power-s0" / "ruler.json").read_text())["speed"] == [
        "fused_optim"
    ]

    assert _run("probe", "--out", str(runs / "probe"), "--preset", "smoke-mix",
                "--device", "cpu", "--patterns", "power", "--per-key", "4",
                "--speed", "compile", "--results", str(res / "probing")) == 0  # fmt: skip
    trained = runs / "probe" / "passkey" / "runs" / "main-power"  # the passkey experiment's
    assert compiled[-1] == "power" and _config(trained)["compile"] is True
    assert json.loads((runs / "probe" / "power-s0" / "probe.json").read_text())["speed"] == [
        "compile"
    ]

    # Again without --speed: the checkpoints (complete) are resumed, not refused or retrained.
    before = (runs / "lm" / "power-s0" / "metrics.jsonl").read_text()
    assert _run("ppl", "--corpus", str(tiny_corpus), "--out", str(runs / "lm"), *common,
                "--patterns", "full,power", "--results", str(res / "lm")) == 0  # fmt: skip
    assert (runs / "lm" / "power-s0" / "metrics.jsonl").read_text() == before
    assert _config(runs / "lm" / "power-s0")["compile"] is False
    ppl = json.loads((runs / "lm" / "power-s0" / "ppl.json").read_text())
    assert ppl["speed"] == [] and ppl["steps"] == 3
    torch._dynamo.reset()


def _speed_json(path, settings: dict) -> str:
    rows = {"default": {"setting": "default", "steps_per_s": 10.0}}
    for name, (steps_per_s, passed) in settings.items():
        rows[name] = {
            "setting": name,
            "steps_per_s": steps_per_s,
            "check": {"max_abs_diff": 0.001 if passed else 0.1, "tol": 0.01, "pass": passed},
        }
    path.write_text(json.dumps({"models": {"lm": {"settings": rows}}}))
    return str(path)


def test_choose_speed(tmp_path):
    f = tmp_path / "train_speed.json"
    speed, why = campaign.choose_speed(_speed_json(f, {"compile": (24.0, True)}))
    assert speed == ["compile"] and "2.40x" in why
    # Faster but its loss check failed: the default, and the log says why.
    speed, why = campaign.choose_speed(_speed_json(f, {"compile": (24.0, False)}))
    assert speed == [] and "FAILED" in why
    # Passed but not faster enough (the threshold is a parameter).
    assert campaign.choose_speed(_speed_json(f, {"compile": (12.0, True)}))[0] == []
    assert campaign.choose_speed(f, min_speedup=1.1)[0] == ["compile"]
    # The best passing setting; "all" switches every option on.
    speed, _ = campaign.choose_speed(
        _speed_json(f, {"compile": (20.0, True), "all": (22.0, True), "fused_optim": (30, False)})
    )
    assert speed == list(SPEED_OPTIONS)
    # No measurement, another model only, or a measurement cut before the default: default.
    assert campaign.choose_speed(tmp_path / "missing.json")[0] == []
    assert campaign.choose_speed(f, model="passkey")[0] == []
    f.write_text(json.dumps({"models": {"lm": {"settings": {}}}}))
    speed, why = campaign.choose_speed(f)
    assert speed == [] and "no usable measurement" in why


def test_choose_speed_reads_what_gpu_train_speed_writes(tmp_path):
    """The contract between scripts/gpu_train_speed.py and SPEED=auto: the script's smoke mode
    (tiny model, CPU; fused_optim instead of compile, which would run Inductor) writes a
    train_speed.json that choose_speed decides from, naming the setting it measured."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OUT": str(tmp_path), "GPU_TRAIN_SPEED_SMOKE": "1",
           "PYTHONPATH": str(root / "src"), "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    cmd = [sys.executable, str(root / "scripts" / "gpu_train_speed.py"), "--models", "lm",
           "--settings", "default,fused_optim", "--no-shared", "--seconds", "0.3"]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    speed, why = campaign.choose_speed(tmp_path / "train_speed.json", min_speedup=0.0)
    assert "fused_optim" in why and "no usable measurement" not in why
    measured = json.loads((tmp_path / "train_speed.json").read_text())["models"]["lm"]
    assert speed == (
        ["fused_optim"] if measured["settings"]["fused_optim"]["check"]["pass"] else []
    )
