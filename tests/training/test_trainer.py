import functools
import json

import numpy as np
import pytest
import torch

from powerattn import get_pattern
from powerattn.receptive import hops
from powerattn.training import ModelConfig, OptimConfig, Stage, TrainConfig, Trainer
from powerattn.training.model import build_model
from powerattn.training.trainer import lr_lambda


def tiny_config(**kw) -> TrainConfig:
    cfg = TrainConfig(
        model=ModelConfig(layers=2, hidden=32, heads=2, kv_heads=1, intermediate=64),
        stages=[Stage(320, 4), Stage(384, 4)],
        batch_size=3,
        optim=OptimConfig(lr=3e-3, warmup_steps=2),
        checkpoint_every=2,
        log_every=1,
        device="cpu",
    )
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("recipe", [False, True])
def test_resume_is_exact(tmp_path, recipe):
    """8 steps straight == 4 steps, a 'kill' (the process state is dropped), a fresh trainer
    resuming from the checkpoint, 4 more steps: same parameters, optimizer state, metrics.
    Logs every 3 steps, so the checkpoint at step 4 falls inside a metrics window. ``recipe``:
    with mixed lengths, the next-token loss and a constant LR (more window sums to carry)."""
    cfg = tiny_config(log_every=3)
    if recipe:
        cfg = tiny_config(log_every=3, stages=[Stage(384, 8, mix=[320])], lm_weight=1.0)
        cfg.optim.schedule = "constant"
    straight = Trainer(cfg, tmp_path / "a", progress=False)
    straight.train()
    killed = Trainer(cfg, tmp_path / "b", progress=False)
    killed.train(stop_at=5)  # checkpoint at step 4; step 5's work is lost with the process
    del killed
    resumed = Trainer(cfg, tmp_path / "b", progress=False)
    assert resumed.load_checkpoint() and resumed.step == 4
    resumed.train()
    assert resumed.step == straight.step == cfg.total_steps
    pa, pb = params(straight), params(resumed)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    sa, sb = straight.optimizer.state_dict(), resumed.optimizer.state_dict()
    for i in sa["state"]:
        assert torch.equal(sa["state"][i]["exp_avg"], sb["state"][i]["exp_avg"])
        assert torch.equal(sa["state"][i]["exp_avg_sq"], sb["state"][i]["exp_avg_sq"])
    assert straight.scheduler.get_last_lr() == resumed.scheduler.get_last_lr()

    def losses(d):
        lines = (tmp_path / d / "metrics.jsonl").read_text().splitlines()
        keys = ("step", "loss", "exact_match", "exact_match_by_len", "lm_loss")
        return [tuple(m.get(k) for k in keys) for m in map(json.loads, lines)]

    # The lines after the checkpoint were logged once, over the same windows.
    assert [m[0] for m in losses("a")] == [3, 6, 8]
    assert losses("a") == losses("b")
    if recipe:  # both lengths drawn, the LM loss logged
        assert all(m[4] is not None for m in losses("a"))
        assert {n for m in losses("a") for n in m[3]} == {"320", "384"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resume_on_cuda_restores_the_generators(tmp_path):
    """torch.load(map_location="cuda") brings the saved generator states back on the GPU;
    resuming must still restore them (it raised "RNG state must be a torch.ByteTensor" on an
    H200 in session 6, and the passkey runs started over)."""
    cfg = tiny_config(device="cuda")
    t = Trainer(cfg, tmp_path, progress=False)
    t.train(stop_at=5)  # checkpoint at step 4
    saved = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=False)
    del t
    r = Trainer(cfg, tmp_path, progress=False)
    assert r.load_checkpoint() and r.step == 4
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"])
    assert all(
        torch.equal(a, b)
        for a, b in zip(torch.cuda.get_rng_state_all(), saved["rng"]["cuda"], strict=True)
    )


