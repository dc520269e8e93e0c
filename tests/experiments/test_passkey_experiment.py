import dataclasses
import gzip
import json
import multiprocessing

import numpy as np
import pytest
import torch

from powerattn import equal_budget, get_pattern
from powerattn.cli import main
from powerattn.experiments.passkey import (
    check_backend,
    gate,
    gate_table,
    merge_results,
    plan,
    seed_table,
    wilson_interval,
)
from powerattn.experiments.tables import train_exact_match_by_len
from powerattn.tasks import passkey_batch
from powerattn.training.evaluate import needle_hops
from powerattn.training.trainer import Trainer, _identity


def test_smoke_campaign_through_the_cli(tmp_path, capsys):
    """The CPU version of every part (main, layers, long): trains, evaluates, plots."""
    out = tmp_path / "out"
    rc = main(["experiment", "passkey", "--preset", "smoke", "--out", str(out),
               "--patterns", "power,stride_slash,full", "--no-progress"])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["runs"]) == {
        "main-power", "main-stride_slash", "main-full", "layers1-power",
        "long-power", "long-stride_slash",
    }  # fmt: skip
    for name in ("heatmaps.png", "reach.png", "long.png", "curves.png"):
        assert (out / name).stat().st_size > 10_000
    run = res["runs"]["main-power"]
    assert run["backend_ok"] and run["steps_done"] == run["steps_planned"] == 6
    ev = run["eval"]["384"]
    assert len(ev["correct"]) == len(ev["needle_hops"]) == 3 * 2
    # Each stage's length is also scored on the model at the end of that stage; the last
    # stage's model is the final model.
    st = run["stage_eval"]
    assert {k: v["step"] for k, v in st.items()} == {"320": 3, "384": 6}
    assert st["384"]["correct"] == ev["correct"] and st["384"]["accuracy"] == ev["accuracy"]
    assert res["runs"]["layers1-power"]["layers"] == 1
    # Checked before training and, after it, at every length it trained on, not only at the
    # one it is evaluated at.
    layers_run = res["runs"]["layers1-power"]
    assert list(layers_run["eval"]) == ["384"]
    assert [c["seq_len"] for c in layers_run["backend_check"]] == [320, 320, 384]
    assert "main-full" in capsys.readouterr().out
    # A replicate with another seed, through the parallel driver (the seed must reach the
    # subprocesses); then both merged and redrawn from the saved results.
    rep = tmp_path / "rep"
    rc = main(["experiment", "passkey", "--preset", "smoke", "--out", str(rep), "--parts",
               "main,layers", "--patterns", "power", "--seed", "3", "--jobs", "2",
               "--no-progress"])  # fmt: skip
    assert rc == 0
    rep_runs = json.loads((rep / "results.json").read_text())["runs"]
    assert set(rep_runs) == {"main-power-s3", "layers1-power-s3"}
    assert rep_runs["main-power-s3"]["config"]["seed"] == 3
    assert rep_runs["main-power-s3"]["curve"] != run["curve"]  # other init and data
    rc = main(["experiment", "passkey", "--out", str(tmp_path / "re"),
               "--replot", f"{out / 'results.json'},{rep / 'results.json'}"])  # fmt: skip
    assert rc == 0 and (tmp_path / "re" / "heatmaps.png").exists()
    merged = json.loads((tmp_path / "re" / "results.json").read_text())
    assert len(merged["runs"]) == 8
    # The summary and verdicts come from the merge: cells of both campaigns, one gate.
    summ = json.loads((tmp_path / "re" / "summary.json").read_text())
    assert summ["seeds"] == [0, 3] and summ["incomplete"] == []
    assert {(c["pattern"], c["seed"]) for c in summ["cells"] if c["part"] == "main"} == {
        ("power", 0),
        ("stride_slash", 0),
        ("full", 0),
        ("power", 3),
    }
    assert "1 seed(s), the gate needs 3" in summ["gate"]["reason"]


def test_a_run_that_dies_is_retried_on_the_fallback(tmp_path, capsys):
    """The 'decode' backend has no backward, so the training process exits with an error;
    the parallel driver reruns it from scratch on sdpa_mask."""
    out = tmp_path / "out"
    rc = main(["experiment", "passkey", "--preset", "smoke", "--out", str(out), "--parts",
               "main", "--patterns", "power", "--backend", "decode", "--jobs", "2"])  # fmt: skip
    assert rc == 0
    run = json.loads((out / "results.json").read_text())["runs"]["main-power"]
    assert run["backend"] == "sdpa_mask" and run["backend_ok"]
    assert (out / "runs" / "main-power" / "log_failed.txt").exists()
    assert "retrying main-power" in capsys.readouterr().out


