"""The passkey experiments: train one small model per pattern at an equal budget and test
whether retrieval succeeds where the receptive-field theory says the needle can reach.

Parts (each a list of training runs, every run = train + evaluate):

* ``main``: every pattern of :func:`powerattn.equal_budget` (budget set at the last
  curriculum length), same model, same data, same steps -> accuracy by needle depth and
  length (the paper's Fig. 3), and accuracy against the theoretical reachable fraction;
* ``layers``: PowerAttention with fewer layers -> accuracy against the reachable fraction
  per number of layers (the paper's Fig. 1b);
* ``long``: power and stride slash trained to twice the length at the budget of that length,
  where stride slash needs more hops than the model has layers (the paper's 64K comparison).

Runs are independent: ``--jobs N`` trains N at once, each in its own process
(:mod:`.scheduler`; small models leave a big GPU mostly idle, and the kernel compilation is
on the CPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..patterns import Pattern, main_pattern_names
from ..receptive import coverage
from ..testing import compare_attention
from ..training.config import (
    PatternConfig,
    Stage,
    TaskConfig,
    TrainConfig,
    speed_options,
)
from ..training.evaluate import depth_bins, digit_hops, evaluate_passkey, guess_probability
from ..training.model import SDPA_MASK, attention
from ..training.trainer import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    CheckpointMismatchError,
    Trainer,
    clear_run,
)
from ..validate import check_int
from .presets import PRESETS, Preset  # noqa: F401 - re-exported
from .scheduler import Job, run_jobs
from .tables import (  # re-exported: the campaign's API in one import
    GATE_MIN_SEEDS,
    GATE_THRESHOLD,
    gate,
    gate_table,
    merge_results,
    seed_table,
    summary_table,
    theory_table,
    wilson_interval,
)

MAIN_PATTERNS = main_pattern_names()  # the registry's, in the paper's order
PARTS = ("main", "layers", "long")
STAGE_EVAL = "stage_eval.json"
# Exit status of a ``--only`` run refused because OUT holds a checkpoint of another config.
EXIT_CHECKPOINT_MISMATCH = 3


@dataclass
class RunSpec:
    name: str
    part: str
    config: TrainConfig
    eval_lengths: list[int]


def plan(
    preset: str | Preset,
    parts: list[str] | None = None,
    patterns: list[str] | None = None,
    steps_scale: float = 1.0,
    layer_sweep: list[int] | None = None,
    backend: str = "auto",
    seed: int | None = None,
    seeds: list[int] | None = None,
    speed: list[str] | None = None,
) -> list[RunSpec]:
    """The training runs of an experiment campaign (``layer_sweep`` overrides the preset's
    layer counts of the ``layers`` part; ``seed`` its seed of initialisation and data, and
    run names then end in ``-sSEED`` so that replicates merge with the preset's runs;
    ``seeds``: the runs of each of these seeds, one campaign; ``speed``: TrainConfig speed
    options to switch on, e.g. ``["compile"]``: the same training up to float rounding, not
    part of a run's identity, so runs with and without them resume and merge)."""
    if seeds is not None:
        if seed is not None:
            raise ValueError("give seed or seeds, not both")
        if not seeds or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must list distinct seeds, got {seeds}")
        return [
            spec
            for s in seeds
            for spec in plan(
                preset, parts, patterns, steps_scale, layer_sweep, backend, s, speed=speed
            )
        ]
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        preset = PRESETS[preset]
    suffix = ""
    if seed is not None:
        check_int("seed", seed, minimum=0)
        if seed != preset.seed:
            suffix = f"-s{seed}"
        preset = dataclasses.replace(preset, seed=seed)
    if layer_sweep is not None:
        if any(n <= 0 for n in layer_sweep):
            raise ValueError(f"layer_sweep must hold positive layer counts, got {layer_sweep}")
        preset = dataclasses.replace(preset, layer_sweep=list(layer_sweep))
    parts = list(PARTS) if parts is None else parts
    bad = sorted(set(parts) - set(PARTS))
    if bad:
        raise ValueError(f"parts {bad} unknown; valid: {list(PARTS)}")
    patterns = MAIN_PATTERNS if patterns is None else patterns
    bad = sorted(set(patterns) - set(MAIN_PATTERNS))
    if bad:
        raise ValueError(f"patterns {bad} unknown; valid: {MAIN_PATTERNS}")
    if steps_scale <= 0:
        raise ValueError(f"steps_scale must be positive, got {steps_scale}")
    speed = speed_options(speed)

    def scaled(stages: list[Stage]) -> list[Stage]:
        return [Stage(s.seq_len, max(1, round(s.steps * steps_scale)), list(s.mix)) for s in stages]

    def config(name: str, stages: list[Stage], layers: int | None = None) -> TrainConfig:
        model = dataclasses.replace(preset.model)
        if layers is not None:
            model.layers = layers
        return TrainConfig(
            model=model,
            pattern=PatternConfig(name=name),
            task=TaskConfig(block_size=preset.block_size, heldout_keys=preset.heldout_keys),
            optim=dataclasses.replace(preset.optim),
            stages=scaled(stages),
            batch_size=preset.batch_size,
            seed=preset.seed,
            loss_on=preset.loss_on,
            lm_weight=preset.lm_weight,
            replay=preset.replay,
            backend=backend,
            checkpoint_every=100,
            log_every=10,
            **{name: True for name in speed},
        )

    lengths = preset.eval_lengths or [s.seq_len for s in preset.stages]
    runs = []
    if "main" in parts:
        runs += [
            RunSpec(f"main-{p}{suffix}", "main", config(p, preset.stages), lengths)
            for p in patterns
        ]
    if "layers" in parts:
        final = [preset.stages[-1].seq_len]
        runs += [
            RunSpec(
                f"layers{n}-{p}{suffix}", "layers", config(p, preset.stages, n), final
            )  # fmt: skip
            for p in preset.layer_patterns
            if p in patterns
            for n in preset.layer_sweep
        ]
    if "long" in parts:
        long_lengths = preset.long_eval_lengths or [s.seq_len for s in preset.long_stages][-2:]
        runs += [
            RunSpec(f"long-{p}{suffix}", "long", config(p, preset.long_stages), long_lengths)
            for p in preset.long_patterns
            if p in patterns
        ]
    return runs


def check_backend(
    pattern: Pattern,
    seq_len: int,
    device: torch.device,
    backend: str = "auto",
    heads: int = 4,
    head_dim: int = 32,
    batch: int = 2,
    seed: int = 0,
    kv_heads: int | None = None,
) -> dict[str, Any]:
    """Check the attention the model trains with against the float64 oracle, in place.

    Forward and input gradients of :func:`powerattn.training.model.attention` (what every
    layer runs: ``sparse_attention(backend=...)``, causal SDPA for ``full``) in the training dtype
    (bf16 on CUDA, fp32 on CPU) under the project's tolerance rule,
    :func:`powerattn.testing.compare_attention` (2x a same-precision SDPA's error for the
    output, 3x for the gradients, plus the floor of the reduction length). q ``(batch, heads,
    seq_len, head_dim)``, k/v with ``kv_heads`` heads (default ``heads``; fewer: grouped-query
    attention, as the model has). Returns ``{"seq_len", "dtype", "ok", "out", "dq", "dk",
    "dv"}``, each of the last four ``{"err", "baseline_err", "tol", "ok"}``.
    """
    kv_heads = heads if kv_heads is None else kv_heads
    if kv_heads <= 0 or heads % kv_heads:
        raise ValueError(f"kv_heads must be a positive divisor of heads ({heads}), got {kv_heads}")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(seed)
    q_shape = (batch, heads, seq_len, head_dim)
    kv_shape = (batch, kv_heads, seq_len, head_dim)
    q, k, v, dout = (torch.randn(s, generator=gen) for s in (q_shape, kv_shape, kv_shape, q_shape))
    q, k, v = (t.to(device, dtype) for t in (q, k, v))
    report = compare_attention(
        lambda a, b, c: attention(a, b, c, pattern, backend=backend),
        q, k, v, pattern, dout=dout.double(),
    )  # fmt: skip
    return {"seq_len": seq_len, "dtype": str(dtype), **report}


def exercise_backend(
    pattern: Pattern,
    seq_len: int,
    batch: int,
    heads: int,
    head_dim: int,
    backend: str,
    kv_heads: int | None = None,
) -> None:
    """One forward + backward of the model's attention at a training shape on the GPU, and a
    synchronisation, so that a kernel that cannot serve the shape fails before training."""
    kv = heads if kv_heads is None else kv_heads
    shapes = [(batch, h, seq_len, head_dim) for h in (heads, kv, kv)]
    xs = [torch.randn(s, device="cuda", dtype=torch.bfloat16, requires_grad=True)
          for s in shapes]  # fmt: skip
    attention(*xs, pattern, backend=backend).float().square().mean().backward()
    torch.cuda.synchronize()


def run_one(
    spec: RunSpec,
    out_dir: Path,
    preset: Preset,
    progress: bool = True,
    stop_time: float | None = None,
) -> dict[str, Any]:
    """Train (resuming if a checkpoint exists) and evaluate one run; writes ``eval.json``.

    The attention backend is checked against the oracle before training (first stage
    length) and after it (every trained or evaluated length), in the same process, so
    a kernel problem shows up next to the numbers it would spoil. Training stops early at
    wall-clock ``stop_time`` (the run is then evaluated as it is and marked so). A run that
    fell back to ``sdpa_mask`` earlier (failed check, or a crash retried by ``--jobs``)
    resumes on ``sdpa_mask``, so that one run trains on one backend.
    """
    run_dir = out_dir / "runs" / spec.name
    t0 = time.perf_counter()
    fallback = None
    if spec.config.backend != SDPA_MASK and _resumed_backend(run_dir) == SDPA_MASK:
        fallback = f"resumed on {SDPA_MASK!r}, the fallback of an earlier attempt of this run"
        spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, backend=SDPA_MASK))
    trainer = Trainer(spec.config, run_dir, progress=progress)
    cfg = spec.config
    m = cfg.model
    hd = m.hidden // m.heads
    if trainer.device.type == "cuda":
        for n in sorted({s.seq_len for s in cfg.stages} | set(spec.eval_lengths)):
            exercise_backend(
                trainer.pattern, n, cfg.batch_size, m.heads, hd, cfg.backend, m.kv_heads
            )
    first = cfg.stages[0].seq_len

    def check(n: int, backend: str) -> dict[str, Any]:
        # The float64 oracle holds the full score matrix: one sequence beyond 4096 tokens.
        return check_backend(
            trainer.pattern, n, trainer.device, backend, m.heads, hd,
            batch=1 if n > 4096 else 2, kv_heads=m.kv_heads,
        )  # fmt: skip

    checks = [check(first, cfg.backend)]
    if not checks[0]["ok"] and cfg.backend != SDPA_MASK:
        # The kernel computes something else than the pattern: train on the exact mask.
        fallback = f"backend {cfg.backend!r} failed the check at {first} tokens"
        cfg = dataclasses.replace(cfg, backend=SDPA_MASK)
        spec = dataclasses.replace(spec, config=cfg)
        trainer = Trainer(cfg, run_dir, progress=progress)
        checks.append(check(first, SDPA_MASK))
    layers = cfg.model.layers
    pattern = trainer.pattern

    def evaluate(seq_len: int) -> dict[str, Any]:
        return _evaluate(trainer.model, pattern, seq_len, layers, preset, cfg.task.digits)

    # Each stage's length is also evaluated on the model at the end of that stage (the final
    # model may have lost the shorter lengths); kept in a file so that a resumed run has them.
    stage_file = run_dir / STAGE_EVAL
    if not (run_dir / CHECKPOINT).exists():
        stage_file.unlink(missing_ok=True)
    stage_evals = json.loads(stage_file.read_text()) if stage_file.exists() else {}

    def on_stage_end(i: int, stage: Stage) -> None:
        key = str(stage.seq_len)
        if stage_evals.get(key, {}).get("step") == trainer.step:
            return  # a resume at this stage's end: already evaluated before the kill
        stage_evals[key] = {"step": trainer.step, **evaluate(stage.seq_len)}
        tmp = stage_file.with_suffix(".tmp")  # atomic: a kill mid-write keeps the old file
        tmp.write_text(json.dumps(stage_evals) + "\n")
        os.replace(tmp, stage_file)

    final = trainer.train(resume=True, stop_time=stop_time, on_stage_end=on_stage_end)
    train_s = time.perf_counter() - t0
    if not final and (run_dir / METRICS).exists():  # nothing logged now: e.g. a rerun of a
        lines = (run_dir / METRICS).read_text().splitlines()  # finished run
        final = json.loads(lines[-1]) if lines else {}

    def final_eval(n: int) -> dict[str, Any]:
        st = stage_evals.get(str(n))
        if st is not None and st["step"] == trainer.step:  # the final model: no second pass
            return {k: v for k, v in st.items() if k != "step"}
        return evaluate(n)

    evals = {str(n): final_eval(n) for n in spec.eval_lengths}
    # Every length the model was trained or evaluated at (the layers and long runs are
    # evaluated at fewer lengths than they train on).
    lengths = sorted({s.seq_len for s in cfg.stages} | set(spec.eval_lengths))
    checks += [check(n, cfg.backend) for n in lengths]
    result = {
        "name": spec.name,
        "steps_done": trainer.step,
        "steps_planned": cfg.total_steps,
        "resumed_from": trainer.resumed_from,
        "backend": cfg.backend,
        "backend_fallback": fallback,
        "backend_check": checks,
        "backend_ok": all(c["ok"] for c in checks),
        "part": spec.part,
        "pattern": pattern.name,
        "pattern_desc": pattern.describe(),
        "max_degree": pattern.max_degree(pattern.num_blocks(cfg.final_seq_len)),
        "layers": layers,
        "config": cfg.to_dict(),
        "final_train_metrics": final,
        "wall_s": time.perf_counter() - t0,
        "train_s": train_s,
        "eval": evals,
        "stage_eval": stage_evals,
    }
    (run_dir / "eval.json").write_text(json.dumps(result) + "\n")
    return result