def test_on_stage_end_is_called_after_each_stage_in_training_mode_again(tmp_path):
    """The callback sees each stage once, right after its last step; a run resumed in the
    middle of stage 1 calls it for stage 1 only; training mode is restored after it."""
    cfg = tiny_config(stages=[Stage(320, 3), Stage(384, 3), Stage(352, 2)])
    seen = []

    def cb(trainer, i, stage):
        seen.append((i, stage.seq_len, trainer.step, trainer.model.training))
        trainer.model.eval()  # e.g. an evaluation; the trainer must switch back

    t = Trainer(cfg, tmp_path, progress=False)
    t.train(stop_at=5, on_stage_end=lambda i, s: cb(t, i, s))  # checkpoint at step 4
    assert seen == [(0, 320, 3, True)]
    seen.clear()
    r = Trainer(cfg, tmp_path, progress=False)
    r.train(on_stage_end=lambda i, s: cb(r, i, s))
    assert seen == [(1, 384, 6, True), (2, 352, 8, True)]


def test_checkpoint_of_another_config_is_refused(tmp_path):
    Trainer(tiny_config(), tmp_path, progress=False).train(stop_at=2)
    other = Trainer(tiny_config(seed=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        other.train()


def test_checkpoint_resumes_on_another_backend(tmp_path):
    """The backend is how the model is computed, not which: a run trained on the sdpa_mask
    fallback resumes on a kernel (and back); other changes are still refused."""
    Trainer(tiny_config(backend="sdpa_mask"), tmp_path, progress=False).train(stop_at=4)
    resumed = Trainer(tiny_config(backend="auto"), tmp_path, progress=False)
    assert resumed.load_checkpoint() and resumed.step == 4
    resumed.train()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 9))
    assert Trainer(tiny_config(backend="sdpa_mask"), tmp_path, progress=False).load_checkpoint()
    with pytest.raises(ValueError, match="different configuration"):
        Trainer(tiny_config(backend="sdpa_mask", seed=1), tmp_path, progress=False).train()


def test_fresh_start_removes_the_old_runs_files(tmp_path):
    """A fresh start stopped before its first checkpoint leaves neither the old checkpoint
    (a plain rerun would resume from it) nor the old metrics; other files stay."""
    cfg = tiny_config()
    Trainer(cfg, tmp_path, progress=False).train(stop_at=4)  # checkpoints at steps 2 and 4
    (tmp_path / "checkpoint.tmp").write_bytes(b"a save cut short")
    (tmp_path / "eval.json").write_text("{}")
    Trainer(cfg, tmp_path, progress=False).train(resume=False, stop_at=1)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert not (tmp_path / "checkpoint.tmp").exists()
    assert (tmp_path / "eval.json").exists() and (tmp_path / "config.json").exists()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1]
    assert not Trainer(cfg, tmp_path, progress=False).load_checkpoint()


