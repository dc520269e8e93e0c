"""Figure 5's models: runs of the passkey experiment (:mod:`powerattn.experiments.passkey`,
part ``main``), probed from their checkpoints.

The models are trained by the experiment itself, in the recipe that passed its gate (preset
``gpu-mix``: 5.2M parameters, lengths mixed every step, 5500 steps, flat learning rate then a
cool-down; ``smoke-mix`` is its CPU twin, which learns nothing), so a probed model is one whose
passkey accuracy the experiment has measured (its ``eval.json``). "After" is exactly the run's
checkpoint (:func:`load_run` checks every tensor); "before" is the model the run's trainer
starts from: the same configuration built with the same initialisation seed
(:func:`powerattn.training.trainer.build_run_model`). The probe documents have the run's
geometry: its last stage's length (4096 tokens in ``gpu-mix``) in its blocks (32 tokens).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..training.config import SPEED_OPTIONS, TrainConfig
from ..training.trainer import (
    CHECKPOINT,
    CONFIG,
    NOT_IN_IDENTITY,
    build_run_model,
    resolve_device,
)
from . import probe
from .campaign import PROBE_FILE, _write_json
from .lm import run_name

PRESETS = ("gpu-mix", "smoke-mix")  # the gated recipe and its CPU twin
DEFAULT_PRESET = "gpu-mix"  # with CUDA
CPU_PRESET = "smoke-mix"  # without: gpu-mix (5500 steps up to 4096 tokens) is GPU-sized
PART = "main"  # the experiment's part whose runs are probed (every pattern at 6 layers)


def default_preset(device: str | torch.device) -> str:
    """The preset ``eval probe`` trains when given none: gpu-mix on CUDA, its CPU twin on any
    other ``device`` (no CUDA, or ``--device cpu``)."""
    return DEFAULT_PRESET if torch.device(device).type == "cuda" else CPU_PRESET


def train_runs(
    out: str | Path,
    preset: str,
    patterns: list[str],
    seeds: list[int],
    jobs: int = 1,
    stop_time: float | None = None,
    speed: list[str] | None = None,
    steps_scale: float = 1.0,
) -> None:
    """Train (resuming) and evaluate the experiment's ``main`` runs of ``patterns`` x
    ``seeds`` in ``preset`` into ``out`` (``out/runs/main-PATTERN[-sSEED]``, ``results.json``),
    ``jobs`` processes at a time; ``speed``: the trainer's speed options (no part of a run's
    identity); ``stop_time``: wall clock (``time.time()``) at which training stops."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {preset!r}")
    from ..experiments.passkey import run_experiment

    run_experiment(
        preset, out, parts=[PART], patterns=patterns, steps_scale=steps_scale, jobs=jobs,
        progress=False, stop_time=stop_time, seeds=seeds, speed=speed,
    )  # fmt: skip


def find_run(runs_dir: str | Path, pattern: str, seed: int) -> Path:
    """The ``main`` run of ``pattern`` and ``seed`` (read from each run's ``config.json``) in
    ``runs_dir``: an experiment's output folder or its ``runs/``."""
    root = Path(runs_dir)
    if (root / "runs").is_dir():
        root = root / "runs"
    seen, found = [], []
    for path in sorted(root.glob(f"{PART}-*/{CONFIG}")):
        c = json.loads(path.read_text())
        seen.append(f"{path.parent.name} ({c['pattern']['name']}, seed {c['seed']})")
        if c["pattern"]["name"] == pattern and c["seed"] == seed:
            found.append(path.parent)
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise ValueError(
            f"{what} {PART} runs of {pattern!r} with seed {seed} in {root}; "
            f"runs there: {', '.join(seen) or 'none'}"
        )
    if not (found[0] / CHECKPOINT).is_file():
        raise ValueError(f"run {found[0]} has no {CHECKPOINT}: nothing trained to probe")
    return found[0]


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in NOT_IN_IDENTITY}