def _evaluate(
    model: torch.nn.Module, pattern: Pattern, seq_len: int, layers: int, preset: Preset,
    digits: int,
) -> dict[str, Any]:  # fmt: skip
    """Passkey accuracy at ``seq_len`` (``preset.eval_depths`` x ``eval_samples`` documents:
    depth bins with random needle positions and held-out keys if the preset says so) with,
    per document, the layers the theory says its needle needs."""
    if preset.eval_bins:
        depths, width = depth_bins(preset.eval_depths)
    else:
        depths, width = np.linspace(0.0, 1.0, preset.eval_depths), 0.0
    res = evaluate_passkey(
        model, seq_len, depths, preset.eval_samples, digits=digits, seed=preset.eval_seed,
        depth_width=width, keys="heldout" if preset.heldout_keys else "any",
    )  # fmt: skip
    per_digit = digit_hops(pattern, seq_len, res["key_positions"], digits)
    nh = np.where((per_digit < 0).any(axis=1), -1, per_digit.max(axis=1))
    reach = (nh >= 0) & (nh <= layers)
    return {
        "depth_target": res["depth_target"].tolist(),
        "depth": res["depth"].round(4).tolist(),
        "correct": res["correct"].astype(int).tolist(),
        "digit_acc": res["digit_acc"].round(3).tolist(),
        "needle_hops": nh.tolist(),
        # Chance of guessing the digits that cannot arrive in `layers` layers (1: all can).
        "guess_prob": [float(f"{x:.6g}") for x in guess_probability(per_digit, layers)],
        "accuracy": float(res["correct"].mean()),
        "reachable_fraction": float(reach.mean()),
        "accuracy_reachable": float(res["correct"][reach].mean()) if reach.any() else None,
        "accuracy_unreachable": float(res["correct"][~reach].mean()) if (~reach).any() else None,
        "block_coverage": float(coverage(pattern, seq_len, layers)[-1]),
        # Fraction of the needles reachable within k = 1 .. L + 2 layers.
        "reachable_within": [float(((nh >= 0) & (nh <= k)).mean()) for k in range(1, layers + 3)],
    }