def test_lr_schedule_warmup_then_cosine():
    cfg = tiny_config()
    cfg.stages = [Stage(320, 100)]
    cfg.optim.warmup_steps = 10
    lrs = [lr_lambda(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(cfg.optim.min_lr_ratio, abs=1e-3)


def test_constant_schedule_after_warmup():
    cfg = tiny_config(stages=[Stage(320, 50)])
    cfg.optim.warmup_steps = 10
    cfg.optim.schedule = "constant"
    lrs = [lr_lambda(s, cfg) for s in range(50)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9:] == [1.0] * 41


def test_wsd_schedule_exact_values_over_every_stage():
    """Warm-up, flat, then linear to min_lr_ratio over the last decay_frac of the steps of
    all stages (30 + 70 = 100: a decay of 20 steps from step 80), for two floors."""
    cfg = tiny_config(stages=[Stage(320, 30), Stage(384, 70)])
    cfg.optim = OptimConfig(warmup_steps=10, schedule="wsd", decay_frac=0.2, min_lr_ratio=0.1)
    cfg.validate()
    assert cfg.decay_steps == 20
    lam = functools.partial(lr_lambda, cfg=cfg)
    assert lam(0) == pytest.approx(0.1) and lam(9) == pytest.approx(1.0)
    assert [lam(s) for s in (10, 29, 30, 31, 79, 80)] == [1.0] * 6  # across the stage switch
    assert lam(81) == pytest.approx(0.1 + 0.9 * 19 / 20)
    assert lam(90) == pytest.approx(0.55)
    assert lam(99) == pytest.approx(0.1 + 0.9 / 20)  # the last update
    assert lam(100) == pytest.approx(0.1) and lam(150) == pytest.approx(0.1)
    decay = [lam(s) for s in range(80, 101)]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    cfg.optim.min_lr_ratio = 0.0
    assert lam(90) == pytest.approx(0.5) and lam(99) == pytest.approx(0.05) and lam(100) == 0.0


def test_wsd_learning_rate_of_each_update_in_the_optimizer():
    """What AdamW actually uses: update t runs at lr * lr_lambda(t) (the scheduler is stepped
    after each update), so the first decaying update is the one after the flat part."""
    from powerattn.training.trainer import build_optimizer

    cfg = tiny_config(stages=[Stage(320, 4), Stage(384, 6)])
    cfg.optim = OptimConfig(lr=1e-3, warmup_steps=2, schedule="wsd", decay_frac=0.4)
    cfg.optim.min_lr_ratio = 0.0
    model = torch.nn.Linear(2, 2)
    opt, sched = build_optimizer(model, cfg)
    used = []
    for _ in range(cfg.total_steps):
        used.append(opt.param_groups[0]["lr"])
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
        sched.step()
    want = [0.5, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]  # the last 4 updates: 1, 3/4, 1/2, 1/4
    assert used == pytest.approx([1e-3 * w for w in want])
    assert opt.param_groups[0]["lr"] == 0.0  # after the last update


def test_wsd_schedule_survives_a_resume(tmp_path):
    """A run killed in its flat part and resumed logs the same learning rate at every step
    as a run trained straight, across the stage switch and the decay."""
    cfg = tiny_config(stages=[Stage(320, 4), Stage(384, 6, mix=[320])], checkpoint_every=3)
    cfg.optim = OptimConfig(lr=1e-3, warmup_steps=2, schedule="wsd", decay_frac=0.4)
    Trainer(cfg, tmp_path / "a", progress=False).train()
    Trainer(cfg, tmp_path / "b", progress=False).train(stop_at=5)  # checkpoint at step 3
    resumed = Trainer(cfg, tmp_path / "b", progress=False)
    assert resumed.load_checkpoint() and resumed.step == 3
    resumed.train()

    def lrs(d):
        lines = (tmp_path / d / "metrics.jsonl").read_text().splitlines()
        return [(m["step"], m["lr"]) for m in map(json.loads, lines)]

    # The logged lr is the next update's: lr * lr_lambda(step).
    assert lrs("a") == lrs("b")
    assert [s for s, _ in lrs("a")] == list(range(1, 11))
    assert [x for _, x in lrs("a")] == pytest.approx(
        [1e-3 * lr_lambda(s, cfg) for s in range(1, 11)]
    )
    assert lrs("a")[-1][1] == pytest.approx(1e-4)  # min_lr_ratio 0.1 at the end


def test_lm_loss_is_the_next_token_loss_of_the_other_positions():
    """With lm: the answer loss and correctness are those of the answer-only loss, and the
    LM loss is the mean cross-entropy of every next token before the answer."""
    from powerattn.training.trainer import passkey_loss

    torch.manual_seed(0)
    cfg = ModelConfig(layers=1, hidden=16, heads=2, kv_heads=2, intermediate=32)
    model = build_model(cfg, get_pattern("full", block_size=32), 320, seed=0)
    ids = torch.randint(0, 256, (2, 320), generator=torch.Generator().manual_seed(3))
    loss, correct, lm = passkey_loss(model, ids, 5, "answer", lm=False)
    loss2, correct2, lm2 = passkey_loss(model, ids, 5, "answer", lm=True)
    assert lm is None and torch.equal(correct, correct2)
    torch.testing.assert_close(loss2, loss)
    logits = model(ids).logits.double()
    want = torch.nn.functional.cross_entropy(logits[0, :-6], ids[0, 1:-5]) / 2
    want += torch.nn.functional.cross_entropy(logits[1, :-6], ids[1, 1:-5]) / 2
    torch.testing.assert_close(lm2.double(), want, rtol=1e-5, atol=1e-6)


def test_loss_goes_down(tmp_path):
    cfg = tiny_config(stages=[Stage(320, 40)], batch_size=8, log_every=5)
    cfg.pattern.name = "full"
    Trainer(cfg, tmp_path, progress=False).train()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < 0.8 * lines[0]["loss"]
    assert {"loss", "tokens_per_s", "lr", "exact_match", "seq_len"} <= set(lines[-1])


@pytest.mark.parametrize("backend", ["auto", "sdpa_mask"])
@pytest.mark.parametrize("layers", [1, 2])
def test_model_receptive_field_matches_the_theory(layers, backend):
    """Changing the tokens of block j changes the last position's logits iff the theory
    says block j reaches the last block within `layers` layers."""
    bs, n = 8, 12
    pattern = get_pattern("power", block_size=bs, window=1, sink=0)
    cfg = ModelConfig(layers=layers, hidden=32, heads=2, kv_heads=2, intermediate=64)
    model = build_model(cfg, pattern, max_seq_len=bs * n, backend=backend, seed=0).eval()
    ids = torch.randint(0, 256, (1, bs * n), generator=torch.Generator().manual_seed(0))
    h = hops(pattern, bs * n)
    with torch.no_grad():
        base = model(ids).logits[0, -1]
        for j in range(n - 1):
            other = ids.clone()
            other[0, j * bs : (j + 1) * bs] = (other[0, j * bs : (j + 1) * bs] + 1) % 256
            changed = not torch.equal(model(other).logits[0, -1], base)
            assert changed == (0 <= h[j] <= layers), (j, h[j])
    assert (h[: n - 1] > layers).any() and ((h[: n - 1] >= 0) & (h[: n - 1] <= layers)).any()


def test_hybrid_full_layers_widen_the_receptive_field():
    bs, n = 8, 12
    pattern = get_pattern("sliding_window", block_size=bs, window=1, sink=0)
    cfg = ModelConfig(layers=1, hidden=32, heads=2, kv_heads=2, intermediate=64)
    sparse = build_model(cfg, pattern, bs * n, seed=0).eval()
    hybrid = build_model(cfg, pattern, bs * n, full_layers=[0], seed=0).eval()
    ids = torch.randint(0, 256, (1, bs * n), generator=torch.Generator().manual_seed(1))
    other = ids.clone()
    other[0, 0] = (other[0, 0] + 1) % 256
    with torch.no_grad():
        assert torch.equal(sparse(ids).logits[0, -1], sparse(other).logits[0, -1])
        assert not torch.equal(hybrid(ids).logits[0, -1], hybrid(other).logits[0, -1])
    assert np.isfinite(hybrid(ids).logits.detach().numpy()).all()


def test_sdpa_mask_fallback_computes_the_same_model():
    pattern = get_pattern("longnet", block_size=8, segments=((4, 1), (8, 2)))
    cfg = ModelConfig(layers=2, hidden=32, heads=4, kv_heads=2, intermediate=64)
    ids = torch.randint(0, 256, (2, 96), generator=torch.Generator().manual_seed(2))
    ref = build_model(cfg, pattern, 96, backend="reference", seed=0)
    alt = build_model(cfg, pattern, 96, backend="sdpa_mask", seed=0)
    with torch.no_grad():
        torch.testing.assert_close(alt(ids).logits, ref(ids).logits, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="backend"):
        TrainConfig(backend="fast").validate()


def test_train_command(tmp_path, capsys):
    from powerattn.cli import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "batch_size: 2\ndevice: cpu\ncheckpoint_every: 2\nlog_every: 1\n"
        "model: {layers: 1, hidden: 16, heads: 2, kv_heads: 2, intermediate: 32}\n"
        "stages: [{seq_len: 320, steps: 2}, {seq_len: 384, steps: 2}]\n"
    )
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--pattern", "dilated",
                 "--no-progress"]) == 0  # fmt: skip
    assert "dilated(block_size=32" in capsys.readouterr().out
    assert (out / "checkpoint.pt").exists() and (out / "config.json").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    # Finished runs resume at their end: nothing is trained again.
    assert main(["train", "--config", str(cfg), "--out", str(out), "--pattern", "dilated",
                 "--no-progress"]) == 0  # fmt: skip
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 4
    assert main(["train", "--config", str(tmp_path / "nope.txt"), "--out", str(out)]) == 2