def test_a_run_that_dies_resumes_its_checkpoint_on_the_fallback(tmp_path, capsys):
    """A run with a checkpoint whose process dies is retried on sdpa_mask from that
    checkpoint, not from scratch: its steps are kept."""
    out = tmp_path / "out"
    spec = plan("smoke", ["main"], ["power"], backend="decode")[0]
    warm = dataclasses.replace(spec.config, backend="auto")
    t = Trainer(warm, out / "runs" / spec.name, progress=False)
    t.train(stop_at=2)
    t.save_checkpoint()
    rc = main(["experiment", "passkey", "--preset", "smoke", "--out", str(out), "--parts",
               "main", "--patterns", "power", "--backend", "decode", "--jobs", "2"])  # fmt: skip
    assert rc == 0
    run = json.loads((out / "results.json").read_text())["runs"]["main-power"]
    assert run["backend"] == "sdpa_mask" and run["steps_done"] == run["steps_planned"]
    retry = [x for x in capsys.readouterr().out.splitlines() if "retrying main-power" in x]
    assert len(retry) == 1
    assert run["resumed_from"] == 2
    # The retry line says why: the failure's exception, read from the kept log.
    failed = (out / "runs" / "main-power" / "log_failed.txt").read_text()
    why = retry[0].split("fallback (", 1)[1].rstrip(")")
    assert why.split(":")[0].endswith(("Error", "Exception")) and why in failed, retry[0]


def _token_hops(pattern, seq_len: int, query: int) -> np.ndarray:
    """Layers for each token to reach token ``query``, by BFS over the dense token mask."""
    mask = pattern.dense_mask(seq_len).numpy()  # [i, j]: i attends j
    dist = np.full(seq_len, -1)
    dist[query] = 0
    seen = dist == 0
    layer = 0
    while True:
        layer += 1
        fresh = mask[seen].any(axis=0) & ~seen
        if not fresh.any():
            return dist
        dist[fresh] = layer
        seen |= fresh


@pytest.mark.parametrize(
    ("seq_len", "block_size"),
    [(2048, 32), (300, 8), (384, 128)],  # aligned; answer across two blocks; needle in its block
)
def test_needle_hops_brute_force(seq_len, block_size):
    """needle_hops == max over digits of min over the key's two statements of the token-level
    layers from the digit to the position predicting it, by BFS over each pattern's mask."""
    digits = 5
    b = passkey_batch(seq_len, 12, np.random.default_rng(3), depths=np.linspace(0, 1, 12))
    patterns = dict(equal_budget(seq_len, block_size))
    patterns["power_w1"] = get_pattern("power", block_size=block_size, window=1, sink=0)
    for name, pattern in patterns.items():
        got = needle_hops(pattern, seq_len, b.key_positions, digits)
        dist = [_token_hops(pattern, seq_len, seq_len - digits - 1 + j) for j in range(digits)]
        for i in range(12):
            per_digit = []
            for j in range(digits):
                opts = [dist[j][b.key_positions[i, o, j]] for o in range(2)]
                opts = [x for x in opts if x >= 0]
                per_digit.append(min(opts) if opts else None)
            want = -1 if None in per_digit else max(per_digit)
            assert got[i] == want, (name, i)
    full = needle_hops(get_pattern("full", block_size=block_size), seq_len, b.key_positions, 5)
    assert (full == 1).all()
    with pytest.raises(ValueError, match="key_positions"):
        needle_hops(patterns["power"], seq_len, b.key_positions[:, :, :4], digits)


def test_check_backend_passes_on_cpu_and_catches_a_wrong_pattern(monkeypatch):
    p = get_pattern("power", block_size=16)
    for name in ("full", "longnet"):
        assert check_backend(get_pattern(name, block_size=16), 160, torch.device("cpu"))["ok"]
    rep = check_backend(p, 160, torch.device("cpu"), heads=2, head_dim=8)
    assert rep["ok"] and set(rep) == {"seq_len", "dtype", "ok", "out", "dq", "dk", "dv"}
    assert rep["dq"]["tol"] < 3 * rep["dq"]["baseline_err"] + 1e-5
    import powerattn.experiments.passkey as mod

    wrong = get_pattern("sliding_window", block_size=16, window=2, sink=0)
    real = mod.attention
    monkeypatch.setattr(mod, "attention", lambda q, k, v, pat, **kw: real(q, k, v, wrong))
    assert not check_backend(p, 160, torch.device("cpu"), heads=2, head_dim=8)["ok"]