def _resumed_backend(run_dir: Path) -> str | None:
    """The backend the checkpoint in ``run_dir`` was last trained on (``None``: none)."""
    if not (run_dir / CHECKPOINT).exists() or not (run_dir / CONFIG).exists():
        return None
    return json.loads((run_dir / CONFIG).read_text()).get("backend")


def _environment() -> dict[str, Any]:
    import transformers

    env = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    return env


def run_experiment(
    preset_name: str,
    out_dir: str | Path,
    parts: list[str] | None = None,
    patterns: list[str] | None = None,
    steps_scale: float = 1.0,
    jobs: int = 1,
    only: str | None = None,
    progress: bool = True,
    stop_time: float | None = None,
    layer_sweep: list[int] | None = None,
    backend: str = "auto",
    seed: int | None = None,
    seeds: list[int] | None = None,
    speed: list[str] | None = None,
) -> dict[str, Any] | None:
    """Run a campaign (or the single run ``only``) and write ``results.json`` + plots
    (``seeds``: the campaign of each of these seeds, as one; ``speed``: see :func:`plan`).

    ``stop_time`` (wall clock, ``time.time()``): every run stops training then and is
    evaluated as it stands (marked by ``steps_done < steps_planned``)."""
    out = Path(out_dir)
    specs = plan(
        preset_name, parts, patterns, steps_scale, layer_sweep, backend, seed, seeds, speed
    )
    preset = PRESETS[preset_name]
    if only is not None:
        match = [s for s in specs if s.name == only]
        if not match:
            raise ValueError(f"only {only!r} is not a run of this plan: {[s.name for s in specs]}")
        run_one(match[0], out, preset, progress, stop_time)
        return None
    t0 = time.perf_counter()
    if jobs <= 1:
        for spec in specs:
            print(f"== {spec.name}", flush=True)
            run_one(spec, out, preset, progress, stop_time)
    else:
        _run_parallel(specs, out, preset, jobs, stop_time)
    results = {
        "meta": {
            "preset": preset_name,
            "steps_scale": steps_scale,
            "seed": PRESETS[preset_name].seed if seed is None else seed,
            "seeds": seeds,
            "speed": speed_options(speed),
            "jobs": jobs,
            "wall_s": time.perf_counter() - t0,
            "command": " ".join(sys.argv),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            **_environment(),
        },
        "runs": {},
    }
    for spec in specs:
        run_dir = out / "runs" / spec.name
        if not (run_dir / "eval.json").exists():  # failed: reported, the others still count
            results["meta"].setdefault("failed", []).append(spec.name)
            continue
        res = json.loads((run_dir / "eval.json").read_text())
        log = run_dir / "metrics.jsonl"  # absent when stop_time came before the first log
        metrics = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        res["curve"] = [
            [m["step"], round(m["loss"], 4), round(m["exact_match"], 3)] for m in metrics
        ]
        res["tokens_per_s"] = (
            float(np.mean([m["tokens_per_s"] for m in metrics])) if metrics else None
        )
        results["runs"][spec.name] = res
    (out / "results.json").write_text(json.dumps(results) + "\n")
    from .plots import plot_all

    plot_all(results, out)
    print(summary_table(results))
    print()
    print(gate_table(results))
    return results


