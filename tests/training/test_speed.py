"""The Trainer's opt-in speed options (fused AdamW, torch.compile, pinned batches): off by
default, validated, recorded, resumable either way, and training the same model as the
default up to float rounding. "Up to float rounding" is measured, not assumed: the tolerance
is twice the distance between the default float32 run and the same run in float64."""

import json
import os

import pytest
import torch
from test_trainer import tiny_config

from powerattn.training import Stage, TrainConfig, Trainer
from powerattn.training import trainer as trainer_mod
from powerattn.training.config import SPEED_OPTIONS

STEPS = 6


def speed_config(**kw) -> TrainConfig:
    # Mixed lengths (two compiled graphs) and the next-token loss (every loss branch).
    return tiny_config(stages=[Stage(384, STEPS, mix=[320])], lm_weight=1.0, **kw)


def run(tmp_path, name: str, double: bool = False, **kw):
    """Per-step losses and final parameters (float64) of a tiny run."""
    tr = Trainer(speed_config(**kw), tmp_path / name, progress=False)
    if double:  # in place: the optimizer keeps the same parameter objects
        tr.model.double()
    tr.train()
    lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
    losses = torch.tensor([json.loads(ln)["loss"] for ln in lines], dtype=torch.float64)
    params = torch.cat([p.detach().double().ravel() for p in tr.model.parameters()])
    assert len(losses) == STEPS
    run.last_model = tr.model
    return losses, params


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """The default float32 run and its float32-vs-float64 error (losses, parameters)."""
    tmp = tmp_path_factory.mktemp("baseline")
    losses, params = run(tmp, "f32")
    losses64, params64 = run(tmp, "f64", double=True)
    # The logged losses are float32 in both runs (the loss is computed in float32), so their
    # error is at least the rounding of a float32 loss: often the two runs log equal values.
    ulp = torch.finfo(torch.float32).eps * losses.abs().max()
    err = (torch.maximum((losses - losses64).abs().max(), ulp), (params - params64).abs().max())
    assert err[1] > 0  # a tolerance of 0 would test nothing sensible
    return losses, params, err


def assert_same_training(got, baseline) -> None:
    losses, params, (loss_err, param_err) = baseline
    assert (got[0] - losses).abs().max() <= 2 * loss_err
    assert (got[1] - params).abs().max() <= 2 * param_err


def test_speed_options_default_off_and_validated():
    cfg = TrainConfig()
    assert not any(getattr(cfg, name) for name in SPEED_OPTIONS)
    for name in SPEED_OPTIONS:
        with pytest.raises(ValueError, match=name):
            tiny_config(**{name: "yes"}).validate()


def test_speed_options_are_recorded_and_resume_either_way(tmp_path):
    """A run checkpointed without the options resumes with them (and the config records
    them), because they change how a step is computed, not the model: a campaign's runs
    may switch them on midway."""
    cfg = speed_config()
    Trainer(cfg, tmp_path, progress=False).train(stop_at=3)
    fast = speed_config(fused_optim=True, pin_memory=True)
    tr = Trainer(fast, tmp_path, progress=False)
    assert tr.load_checkpoint() and tr.step == 2  # checkpoint_every=2
    tr.train()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["fused_optim"] is True and saved["pin_memory"] is True
    assert saved["compile"] is False
    assert TrainConfig.from_dict(saved).fused_optim is True


def test_fused_optim_trains_like_the_default(tmp_path, baseline):
    tr = Trainer(speed_config(fused_optim=True), tmp_path / "x", progress=False)
    assert all(g.get("fused") for g in tr.optimizer.param_groups)
    assert_same_training(run(tmp_path, "fused", fused_optim=True), baseline)


def test_a_wrong_update_is_caught(tmp_path, baseline):
    """The comparison can fail: a learning rate 1 % off is far outside the tolerance."""
    cfg = speed_config()
    cfg.optim.lr *= 1.01
    tr = Trainer(cfg, tmp_path / "lr", progress=False)
    tr.train()
    params = torch.cat([p.detach().double().ravel() for p in tr.model.parameters()])
    assert (params - baseline[1]).abs().max() > 2 * baseline[2][1]