def _gqa_as_repeat(real):
    """The model's attention with a classic GQA bug: query head h reads key/value head
    h % Hkv (``repeat``) instead of h // (Hq / Hkv) (``repeat_interleave``)."""

    def attention(q, k, v, pattern, scale=None, backend="auto"):
        group = q.shape[1] // k.shape[1]
        if group > 1 and backend != "sdpa_mask":
            k, v = k.repeat(1, group, 1, 1), v.repeat(1, group, 1, 1)
        return real(q, k, v, pattern, scale, backend)

    return attention


def test_check_backend_covers_gqa(monkeypatch):
    import powerattn.experiments.passkey as mod

    p, cpu = get_pattern("power", block_size=16), torch.device("cpu")
    for kv_heads in (1, 2):
        assert check_backend(p, 160, cpu, heads=4, head_dim=8, kv_heads=kv_heads)["ok"]
    monkeypatch.setattr(mod, "attention", _gqa_as_repeat(mod.attention))
    assert check_backend(p, 160, cpu, heads=4, head_dim=8)["ok"]  # MHA: the bug is invisible
    assert not check_backend(p, 160, cpu, heads=4, head_dim=8, kv_heads=2)["ok"]
    with pytest.raises(ValueError, match="kv_heads"):
        check_backend(p, 160, cpu, heads=4, head_dim=8, kv_heads=3)


def test_a_gqa_model_checks_its_backend_with_gqa(tmp_path, monkeypatch):
    """run_one checks the backend at the model's head counts: a kernel wrong only for GQA
    sends a GQA model to the fallback."""
    import dataclasses

    import powerattn.experiments.passkey as mod

    monkeypatch.setattr(mod, "attention", _gqa_as_repeat(mod.attention))
    spec = plan("smoke", ["main"], ["power"])[0]
    spec.config.model = dataclasses.replace(spec.config.model, heads=4, kv_heads=2)
    res = mod.run_one(spec, tmp_path, mod.PRESETS["smoke"], progress=False)
    assert res["backend"] == "sdpa_mask" and "failed the check" in res["backend_fallback"]


def test_plan():
    runs = plan("gpu")
    names = [r.name for r in runs]
    main_patterns = ("power", "sliding_window", "stride_slash", "dilated", "longnet", "full")
    assert names[:6] == [f"main-{p}" for p in main_patterns]
    assert {"layers2-power", "long-power", "long-stride_slash"} <= set(names)
    main_power = runs[0].config
    assert main_power.build_pattern() == equal_budget(4096, 32)["power"]
    long = next(r for r in runs if r.name == "long-stride_slash").config
    assert long.build_pattern() == equal_budget(8192, 32)["stride_slash"]
    assert [r.name for r in plan("gpu", ["layers"], layer_sweep=[5])] == ["layers5-power"]
    half = plan("gpu", ["main"], ["power"], steps_scale=0.5)[0].config
    assert half.total_steps == main_power.total_steps // 2
    # A replicate: another seed, names that do not clash with the preset's runs.
    rep = plan("gpu", seed=1)
    assert [r.name for r in rep] == [f"{n}-s1" for n in names]
    assert all(r.config.seed == 1 for r in rep) and main_power.seed == 0
    assert [r.name for r in plan("gpu", seed=0)] == names
    # Speed options: switched on in every run, outside the run's identity (resume, merges).
    fast = plan("gpu", ["main"], ["power"], seeds=[0, 1], speed=["compile", "fused_optim"])
    assert all(r.config.compile and r.config.fused_optim for r in fast)
    assert not main_power.compile and not fast[0].config.pin_memory
    assert _identity(fast[0].config.to_dict()) == _identity(main_power.to_dict())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"preset": "huge"}, "preset"),
        ({"parts": ["nope"]}, "parts"),
        ({"patterns": ["nope"]}, "patterns"),
        ({"steps_scale": 0}, "steps_scale"),
        ({"layer_sweep": [0]}, "layer_sweep"),
        ({"seed": -1}, "seed"),
        ({"seeds": [0, 0]}, "distinct"),
        ({"seeds": [0], "seed": 1}, "seed or seeds"),
        ({"speed": ["turbo"]}, "speed options .*turbo.* valid"),
    ],
)
def test_plan_bad_input(kwargs, match):
    kwargs = {"preset": "smoke", **kwargs}
    with pytest.raises(ValueError, match=match):
        plan(**kwargs)