def load_run(
    run_dir: str | Path,
) -> tuple[TrainConfig, torch.nn.Module, torch.nn.Module, dict[str, Any]]:
    """``(config, model at initialisation, trained model, facts)`` of a run, on the CPU.

    The trained model is the checkpoint's weights, checked tensor by tensor (names, dtypes,
    values) after loading: a ``ValueError`` if anything differs, or if ``config.json`` and
    the checkpoint disagree on the run's identity. ``facts``: ``step``, ``tensors`` checked
    and the checkpoint file's ``sha256``."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = json.loads((run_dir / CONFIG).read_text())
    if _identity(saved) != _identity(state["config"]):
        raise ValueError(f"{run_dir}: {CONFIG} and {CHECKPOINT} describe different runs")
    cfg = TrainConfig.from_dict(state["config"])
    init = build_run_model(cfg, cfg.build_pattern())  # the trainer's step 0 (seed cfg.seed)
    trained = copy.deepcopy(init)
    trained.load_state_dict(state["model"])  # strict: the same parameter names
    weights = state["model"]
    got = trained.state_dict()
    bad = sorted(
        k for k, v in got.items()
        if k not in weights or v.dtype != weights[k].dtype or not torch.equal(v, weights[k])
    )  # fmt: skip
    if bad or set(got) != set(weights):
        raise ValueError(f"{path}: the loaded model differs from the checkpoint in {bad[:5]}")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return cfg, init, trained, {"step": int(state["step"]), "tensors": len(got), "sha256": sha}


def _passkey_eval(run_dir: Path, step: int) -> dict[str, Any] | None:
    """The experiment's evaluation of the run (exact match per length) if it is of this
    checkpoint's step, else ``None``."""
    path = run_dir / "eval.json"
    if not path.is_file():
        return None
    ev = json.loads(path.read_text())
    if ev.get("steps_done") != step:
        return None
    return {
        "exact_match": {n: e["accuracy"] for n, e in ev["eval"].items()},
        "backend": ev.get("backend"),
        "backend_ok": ev.get("backend_ok"),
    }


def probe_run(
    run_dir: str | Path,
    out: str | Path,
    per_key: int = 32,
    engine: str = "torch",
    device: str = "auto",
) -> dict[str, Any]:
    """Probe a run before training (its initial model) and after (its checkpoint) at its
    last stage's length in its blocks; writes ``out/PATTERN-sSEED/probe.json`` (the fields
    :func:`powerattn.eval.campaign.summarize_probe` reads, and where the models came from)."""
    run_dir = Path(run_dir)
    cfg, init, trained, facts = load_run(run_dir)
    pattern = cfg.build_pattern()
    seq_len, bs = cfg.final_seq_len, cfg.task.block_size
    if pattern.block_size != bs:
        raise ValueError(f"{run_dir}: pattern blocks of {pattern.block_size}, documents' {bs}")
    dev = resolve_device(device)
    maps = {}
    for key, model in (("before", init), ("after", trained)):
        maps[key] = probe.probe_model(model.to(dev), pattern, seq_len, per_key, engine=engine)
        model.cpu()
    after = maps["after"]
    name = run_name(pattern.name, cfg.seed)
    result = {
        "name": name,
        "pattern": pattern.name,
        "pattern_desc": pattern.describe(),
        "seed": cfg.seed,
        "seq_len": seq_len,
        "block_size": bs,
        "steps": facts["step"],
        "steps_planned": cfg.total_steps,
        "speed": [n for n in SPEED_OPTIONS if getattr(cfg, n)],  # the run's last training
        "source": {"run": run_dir.name, "checkpoint_sha256": facts["sha256"]},
        "tensors_checked": facts["tensors"],
        "passkey": _passkey_eval(run_dir, facts["step"]),
        "per_key": per_key,
        "needle_block": after["needle_block"],
        "key_blocks": after["key_blocks"],
        "earliest_key_block": after["earliest_key_block"],
        "chance": after["chance"],
        "documents": after["documents"],
        "before": maps["before"]["accuracy"].tolist(),
        "after": after["accuracy"].tolist(),
        "reached": after["reached"].astype(int).tolist(),
    }
    path = Path(out) / name / PROBE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, result)
    return result
