"""Figure 5's models from the passkey experiment: the runs are found by their config, the
probed "after" model is exactly the checkpoint's weights (and the load check refuses anything
else), "before" is the trainer's own initial model, and the probe documents have the run's
geometry (the gated recipe's: 4096 tokens in blocks of 32)."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from powerattn.eval import probe, probe_runs
from powerattn.experiments.passkey import PRESETS, plan, run_one
from powerattn.training.config import TrainConfig
from powerattn.training.trainer import CHECKPOINT, CONFIG, Trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An experiment folder with the smoke-mix main run of power, seed 0 (trained, evaluated)."""
    out = tmp_path_factory.mktemp("passkey")
    for spec in plan("smoke-mix", ["main"], ["power"], seeds=[0]):
        run_one(spec, out, PRESETS["smoke-mix"], progress=False)
    return out


def test_find_run_by_config(runs, tmp_path):
    run_dir = probe_runs.find_run(runs, "power", 0)
    assert run_dir == runs / "runs" / "main-power"
    assert probe_runs.find_run(runs / "runs", "power", 0) == run_dir
    with pytest.raises(ValueError, match=r"no main runs of 'full' .*main-power \(power, seed 0\)"):
        probe_runs.find_run(runs, "full", 0)
    with pytest.raises(ValueError, match="no main runs of 'power' with seed 1"):
        probe_runs.find_run(runs, "power", 1)
    bare = tmp_path / "runs" / "main-power"
    bare.mkdir(parents=True)
    shutil.copy(run_dir / CONFIG, bare / CONFIG)
    with pytest.raises(ValueError, match="has no checkpoint.pt"):
        probe_runs.find_run(tmp_path, "power", 0)


def test_after_is_the_checkpoint_and_before_the_trainers_initial_model(runs, tmp_path):
    run_dir = probe_runs.find_run(runs, "power", 0)
    cfg, init, trained, facts = probe_runs.load_run(run_dir)
    state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    assert facts["step"] == state["step"] == cfg.total_steps
    weights = trained.state_dict()
    assert set(weights) == set(state["model"]) and facts["tensors"] == len(weights)
    assert all(torch.equal(v, state["model"][k]) for k, v in weights.items())
    # Training changed the model: "before" and "after" are different models.
    assert not all(torch.equal(v, init.state_dict()[k]) for k, v in weights.items())
    # The trainer of the same config starts from "before" and resumes to "after".
    fresh = Trainer(TrainConfig.from_dict(state["config"]), tmp_path / "fresh", progress=False)
    assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in init.state_dict().items())
    resumed = Trainer(TrainConfig.from_dict(state["config"]), run_dir, progress=False)
    assert resumed.load_checkpoint()
    res = probe_runs.probe_run(run_dir, tmp_path / "probe", per_key=4, device="cpu")
    want = probe.probe_model(resumed.model, resumed.pattern, cfg.final_seq_len, per_key=4)
    assert np.array_equal(np.asarray(res["after"]), want["accuracy"])
    assert (
        res["source"]["checkpoint_sha256"]
        == hashlib.sha256((run_dir / CHECKPOINT).read_bytes()).hexdigest()
    )


def test_probe_documents_have_the_runs_geometry(runs, tmp_path):
    run_dir = probe_runs.find_run(runs, "power", 0)
    res = probe_runs.probe_run(run_dir, tmp_path, per_key=4, device="cpu")
    saved = json.loads((tmp_path / "power-s0" / "probe.json").read_text())
    assert saved["after"] == res["after"]
    cfg = TrainConfig.from_dict(json.loads((run_dir / CONFIG).read_text()))
    assert res["seq_len"] == cfg.final_seq_len == 384 and res["block_size"] == 32
    acc = np.asarray(res["after"])
    assert acc.shape == np.asarray(res["before"]).shape == (cfg.model.layers + 1, 384 // 32)
    assert res["steps"] == res["steps_planned"] == cfg.total_steps and res["documents"] == 24
    # The experiment's own evaluation of this checkpoint comes along.
    assert set(res["passkey"]["exact_match"]) == {"320", "384", "448"}


def test_gated_recipe_geometry():
    """The GPU campaign's runs: gpu-mix, 5500 steps, documents of 4096 tokens = 128 blocks."""
    specs = plan("gpu-mix", ["main"], ["sliding_window", "power", "full"], seeds=[0])
    assert [s.name for s in specs] == ["main-sliding_window", "main-power", "main-full"]
    for s in specs:
        pattern = s.config.build_pattern()
        assert s.config.final_seq_len == 4096 and s.config.total_steps == 5500
        assert pattern.block_size == s.config.task.block_size == 32
    ids, labels, _ = probe.probe_documents(4096, per_key=1)
    assert ids.shape == (6, 4096) and sorted(labels) == list(range(6))


def test_load_check_refuses_what_is_not_the_checkpoint(runs, tmp_path):
    src = probe_runs.find_run(runs, "power", 0)
    bad = tmp_path / "runs" / "main-power"
    shutil.copytree(src, bad)
    state = torch.load(bad / CHECKPOINT, map_location="cpu", weights_only=False)
    name = next(iter(state["model"]))
    # Loads without complaint (cast to float32), but it is not what the checkpoint holds.
    state["model"][name] = state["model"][name].double() + 1e-12
    torch.save(state, bad / CHECKPOINT)
    with pytest.raises(ValueError, match="differs from the checkpoint"):
        probe_runs.load_run(bad)
    cfg = json.loads((bad / CONFIG).read_text())
    cfg["seed"] = 5
    (bad / CONFIG).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="describe different runs"):
        probe_runs.load_run(bad)


def test_training_refuses_other_presets(tmp_path):
    with pytest.raises(ValueError, match=r"preset must be one of \['gpu-mix', 'smoke-mix'\]"):
        probe_runs.train_runs(tmp_path, "gpu", ["power"], [0])
    assert not any(tmp_path.iterdir())