def test_cli_bad_input(capsys):
    with pytest.raises(SystemExit) as exc:  # argparse's own error: usage + one line, exit 2
        main(["experiment", "passkey", "--out", "x", "--jobs", "0"])
    assert exc.value.code == 2
    assert "--jobs: expected a positive integer, got 0" in capsys.readouterr().err


def test_runs_cut_by_the_deadline_before_any_log_are_still_reported(tmp_path, capsys):
    """--deadline 0: every run stops at step 0 (checkpoint, no metrics line) and is
    evaluated as it is; the campaign still writes results.json and its table."""
    out = tmp_path / "out"
    rc = main(["experiment", "passkey", "--preset", "smoke", "--out", str(out), "--parts",
               "main", "--patterns", "power", "--deadline", "0", "--no-progress"])  # fmt: skip
    assert rc == 0
    run = json.loads((out / "results.json").read_text())["runs"]["main-power"]
    assert run["steps_done"] == 0 < run["steps_planned"]
    assert run["curve"] == [] and run["tokens_per_s"] is None
    assert "main-power" in capsys.readouterr().out


def test_a_run_whose_backend_fails_the_check_trains_on_the_fallback(tmp_path, monkeypatch):
    import powerattn.experiments.passkey as mod

    real = mod.attention

    def broken(q, k, v, pattern, scale=None, backend="auto"):  # a kernel computing another mask
        if backend != "sdpa_mask":
            pattern = get_pattern("sliding_window", block_size=pattern.block_size, window=1)
        return real(q, k, v, pattern, scale, backend)

    monkeypatch.setattr(mod, "attention", broken)
    spec = plan("smoke", ["main"], ["power"])[0]
    res = mod.run_one(spec, tmp_path, mod.PRESETS["smoke"], progress=False)
    assert res["backend"] == "sdpa_mask" and "failed the check" in res["backend_fallback"]
    assert [c["ok"] for c in res["backend_check"]] == [False, True, True, True]
    assert res["backend_ok"] is False  # the failed first check stays on the record
    assert res["steps_done"] == res["steps_planned"]


def test_a_run_that_fell_back_resumes_on_the_fallback(tmp_path, monkeypatch):
    """Cut by the deadline after falling back to sdpa_mask, then rerun when the kernel passes
    its check: the run resumes its checkpoint, still on sdpa_mask (not refused as a checkpoint
    of another config)."""
    import powerattn.experiments.passkey as mod

    real = mod.attention

    def broken(q, k, v, pattern, scale=None, backend="auto"):
        if backend != "sdpa_mask":
            pattern = get_pattern("sliding_window", block_size=pattern.block_size, window=1)
        return real(q, k, v, pattern, scale, backend)

    spec = plan("smoke", ["main"], ["power"])[0]
    preset = mod.PRESETS["smoke"]
    with monkeypatch.context() as m:
        m.setattr(mod, "attention", broken)
        cut = mod.run_one(spec, tmp_path, preset, progress=False, stop_time=0.0)
    assert cut["backend"] == "sdpa_mask" and cut["steps_done"] == 0
    res = mod.run_one(spec, tmp_path, preset, progress=False)
    assert res["backend"] == "sdpa_mask" and "earlier attempt" in res["backend_fallback"]
    assert res["backend_ok"] and res["steps_done"] == res["steps_planned"]