def test_compile_trains_like_the_default(tmp_path, baseline, monkeypatch):
    """torch.compile's tracing and autograd graphs (the "aot_eager" backend: no code
    generation, seconds on a CPU); Inductor's code is checked by the slow test below and on
    the GPU by scripts/gpu_train_speed.py."""
    monkeypatch.setattr(trainer_mod, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    assert_same_training(run(tmp_path, "compiled", compile=True), baseline)
    # One graph per length (320, 384), no graph break; a further step at each length
    # compiles nothing.
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
    tr = Trainer(speed_config(compile=True), tmp_path / "compiled", progress=False)
    tr.model = run.last_model
    for n in (320, 384):
        tr.loss(torch.randint(0, 200, (3, n)))[0].backward()
    assert counters["stats"]["unique_graphs"] == 2


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("POWERATTN_SLOW_TESTS"),
    reason="Inductor compiles for ~40 s on a 2-core CPU (set POWERATTN_SLOW_TESTS=1); "
    "scripts/gpu_train_speed.py checks compile=True on the GPU",
)
def test_compile_with_inductor_trains_like_the_default(tmp_path, baseline):
    torch._dynamo.reset()
    assert_same_training(run(tmp_path, "inductor", compile=True), baseline)


def test_too_many_compiled_graphs_is_an_error_not_a_silent_eager_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_mod, "COMPILE_BACKEND", "aot_eager")
    monkeypatch.setattr(trainer_mod, "_distinct_lengths", lambda cfg: -3)  # limit 2
    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else None
    # config.patch, not monkeypatch: monkeypatch's undo deletes the attribute of torch's
    # config module, which hides the setting for every later test.
    torch._dynamo.reset()
    cfg = tiny_config(stages=[Stage(384, 4, mix=[320, 352])], compile=True)
    with (
        torch._dynamo.config.patch(**{limit or "cache_size_limit": 1}),
        pytest.raises(RuntimeError, match="compile=False"),
    ):
        # three lengths, so a third graph is needed within the first steps (seed 0)
        Trainer(cfg, tmp_path, progress=False).train()
    torch._dynamo.reset()


def test_compiled_flex_loss_is_one_graph_per_length(tmp_path, monkeypatch):
    """The compiled loss with FlexAttention in every sparse layer: one graph per document
    length, no graph break, the same losses as the float32 model up to its own rounding.
    Regression (H200, 8 layers x 5 lengths): the BlockMask, looked up inside the trace,
    broke the graph in every layer; each layer's forward became a frame of its own,
    recompiled per layer and length until dynamo's recompile limit raised. The trainer now
    builds it outside (Trainer.block_mask). FlexAttention has no backward on the CPU, so
    the steps run forward only; the backward graph is AOTAutograd's of the same graph."""
    monkeypatch.setattr(trainer_mod, "COMPILE_BACKEND", "aot_eager")
    from torch._dynamo.utils import counters

    from powerattn.training import ModelConfig

    lengths = [256, 320, 384]
    model = ModelConfig(layers=3, hidden=32, heads=2, kv_heads=1, intermediate=64)
    stages = [Stage(384, 4, mix=[256, 320])]
    cfg = tiny_config(model=model, stages=stages, backend="flex", compile=True)
    compiled = Trainer(cfg, tmp_path / "flex", progress=False)
    # The same weights (seeded) on the eager dense backend: float32 and float64.
    dense = tiny_config(model=model, stages=stages, backend="dense")
    f32 = Trainer(dense, tmp_path / "f32", progress=False)
    f64 = Trainer(dense, tmp_path / "f64", progress=False)
    f64.model.double()
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 200, (3, n), generator=gen) for n in lengths * 2]
    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        for ids in batches:
            got, want, ref = (tr.loss(ids)[0].double() for tr in (compiled, f32, f64))
            ulp = torch.finfo(torch.float32).eps * ref.abs()
            assert (got - ref).abs() <= 2 * torch.maximum((want - ref).abs(), ulp)
    assert counters["stats"]["unique_graphs"] == len(lengths)
    assert not counters["graph_break"], dict(counters["graph_break"])
    torch._dynamo.reset()