def _train_one(spec: RunSpec, out: Path, preset: Preset, stop_time: float | None) -> None:
    """One run of ``--jobs``, in its own process (see :mod:`.scheduler`): exits with
    :data:`EXIT_CHECKPOINT_MISMATCH` when OUT holds a checkpoint of another config."""
    try:
        run_one(spec, out, preset, progress=False, stop_time=stop_time)
    except CheckpointMismatchError as exc:
        print(f"powerattn experiment passkey: error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CHECKPOINT_MISMATCH) from None


def _last_error(log: Path) -> str:
    """The last line of a failed run's log that names an exception (what the driver's retry
    message says, so that a call's output tells why without unpacking its logs)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [
        x.strip()
        for x in lines
        if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt|Hit)\b", x.strip())
    ]
    return (errors or ["no exception in its log"])[-1][:300]


def _run_parallel(
    specs: list[RunSpec], out: Path, preset: Preset, jobs: int, stop_time: float | None
) -> None:
    """One process per run (:func:`_train_one`), ``jobs`` at a time, sharing the GPU (or one
    GPU each, round robin, when several are visible); each logs to ``runs/NAME/log.txt``.

    A run whose process dies (e.g. a kernel fault on the GPU) is started once more on the
    ``sdpa_mask`` fallback: from its last checkpoint if it has one (written before the
    failure, after the backend's checks passed: the same model on any backend), else from
    scratch; its first log is kept as ``log_failed.txt``. A second failure is reported and the
    checkpoint stays for a later call (an error while resuming, say, must not throw away the
    run's steps). A
    run whose directory holds a checkpoint of another configuration
    (:data:`EXIT_CHECKPOINT_MISMATCH`) is reported as failed, not retried."""
    failed = []

    def job(spec: RunSpec) -> Job:
        run_dir = out / "runs" / spec.name
        return Job(
            spec.name, _train_one, (spec, out, preset, stop_time), log=run_dir / "log.txt",
            label=f"backend {spec.config.backend}", meta={"spec": spec, "dir": run_dir},
        )  # fmt: skip

    def on_start(j: Job) -> None:
        j.meta["dir"].mkdir(parents=True, exist_ok=True)
        (j.meta["dir"] / "eval.json").unlink(missing_ok=True)  # a failed run must not look done

    def on_exit(j: Job, code: int) -> Job | None:
        spec, run_dir = j.meta["spec"], j.meta["dir"]
        # A checkpoint of another configuration in OUT: retrying from scratch would
        # silently throw that run away.
        if code and code != EXIT_CHECKPOINT_MISMATCH and spec.config.backend != SDPA_MASK:
            (run_dir / "log.txt").rename(run_dir / "log_failed.txt")
            if not (run_dir / CHECKPOINT).exists():
                clear_run(run_dir)  # no metrics or config of the failed attempt to append to
            why = _last_error(run_dir / "log_failed.txt")
            print(f"== retrying {spec.name} on the {SDPA_MASK} fallback ({why})", flush=True)
            cfg = dataclasses.replace(spec.config, backend=SDPA_MASK)
            return job(dataclasses.replace(spec, config=cfg))
        if code:
            failed.append(spec.name)
        return None

    run_jobs([job(s) for s in specs], jobs, _visible_gpus(), on_start, on_exit)
    if failed:
        print(f"== runs failed: {failed}; see runs/NAME/log.txt", flush=True)


def _visible_gpus() -> list[str]:
    """The CUDA devices the runs may use, as ``CUDA_VISIBLE_DEVICES`` entries (empty: none)."""
    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [x.strip() for x in listed.split(",") if x.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


__all__ = [
    "PRESETS",
    "Preset",
    "RunSpec",
    "gate",
    "gate_table",
    "GATE_MIN_SEEDS",
    "GATE_THRESHOLD",
    "seed_table",
    "summary_table",
    "theory_table",
    "merge_results",
    "plan",
    "run_experiment",
    "run_one",
    "wilson_interval",
]