def test_stage_evaluations_survive_a_resume_and_not_a_fresh_start(tmp_path):
    """Stage-end evaluations are kept in stage_eval.json: a run cut after its first stage and
    resumed reports both stages; a run started over without a checkpoint drops stale ones."""
    import powerattn.experiments.passkey as mod

    spec = plan("smoke", ["main"], ["power"])[0]
    spec.config.checkpoint_every = 3  # stage 0 ends at step 3
    preset = mod.PRESETS["smoke"]
    run_dir = tmp_path / "runs" / spec.name
    real_train = mod.Trainer.train

    def cut_after_stage_0(self, **kw):  # stops like a kill at step 4, checkpoint at step 3
        return real_train(self, stop_at=4, on_stage_end=kw["on_stage_end"])

    with pytest.MonkeyPatch.context() as m:
        m.setattr(mod.Trainer, "train", cut_after_stage_0)
        mod.run_one(spec, tmp_path, preset, progress=False)
    assert set(json.loads((run_dir / "stage_eval.json").read_text())) == {"320"}
    res = mod.run_one(spec, tmp_path, preset, progress=False)
    assert set(res["stage_eval"]) == {"320", "384"} and res["steps_done"] == 6
    (run_dir / "checkpoint.pt").unlink()  # a fresh start: the old evaluations must go
    with pytest.MonkeyPatch.context() as m:
        m.setattr(mod.Trainer, "train", lambda self, **kw: {})
        res = mod.run_one(spec, tmp_path, preset, progress=False)
    assert res["stage_eval"] == {}


def test_a_kill_during_a_stage_end_evaluation_is_made_good_on_resume(tmp_path):
    """The checkpoint at a stage's last step is written before the stage is evaluated: a
    process killed during that evaluation resumes there and evaluates the stage then; a
    rerun of the finished run evaluates nothing twice and keeps its final metrics."""
    import powerattn.experiments.passkey as mod

    spec = plan("smoke", ["main"], ["power"])[0]
    spec.config.checkpoint_every = 3  # stage 0 (320 tokens) ends at step 3
    preset = mod.PRESETS["smoke"]
    real_eval = mod._evaluate

    def killed(*args, **kw):
        raise KeyboardInterrupt  # the process dies inside the stage-end evaluation

    with pytest.MonkeyPatch.context() as m:
        m.setattr(mod, "_evaluate", killed)
        with pytest.raises(KeyboardInterrupt):
            mod.run_one(spec, tmp_path, preset, progress=False)
    res = mod.run_one(spec, tmp_path, preset, progress=False)
    assert {k: v["step"] for k, v in res["stage_eval"].items()} == {"320": 3, "384": 6}
    calls = []

    def counted(*args, **kw):
        calls.append(args[2])
        return real_eval(*args, **kw)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(mod, "_evaluate", counted)
        again = mod.run_one(spec, tmp_path, preset, progress=False)
    assert calls == [320]  # only the final model at 320; 384 is the last stage's evaluation
    assert again["stage_eval"] == res["stage_eval"] and again["eval"] == res["eval"]
    assert again["final_train_metrics"] == res["final_train_metrics"] != {}


def test_merging_campaigns_with_the_same_run_names_is_refused(tmp_path):
    out = tmp_path / "out"
    assert main(["experiment", "passkey", "--preset", "smoke", "--out", str(out), "--parts",
                 "main", "--patterns", "power", "--no-progress"]) == 0  # fmt: skip
    res = out / "results.json"
    with pytest.raises(ValueError, match="in both"):
        merge_results([res, res])
    # A gzipped results.json (how history campaigns are committed) reads the same.
    gz = tmp_path / "results.json.gz"
    gz.write_bytes(gzip.compress(res.read_bytes()))
    assert merge_results([gz])["runs"] == merge_results([res])["runs"]


def test_train_exact_match_by_len_averages_the_last_steps_per_length():
    rows = [
        {"step": 100, "exact_match_by_len": {"512": 0.0}},  # before the last 200 steps
        {"step": 250, "exact_match_by_len": {"4096": 0.5, "512": 1.0}},
        {"step": 300, "exact_match_by_len": {"4096": 1.0}},
    ]
    got = train_exact_match_by_len(rows, last=200)
    assert list(got) == ["512", "4096"] and got == {"512": 1.0, "4096": 0.75}
    assert train_exact_match_by_len([]) == {}


def test_seed_table_groups_only_runs_that_differ_in_seed():
    def run(seed, steps):
        ev = {"accuracy": 0.5 + seed / 10, "reachable_fraction": 1.0}
        return {"part": "main", "pattern": "power", "layers": 2,
                "config": {"seed": seed, "backend": "auto", "stages": [[320, steps]]},
                "eval": {"320": ev}, "stage_eval": {}}  # fmt: skip

    rows = seed_table({"runs": {"a": run(0, 5), "b": run(1, 5), "c": run(2, 9)}}).splitlines()
    assert len(rows) == 3  # header, {a, b}, {c}
    assert rows[1].endswith("0,1") and rows[2].endswith("2")