def test_train_command_fresh_starts_over(tmp_path, monkeypatch):
    """--fresh deletes the old checkpoint before training: a fresh run cut short (here after
    one step, before its first checkpoint) leaves nothing stale for a plain rerun."""
    from powerattn.cli import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(
        "batch_size: 2\ndevice: cpu\ncheckpoint_every: 2\nlog_every: 1\n"
        "model: {layers: 1, hidden: 16, heads: 2, kv_heads: 2, intermediate: 32}\n"
        "stages: [{seq_len: 320, steps: 4}]\n"
    )
    out = tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--out", str(out), "--no-progress"]
    assert main(argv) == 0 and (out / "checkpoint.pt").exists()
    monkeypatch.setattr(Trainer, "train", functools.partialmethod(Trainer.train, stop_at=1))
    assert main([*argv, "--fresh"]) == 0
    assert not (out / "checkpoint.pt").exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_help_teaches_the_config_and_the_experiment(capsys):
    from powerattn.cli import main

    for argv, want in [
        (["train", "--help"], ["stages: [{seq_len:", "examples:"]),
        (["experiment", "passkey", "--help"], ["presets:", "--preset smoke --out"]),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert all(w in out for w in want), argv


def test_evaluate_passkey_shapes_and_bad_input():
    from powerattn.training.evaluate import evaluate_passkey

    pattern = get_pattern("power", block_size=32)
    cfg = ModelConfig(layers=1, hidden=16, heads=2, kv_heads=2, intermediate=32)
    model = build_model(cfg, pattern, 320, seed=0)
    res = evaluate_passkey(model, 320, [0.0, 1.0], samples=2, batch_size=3)
    assert res["depth_target"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert res["correct"].shape == res["digit_acc"].shape == (4,)
    assert res["key_positions"].shape == (4, 2, 5)
    assert (res["correct"] == (res["digit_acc"] == 1.0)).all()
    assert model.training  # restored
    for kw, match in [({"samples": 0}, "samples"), ({"batch_size": 0}, "batch_size"),
                      ({"depths": []}, "depths")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            evaluate_passkey(model, 320, **{"depths": [0.5], "samples": 1, **kw})


def test_bad_device_is_a_value_error():
    from powerattn.training.trainer import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_evaluate_passkey_depth_bins_and_heldout_keys(monkeypatch):
    """With depth bins each cell's needles sit at random positions inside the bin (not one
    shared position), the documents are the same for every model, keys are held out."""
    import powerattn.training.evaluate as ev
    from powerattn.tasks.passkey import is_heldout_key
    from powerattn.training.evaluate import depth_bins, evaluate_passkey

    seen = []

    def spy(*args, **kwargs):
        batch = real(*args, **kwargs)
        seen.extend(batch.keys)
        return batch

    real = ev.passkey_batch
    monkeypatch.setattr(ev, "passkey_batch", spy)

    centres, width = depth_bins(4)
    assert centres.tolist() == [0.125, 0.375, 0.625, 0.875] and width == 0.25
    cfg = ModelConfig(layers=1, hidden=16, heads=2, kv_heads=2, intermediate=32)
    model = build_model(cfg, get_pattern("full", block_size=32), 1024, seed=0)
    kw = {"samples": 6, "depth_width": width, "keys": "heldout"}
    res = evaluate_passkey(model, 1024, centres, **kw)
    assert res["depth_target"].tolist() == np.repeat(centres, 6).tolist()
    for c in centres:
        d = res["depth"][res["depth_target"] == c]
        assert len(set(d.tolist())) > 3  # positions vary inside the cell
        assert (np.abs(d - c) <= width / 2 + 0.02).all()  # + snapping to a sentence start
    again = evaluate_passkey(build_model(cfg, get_pattern("full", block_size=32), 1024, seed=1),
                             1024, centres, **kw)  # fmt: skip
    assert np.array_equal(again["key_positions"], res["key_positions"])
    assert len(seen) == 2 * 24 and is_heldout_key(np.array(seen, dtype=np.int64)).all()
    with pytest.raises(ValueError, match="depth_width"):
        evaluate_passkey(model, 1024, centres, samples=1, depth_width=2.0)
    with pytest.raises(ValueError, match="n must be"):
        depth_bins(0)


def test_a_signal_stops_training_with_a_checkpoint_and_resume_continues(tmp_path):
    """SIGINT during step 3 (sent from the data source): training stops after that step with
    a checkpoint, says which signal, restores the handler; a rerun resumes at step 4."""
    import os
    import signal

    from powerattn.training.data import batch_for_step

    cfg = tiny_config(checkpoint_every=100)

    def batches(c, t):
        if t == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return batch_for_step(c, t).input_ids

    before = signal.getsignal(signal.SIGINT)
    t = Trainer(cfg, tmp_path, progress=False, batch_fn=batches)
    t.train(stop_on_signal=True)
    assert t.interrupted == "SIGINT" and t.step == 3
    assert signal.getsignal(signal.SIGINT) is before
    r = Trainer(cfg, tmp_path, progress=False)
    assert r.load_checkpoint() and r.step == 3
    r.train(stop_on_signal=True)
    assert r.interrupted is None and r.step == cfg.total_steps


def test_checkpoint_by_wall_time(tmp_path):
    """checkpoint_every_s writes checkpoints between the step-count ones; it is not part of
    the run's identity (a resume may change it)."""
    Trainer(tiny_config(checkpoint_every=100), tmp_path / "a", progress=False).train(stop_at=3)
    assert not (tmp_path / "a" / "checkpoint.pt").exists()
    cfg = tiny_config(checkpoint_every=100, checkpoint_every_s=1e-9)
    Trainer(cfg, tmp_path / "b", progress=False).train(stop_at=3)
    r = Trainer(tiny_config(checkpoint_every=100), tmp_path / "b", progress=False)
    assert r.load_checkpoint() and r.step == 3
    with pytest.raises(ValueError, match="checkpoint_every_s"):
        tiny_config(checkpoint_every_s=-1.0).validate()


def test_train_without_config_is_the_cpu_preset_and_says_it_resumes(tmp_path, capsys, monkeypatch):
    from powerattn.cli import main

    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--no-progress", "--device", "cpu"]
    stop = functools.partialmethod(Trainer.train, stop_at=2)
    monkeypatch.setattr(Trainer, "train", stop)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "400 steps" in printed and "resuming" not in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["stages"] == [{"seq_len": 320, "steps": 400, "mix": []}]
    assert cfg["model"]["hidden"] == 64 and cfg["optim"]["schedule"] == "constant"
    t = Trainer(TrainConfig.from_dict(cfg), out, progress=False)  # a checkpoint at step 2
    t.step = 2
    t.save_checkpoint()
    monkeypatch.setattr(
        Trainer, "train_loop", functools.partialmethod(Trainer.train_loop, stop_at=3)
    )
    assert main(argv) == 0
    assert "resuming from step 2 of 400" in capsys.readouterr().out
    assert main([*argv, "--preset", "cpu", "--config", "x.yaml"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*argv, "--layers", "3"]) == 2  # another configuration in OUT
    assert "--fresh" in capsys.readouterr().err