def test_a_run_refused_as_bad_input_is_not_retried_from_scratch(tmp_path, capsys):
    """Rerunning into an OUT whose checkpoint has another configuration: the child exits 2;
    the driver reports it instead of wiping the checkpoint and retraining on the fallback."""
    out = tmp_path / "out"
    args = ["experiment", "passkey", "--preset", "smoke", "--out", str(out), "--parts", "main",
            "--patterns", "power", "--jobs", "2", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    ckpt = out / "runs" / "main-power" / "checkpoint.pt"
    before = ckpt.stat().st_mtime_ns
    assert main([*args, "--steps-scale", "2"]) == 0
    printed = capsys.readouterr().out
    assert "retrying" not in printed and "runs failed: ['main-power']" in printed
    assert ckpt.stat().st_mtime_ns == before
    assert "main-power" not in json.loads((out / "results.json").read_text())["runs"]


def test_recipe_campaign_of_several_seeds_through_the_cli(tmp_path, capsys):
    """smoke-mix: the levers of gpu-mix (a mixed-length stage, next-token loss, the wsd
    schedule, held-out keys, depth bins, layer runs of several patterns) and --seeds, in one
    call."""
    out = tmp_path / "out"
    rc = main(["experiment", "passkey", "--preset", "smoke-mix", "--out", str(out), "--parts",
               "main", "--patterns", "full", "--seeds", "0,2", "--no-progress"])  # fmt: skip
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["runs"]) == {"main-full", "main-full-s2"}
    assert (out / "heatmaps.png").stat().st_size > 10_000  # one panel: the seeds pooled
    run = res["runs"]["main-full-s2"]
    cfg = run["config"]
    assert cfg["seed"] == 2 and cfg["lm_weight"] == 1.0 and cfg["task"]["heldout_keys"]
    assert cfg["optim"]["schedule"] == "wsd" and cfg["stages"][1]["mix"] == [320]
    assert list(run["eval"]) == ["320", "384", "448"]  # the preset's evaluation lengths
    assert sorted(set(run["eval"]["384"]["depth_target"])) == pytest.approx([1 / 6, 0.5, 5 / 6])
    lines = (out / "runs" / "main-full-s2" / "metrics.jsonl").read_text().splitlines()
    assert "lm_loss" in json.loads(lines[-1]) and "exact_match_by_len" in json.loads(lines[-1])
    assert json.loads(lines[-1])["lr"] == 0.0  # decayed to min_lr_ratio 0 at the last step
    printed = capsys.readouterr().out
    assert "FAILED: 2 seed(s), the gate needs 3" in printed


def _full_run(seed: int, correct_per_bin: list[int], n: int = 64) -> dict:
    depths = np.repeat((np.arange(len(correct_per_bin)) + 0.5) / len(correct_per_bin), n)
    correct = np.concatenate([[1] * k + [0] * (n - k) for k in correct_per_bin])
    return {
        "name": f"main-full-s{seed}", "part": "main", "pattern": "full",
        "steps_done": 10, "steps_planned": 10,
        "config": {"seed": seed, "stages": [{"seq_len": 512}, {"seq_len": 4096}]},
        "eval": {"4096": {"depth_target": depths.tolist(), "correct": correct.tolist()}},
    }  # fmt: skip


def test_gate_needs_every_bin_of_every_seed():
    good = [64] * 9 + [61]  # 61/64 = 0.953
    runs = {str(s): _full_run(s, good) for s in range(3)}
    g = gate({"runs": runs})
    assert g["passed"] and g["runs"][0]["min_bin"] == pytest.approx(61 / 64)
    runs["1"] = _full_run(1, [64] * 9 + [60])  # one bin of one seed at 0.9375
    g = gate({"runs": runs})
    assert not g["passed"] and "main-full-s1" in g["reason"]
    assert "FAIL" in gate_table({"runs": runs}) and "FAILED" in gate_table({"runs": runs})
    two = {str(s): _full_run(s, good) for s in range(2)}
    assert not gate({"runs": two})["passed"]
    assert not gate({"runs": {}})["passed"]
    assert "PASSED" in gate_table({"runs": {str(s): _full_run(s, good) for s in range(3)}})


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(61, 64)
    assert lo == pytest.approx(0.8707, abs=1e-3) and hi == pytest.approx(0.9839, abs=1e-3)
    with pytest.raises(ValueError, match="total"):
        wilson_interval(3, 2)


def test_plan_of_the_recipe_preset():
    from powerattn.experiments.passkey import PRESETS
    from powerattn.training.model import build_model
    from powerattn.training.trainer import lr_lambda

    model = build_model(PRESETS["gpu-mix"].model, get_pattern("full", block_size=32), 4096)
    assert 4.5e6 < sum(p.numel() for p in model.parameters()) < 5.5e6  # the issue's ~5M
    runs = plan("gpu-mix", ["main"], ["full"], seeds=[0, 1, 2])
    assert [r.name for r in runs] == ["main-full", "main-full-s1", "main-full-s2"]
    cfg = runs[0].config
    assert cfg.final_seq_len == 4096 and cfg.stages[-1].lengths == [4096, 512, 1024, 2048, 4096]
    assert cfg.optim.schedule == "wsd" and cfg.lm_weight == 0 and cfg.task.heldout_keys
    # The cool-down: flat 3e-4 to step 4400, linear to 0 over the last 1100 of 5500 steps.
    assert cfg.total_steps == 5500 and cfg.decay_steps == 1100 and cfg.optim.min_lr_ratio == 0
    assert lr_lambda(4400, cfg) == 1.0 and lr_lambda(4950, cfg) == pytest.approx(0.5)
    assert runs[0].eval_lengths == [512, 1024, 2048, 4096, 8192]
    layers = plan("gpu-mix", ["layers"])
    assert len(layers) == 3 * 7 and "layers8-stride_slash" in {r.name for r in layers}
    assert all(r.eval_lengths == [4096] for r in layers)
    long = plan("gpu-mix", ["long"])[0].config
    assert long.build_pattern() == equal_budget(8192, 32)["power"]
    for c in (long, layers[0].config, *(r.config for r in plan("smoke-mix", ["main", "long"]))):
        c.validate()  # the warm-up ends before every part's decay starts


def test_parallel_runs_go_round_robin_over_the_visible_gpus(tmp_path, monkeypatch):
    import powerattn.experiments.passkey as mod
    from powerattn.experiments import scheduler

    seen = []

    class Done:  # a process that has exited with status 0
        exitcode = 0

        def __init__(self, job, gpu):
            seen.append((job.name, gpu, job.fn, job.args[0].config.backend))
            self.sentinel, self._w = multiprocessing.Pipe(duplex=False)
            self._w.close()  # the sentinel is ready at once

        def join(self):
            pass

    monkeypatch.setattr(scheduler, "_spawn", Done)
    specs = plan("smoke", ["main"], ["power", "dilated", "full"])
    preset = mod.PRESETS["smoke"]
    monkeypatch.setattr(mod, "_visible_gpus", lambda: ["3", "5"])
    mod._run_parallel(specs, tmp_path, preset, 3, None)
    assert [x[:2] for x in seen] == [("main-power", "3"), ("main-dilated", "5"),
                                     ("main-full", "3")]  # fmt: skip
    assert all(fn is mod._train_one and bk == "auto" for _, _, fn, bk in seen)
    assert (tmp_path / "runs" / "main-full").is_dir()
    seen.clear()
    monkeypatch.setattr(mod, "_visible_gpus", lambda: ["0"])  # one GPU: shared, env untouched
    mod._run_parallel(specs, tmp_path, preset, 3, None)
    assert [g for _, g, _, _ in seen] == [None, None, None]


def test_heatmaps_score_mixed_runs_on_the_final_model():
    from powerattn.experiments.plots import _heatmap_evals

    final, stage = {"acc": "final"}, {"acc": "stage"}
    hard = {"config": {"stages": [{"seq_len": 512, "mix": []}, {"seq_len": 1024, "mix": []}]},
            "eval": {"512": final, "1024": final}, "stage_eval": {"512": stage}}  # fmt: skip
    evals, stars = _heatmap_evals(hard)
    assert evals == {"512": stage, "1024": final} and stars == {"1024"}
    mixed = {**hard, "config": {"stages": [{"seq_len": 512}, {"seq_len": 1024, "mix": [512]}]}}
    evals, stars = _heatmap_evals(mixed)
    assert evals == {"512": final, "1024": final} and stars is None
