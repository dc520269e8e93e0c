"""Campaigns of the evaluation tools: runs per (pattern, seed), trained at equal budget,
resumable, ``jobs`` at a time, and the summaries committed under ``results/``.

* ``lm``: :func:`powerattn.eval.lm.run_one` (language model + perplexity by position).
* ``ruler``: continue a language-model run on the RULER task mixture (answer-only loss), as the
  paper continues a pretrained model, optionally as the hybrid (full attention in the last 2
  of every 7 layers), then score the suite at the context length.
* ``probe``: train a byte-level model on the passkey curriculum (the passkey experiment's
  trainer) and probe it before and after training (:mod:`powerattn.eval.probe`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..training.config import (
    SPEED_OPTIONS,
    TaskConfig,
    TrainConfig,
    speed_options,
)
from . import lm, ruler
from .bpe import DEFAULT_PATH, BPETokenizer

ANSWER_TOKENS = 18  # RULER training documents end in this many answer (+ EOS) tokens
RULER_FILE = "ruler.json"
PROBE_FILE = "probe.json"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj) + "\n")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- results

# run folder -> results folder; base/: a continued-pretraining base (gpu_eval.sh LM_DIR=base)
AREAS = {"lm": "lm", "base": "lm-base", "ruler": "ruler", "probe": "probing"}
KEEP_SUFFIXES = (".json", ".jsonl", ".log", ".txt")  # what of a run is committed (no weights)
PER_RUN = "per_run"  # results/<area>/per_run/: the runs' outputs (.gitignore has runs/)


def _files_and_folders(member, path: str):
    """tarfile's ``data`` filter, links skipped: a link in a runs.tgz (e.g. ``lm -> base``
    made on the GPU machine to point one part at another's runs) names machine paths; the
    runs are the real folders."""
    import tarfile

    return None if member.issym() or member.islnk() else tarfile.data_filter(member, path)


def unpack_runs(source: str | Path, root: str | Path) -> list[Path]:
    """Copy the runs' outputs of a GPU call into ``root/<area>/per_run`` (:data:`AREAS`; each area
    present in ``source`` replaces that area's old runs) and the call's ``log.txt`` and
    ``gpu.txt`` into ``call_log.txt`` and ``gpu.txt`` of each of those areas; the areas the
    call holds no runs of are left as they are. ``source``: the call's output folder (holding
    ``runs.tgz``), the ``runs.tgz`` itself, or a folder holding ``lm/``, ``base/``,
    ``ruler/``, ``probe/``. Only :data:`KEEP_SUFFIXES` files are copied. Returns the
    ``per_run`` folders written."""
    import shutil
    import tarfile
    import tempfile

    source, root = Path(source), Path(root)
    out_dir = source if source.is_dir() else source.parent
    with tempfile.TemporaryDirectory() as tmp:
        tgz = source / "runs.tgz" if source.is_dir() else source
        if tgz.is_file():
            try:
                with tarfile.open(tgz) as tar:
                    tar.extractall(tmp, filter=_files_and_folders)
            except tarfile.TarError:
                raise ValueError(
                    f"{tgz} is not a runs.tgz (not a tar archive); give the GPU call's output "
                    "folder or its runs.tgz"
                ) from None
            base = Path(tmp)
        elif source.is_dir():
            base = source
        else:
            raise ValueError(
                f"--from {source}: no such folder or file; give the GPU call's output folder "
                "(holding runs.tgz) or its runs.tgz"
            )
        written = []
        for run_area, area in AREAS.items():
            src = base / run_area
            if not src.is_dir():
                continue
            dst = root / area / PER_RUN
            if dst.exists():
                shutil.rmtree(dst)
            for f in sorted(src.rglob("*")):
                if (
                    f.is_file()
                    and f.suffix in KEEP_SUFFIXES
                    and not f.name.startswith("checkpoint")
                ):
                    target = dst / f.relative_to(src)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, target)
            written.append(dst)
    for name, target in (("log.txt", "call_log.txt"), ("gpu.txt", "gpu.txt")):
        if (out_dir / name).is_file():
            for dst in written:  # the call's areas only
                shutil.copy2(out_dir / name, dst.parent / target)
    if not written:
        raise ValueError(
            f"{source} holds no lm/, base/, ruler/ or probe/ runs; give the GPU call's output "
            "folder (holding runs.tgz) or its runs.tgz"
        )
    return written


# ---------------------------------------------------------------------------- pool


def run_pool(kind: str, specs: list[dict[str, Any]], out: str | Path, jobs: int) -> list[str]:
    """Run ``WORKERS[kind](**spec)`` for every spec, in this process (``jobs == 1``) or in
    ``jobs`` subprocesses at a time (logs: ``out/<kind>-<name>.log``). Returns the names of the
    specs that failed (a failure in this process is re-raised)."""
    if kind not in WORKERS:
        raise ValueError(f"kind must be one of {sorted(WORKERS)}, got {kind!r}")
    Path(out).mkdir(parents=True, exist_ok=True)
    if jobs <= 1:
        for spec in specs:
            if "compile" in spec.get("speed", ()):
                _fresh_compile_caches()
            WORKERS[kind](**spec)
        return []
    failed, running, queue = [], [], list(specs)
    while queue or running:
        while queue and len(running) < jobs:
            spec = queue.pop(0)
            name = lm.run_name(spec["pattern"], spec["seed"], spec.get("full_layers", []))
            log = open(Path(out) / f"{kind}-{name}.log", "w")  # noqa: SIM115 -- closed below
            cmd = [sys.executable, "-m", "powerattn.eval.campaign", kind, json.dumps(spec)]
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
        time.sleep(0.5)
        for item in list(running):
            name, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                if proc.returncode:
                    failed.append(name)
    return failed


def _fresh_compile_caches() -> None:
    """Forget the graphs compiled for the previous run of this process: runs trained one after
    another in one process (``jobs == 1``) would otherwise pile up their graphs (on the GPU one
    per pattern and hybrid at least: FlexAttention's mask is traced into it) towards the
    trainer's compile limit, an error past it."""
    import torch

    torch._dynamo.reset()


def lm_specs(
    corpus: str,
    out: str,
    preset: str,
    patterns: list[str],
    seeds: list[int],
    steps: int | None,
    device: str,
    stop_time: float | None,
    tokenizer: str = str(DEFAULT_PATH),
    speed: list[str] | None = None,
    init_from: str | None = None,
) -> list[dict[str, Any]]:
    """The specs of :func:`powerattn.eval.lm.run_one` for every (seed, pattern)."""
    _check(preset, patterns)
    speed = speed_options(speed)
    lm.tokenize_corpus(corpus, tokenizer)  # once, before the workers read it
    return [
        dict(
            corpus=str(corpus),
            out=str(out),
            preset=preset,
            pattern=p,
            seed=int(s),
            steps=steps,
            device=device,
            stop_time=stop_time,
            tokenizer=str(tokenizer),
            speed=speed,
            init_from=None if init_from is None else str(init_from),
        )  # fmt: skip
        for s in seeds
        for p in patterns
    ]


def _check(preset: str, patterns: list[str]) -> None:
    if preset not in lm.PRESETS:
        raise ValueError(f"preset must be one of {sorted(lm.PRESETS)}, got {preset!r}")
    unknown = sorted(set(patterns) - set(lm.PATTERNS))
    if unknown:
        raise ValueError(f"unknown patterns {unknown}; choose from {lm.PATTERNS}")


# ---------------------------------------------------------------------------- speed

# SPEED=auto of scripts/gpu_eval.sh: a speed setting must train at least this much faster than
# the default, alone on the GPU, to be used. Alone is an optimistic guide for 12 runs sharing
# the GPU (sharing already hides some of the host time compile saves), and each run pays its
# own compilation (~1-2 min while 12 compile at once, not measured): with the plan's ~355 s of
# eager training, a shared speed-up of 1.2 at 60 s of compilation only breaks even.
MIN_SPEEDUP = 1.3


def choose_speed(
    train_speed: str | Path, model: str = "lm", min_speedup: float = MIN_SPEEDUP
) -> tuple[list[str], str]:
    """``(speed options, reason)`` from a ``train_speed.json`` of scripts/gpu_train_speed.py:
    the measured setting of ``model`` with the largest speed-up over the default among those
    whose loss check passed and whose speed-up is at least ``min_speedup`` (a setting named
    after one option switches it on, ``all`` every option), else none (the default). A
    missing, partial or failed measurement chooses the default; ``reason`` says why, in one
    line for the campaign's log."""
    path = Path(train_speed)
    try:
        res = json.loads(path.read_text())["models"][model]["settings"]
        base = res["default"]["steps_per_s"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [], f"default: no usable measurement of {model} in {path} ({type(exc).__name__})"
    if not isinstance(base, (int, float)) or base <= 0:
        return [], f"default: the default's steps/s of {model} in {path} is {base!r}"
    rows = []
    for name, row in res.items():
        if name == "default":
            continue
        check = row.get("check", {})
        gain = row.get("steps_per_s", 0.0) / base
        ok = bool(check.get("pass")) and gain >= min_speedup
        rows.append((ok, gain, name, check.get("max_abs_diff"), check.get("tol")))
    seen = "; ".join(
        f"{name} {gain:.2f}x, loss check {'passed' if d is not None and d <= t else 'FAILED'}"
        for _, gain, name, d, t in rows
    )
    good = sorted((r for r in rows if r[0]), key=lambda r: r[1])
    if not good:
        return [], (
            f"default: no setting passed its loss check at >= {min_speedup}x the default's "
            f"{base:.2f} steps/s ({seen or 'none measured'})"
        )
    _, gain, name, _, _ = good[-1]
    options = list(SPEED_OPTIONS) if name == "all" else speed_options([name])
    return options, f"{','.join(options)}: {gain:.2f}x the default's {base:.2f} steps/s ({seen})"


# ---------------------------------------------------------------------------- RULER


HYBRID_RULE = "2 of every 7"  # the paper's hybrid: full attention in 2 of every 7 layers


def hybrid_layers(preset: str) -> list[int]:
    """The layers the paper's hybrid keeps on full attention for ``preset``'s depth: the last
    2 of every 7 (:func:`powerattn.transformers.full_layers_from_rule`); the ``gpu``
    preset's 7 layers fit the rule exactly (layers 5 and 6)."""
    from ..transformers import full_layers_from_rule

    return full_layers_from_rule(HYBRID_RULE, lm.PRESETS[preset].model.layers)


def ruler_config(
    preset: str,
    pattern: str,
    seed: int,
    steps: int,
    device: str,
    full_layers: list[int],
    speed: list[str] | None = None,
) -> TrainConfig:
    """The continued training on the RULER mixture: the language model's config with the
    answer-only loss over :data:`ANSWER_TOKENS` tokens and a lower learning rate (``speed``:
    :func:`powerattn.training.config.speed_options`)."""
    cfg = lm.train_config(lm.PRESETS[preset], pattern, seed, steps, device, full_layers, speed)
    cfg.loss_on = "answer"
    cfg.task = TaskConfig(block_size=cfg.task.block_size, digits=ANSWER_TOKENS)
    cfg.optim = dataclasses.replace(cfg.optim, lr=cfg.optim.lr / 3)
    return cfg


ORIGIN_FILE = "started_from.txt"  # a RULER run's starting point, read again when it resumes


def ruler_run_one(
    lm_runs: str | None,
    out: str,
    preset: str,
    pattern: str,
    seed: int,
    steps: int,
    samples: int,
    device: str = "auto",
    full_layers: list[int] = (),
    tasks: list[str] | None = None,
    stop_time: float | None = None,
    tokenizer: str = str(DEFAULT_PATH),
    speed: list[str] = (),
) -> dict[str, Any]:
    """Continue ``lm_runs/<pattern>-s<seed>`` (weights only; from scratch if it has no
    checkpoint) on the RULER mixture into ``out/NAME``, then score the suite at the preset's
    context on ``samples`` samples per task (the same samples for every run). ``speed``: the
    trainer speed options (:func:`powerattn.training.config.speed_options`)."""
    import torch

    from ..training.trainer import CHECKPOINT, Trainer

    p = lm.PRESETS[preset]
    tok = BPETokenizer(tokenizer)
    full_layers = list(full_layers)
    cfg = ruler_config(preset, pattern, seed, steps, device, full_layers, speed)
    run_dir = Path(out) / lm.run_name(pattern, seed, full_layers)
    batch_fn = ruler.training_batch_fn(tok, tasks)
    trainer = Trainer(cfg, run_dir, progress=False, tokenizer=tok, batch_fn=batch_fn)
    init = Path(lm_runs) / lm.run_name(pattern, seed) / CHECKPOINT if lm_runs else None
    origin = run_dir / ORIGIN_FILE  # what the run started from, kept for its resumes
    if (run_dir / CHECKPOINT).exists():
        started_from = origin.read_text().strip() if origin.is_file() else "unknown (resumed)"
    else:
        started_from = "scratch"
        if init is not None and init.exists():
            state = torch.load(init, map_location=trainer.device, weights_only=False)
            trainer.model.load_state_dict(state["model"])
            started_from = str(init)
        elif init is not None:
            print(f"{run_dir.name}: no {init}; starts from scratch", file=sys.stderr)
        run_dir.mkdir(parents=True, exist_ok=True)
        origin.write_text(started_from + "\n")
    t0 = time.time()
    trainer.train(stop_time=stop_time)
    res = ruler.evaluate_model(trainer.model, tok, p.context, tasks, samples, seed=0)
    result = {
        "name": run_dir.name,
        "pattern": pattern,
        "full_layers": full_layers,
        "seed": seed,
        "length": p.context,
        "steps": trainer.step,
        "steps_planned": cfg.total_steps,
        "started_from": started_from,
        "train_s_this_call": time.time() - t0,
        "speed": speed_options(speed),
        **res,
    }
    _write_json(run_dir / RULER_FILE, result)
    return result


def _task_matrix(run: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per task, the per-sample scores of a run (in sample order)."""
    out: dict[str, list[float]] = {}
    for p in run["predictions"]:
        out.setdefault(p["task"], []).append(p["score"])
    return {t: np.asarray(v) for t, v in out.items()}


def _bootstrap_average(m: dict[str, np.ndarray], draws: int, seed: int) -> dict[str, Any]:
    """Average over tasks of per-sample values ``m``, with a 95 % bootstrap interval that
    resamples the samples of each task."""
    rng = np.random.default_rng(seed)
    boot = np.zeros(draws)
    for t in m:
        idx = rng.integers(0, m[t].size, size=(draws, m[t].size))
        boot += m[t][idx].mean(1)
    boot /= len(m)
    mean = float(np.mean([v.mean() for v in m.values()]))
    return {
        "mean": mean,
        "ci95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
    }


def paired_average_gap(a: dict, b: dict, draws: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Average over tasks of run ``a`` minus run ``b``, with a 95 % bootstrap interval that
    resamples the samples of each task (both runs scored the same samples)."""
    ma, mb = _task_matrix(a), _task_matrix(b)
    if {t: v.size for t, v in ma.items()} != {t: v.size for t, v in mb.items()}:
        raise ValueError(f"runs {a['name']} and {b['name']} were scored on other samples")
    res = _bootstrap_average({t: ma[t] - mb[t] for t in ma}, draws, seed)
    return {"gap": res["mean"], "ci95": res["ci95"]}


def average_interval(run: dict[str, Any], draws: int = 2000, seed: int = 0) -> dict[str, Any]:
    """A run's average over tasks with a 95 % bootstrap interval over its samples."""
    return _bootstrap_average(_task_matrix(run), draws, seed)


RULER_FLOOR = 0.20  # docs/evaluation.md, Table 2 rule 1: full attention's average must reach it


def table2_verdicts(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The decision rules of docs/evaluation.md for Table 2 (fixed before any run), applied to
    the hybrid models (each sparse pattern with full attention in the paper's 2 of every 7
    layers) and plain full attention, every seed present: ``{"floor", "pairs", "claims"}``.

    A model beats another when, in every seed, their paired average gap's 95 % bootstrap
    interval over samples (:func:`paired_average_gap`) excludes 0 on the same side. The floor
    first: if full attention averages below :data:`RULER_FLOOR` in some seed, the models did
    not learn the tasks and every claim is "inconclusive (floor not reached)". A claim that
    needs a model missing in some seed is "inconclusive". Runs that stopped short of their
    planned steps are left out (never compared at unequal budgets)."""
    done = [r for r in runs if r["steps"] >= r["steps_planned"]]
    excluded = sorted(r["name"] for r in runs if r not in done)
    by = {}
    for r in done:
        if r["pattern"] == "full" and not r["full_layers"]:
            by["full", r["seed"]] = r
        elif r["pattern"] != "full" and r["full_layers"]:
            by[r["pattern"], r["seed"]] = r
    seeds = sorted({s for _, s in by})
    models = [p for p in lm.PATTERNS if seeds and all((p, s) in by for s in seeds)]

    def side(per_seed: list[dict[str, Any]]) -> int:
        """+1 if the first model beats the second in every seed, -1 the reverse, else 0."""
        sides = {1 if g["ci95"][0] > 0 else -1 if g["ci95"][1] < 0 else 0 for g in per_seed}
        return sides.pop() if len(sides) == 1 else 0

    pairs = {}
    for i, a in enumerate(models):
        for b in models[i + 1 :]:
            per_seed = [paired_average_gap(by[a, s], by[b, s]) for s in seeds]
            pairs[f"{a} - {b}"] = {"per_seed": per_seed, "beats": side(per_seed)}

    def beats(a: str, b: str) -> int | None:
        """+1 if ``a`` beats ``b``, -1 if ``b`` beats ``a``, 0 if neither; None if either
        is missing."""
        if f"{a} - {b}" in pairs:
            return pairs[f"{a} - {b}"]["beats"]
        return -pairs[f"{b} - {a}"]["beats"] if f"{b} - {a}" in pairs else None

    def rank_claim(top: str, others: list[str], sign: int) -> str:
        """``top`` beats (sign +1) or loses to (sign -1) each of ``others``."""
        verdicts = [beats(top, o) for o in others]
        if None in verdicts or not others:
            return "inconclusive"
        if all(v == sign for v in verdicts):
            return "reproduced"
        if any(v == -sign for v in verdicts):
            return "refuted"
        return "inconclusive"

    full_avg = [by["full", s]["categories"]["average"] for s in seeds if ("full", s) in by]
    floor = {
        "full_average": full_avg,
        "needs": RULER_FLOOR,
        "reached": bool(full_avg) and len(full_avg) == len(seeds) and min(full_avg) >= RULER_FLOOR,
    }
    sparse = lm.SPARSE
    claims = {
        "power_best_sparse": rank_claim("power", [p for p in sparse if p != "power"], 1),
        "sliding_window_last": rank_claim(
            "sliding_window", [p for p in sparse if p != "sliding_window"], -1
        ),
        "full_first": rank_claim("full", sparse, 1),
    }
    if not floor["reached"]:
        unknown = not full_avg or len(full_avg) != len(seeds)
        why = "full attention missing" if unknown else "floor not reached"
        claims = {k: f"inconclusive ({why})" for k in claims}
    return {
        "seeds": seeds,
        "models": {p: [by[p, s]["name"] for s in seeds] for p in models},
        "excluded_runs": excluded,
        "floor": floor,
        "pairs": pairs,
        "claims": claims,
    }


def table2_lines(v: dict[str, Any]) -> list[str]:
    """The verdicts of :func:`table2_verdicts` as lines under the table."""
    f = v["floor"]
    avg = " ".join(f"{a:.3f}" for a in f["full_average"]) or "none"
    lines = [
        f"hybrid models (full attention in 2 of every 7 layers) and full attention, seeds "
        f"{v['seeds']}; excluded runs: {v['excluded_runs'] or 'none'}",
        f"  floor: full attention's average per seed {avg} (needs >= {f['needs']}): "
        + ("reached" if f["reached"] else "NOT reached"),
    ]
    lines += [f"  {claim}: {status}" for claim, status in v["claims"].items()]
    for name, pair in v["pairs"].items():
        cis = " ".join(f"[{g['ci95'][0]:+.3f},{g['ci95'][1]:+.3f}]" for g in pair["per_seed"])
        gaps = " ".join(f"{g['gap']:+.3f}" for g in pair["per_seed"])
        word = {1: "first better", -1: "second better", 0: "not decided"}[pair["beats"]]
        lines.append(f"  average {name:<30} {gaps}  95% {cis}  {word}")
    return lines


def summarize_ruler(runs_dir: str | Path) -> dict[str, Any]:
    """``{"length", "scores": [{"pattern", "seed", "task", "score"}], "table", "details"}`` of
    every ``ruler.json`` under ``runs_dir`` (the issue's schema, the printed table, and per
    seed the paired average gap of every run to every other one with a bootstrap interval)."""
    runs = [json.loads(p.read_text()) for p in sorted(Path(runs_dir).glob(f"*/{RULER_FILE}"))]
    if not runs:
        raise ValueError(f"no {RULER_FILE} under {runs_dir}/*/; run eval ruler --train first")
    lengths = {r["length"] for r in runs}
    if len(lengths) != 1:
        raise ValueError(f"runs of different lengths {sorted(lengths)} under {runs_dir}")
    scores, rows = [], {}
    for r in sorted(runs, key=lambda r: (r["pattern"], r["full_layers"], r["seed"])):
        label = lm.run_name(r["pattern"], r["seed"], r["full_layers"]).rsplit("-s", 1)[0]
        for task, s in r["scores"].items():
            scores.append({"pattern": label, "seed": r["seed"], "task": task, "score": s})
        rows[r["name"]] = {**r["scores"], **r["categories"]}
    gaps = {
        f"{a['name']} - {b['name']}": paired_average_gap(a, b)
        for a in runs
        for b in runs
        if a is not b and a["seed"] == b["seed"]
    }
    verdicts = table2_verdicts(runs)
    details = {
        "average_ci95": {r["name"]: average_interval(r)["ci95"] for r in runs},
        "average": {r["name"]: r["categories"]["average"] for r in runs},
        "samples": {r["name"]: len(r["predictions"]) for r in runs},
        "steps": {r["name"]: [r["steps"], r["steps_planned"]] for r in runs},
        "paired_average_gaps": gaps,
        "verdicts": verdicts,
    }
    return {
        "length": lengths.pop(),
        "scores": scores,
        "table": "\n".join([ruler.table(rows), "", *table2_lines(verdicts)]),
        "details": details,
        "runs": runs,
    }


def plot_ruler(runs: list[dict[str, Any]], details: dict[str, Any], path: str | Path) -> Path:
    """Left: each model's average over tasks with its 95 % bootstrap interval over samples
    (from ``details`` of :func:`summarize_ruler`; full attention, then the hybrids, then the
    plain patterns; the floor dashed). Right: the per-task scores as a heat map, numbers
    written in."""
    import matplotlib.pyplot as plt

    from ..plots import pattern_color, save_figure  # matplotlib on the Agg backend

    order = {p: i for i, p in enumerate(lm.PATTERNS)}

    def key(r: dict[str, Any]) -> tuple:
        group = 0 if r["pattern"] == "full" else 1 if r["full_layers"] else 2
        return group, order.get(r["pattern"], 99), r["seed"]

    runs = sorted(runs, key=key)
    names = [r["name"] for r in runs]
    tasks = list(runs[0]["scores"])
    fig, (a, b) = plt.subplots(
        1, 2, figsize=(13, 1.5 + 0.38 * len(runs)), gridspec_kw={"width_ratios": [1, 1.4]}
    )
    y = np.arange(len(runs))[::-1]
    for yi, r in zip(y, runs, strict=True):
        mean, (lo, hi) = details["average"][r["name"]], details["average_ci95"][r["name"]]
        hatch = "" if r["full_layers"] or r["pattern"] == "full" else "//"
        a.barh(yi, mean, color=pattern_color(r["pattern"]), hatch=hatch, alpha=0.8)
        a.errorbar(mean, yi, xerr=[[mean - lo], [hi - mean]], color="black",
                   capsize=3, lw=1)  # fmt: skip
    a.axvline(
        details["verdicts"]["floor"]["needs"],
        color="grey",
        ls="--",
        lw=1,
        label="floor: full attention must reach it",
    )
    a.set_yticks(y, names, fontsize=8)
    a.set_xlim(0, 1)
    a.set_xlabel("average over tasks (95 % bootstrap interval over samples)")
    a.legend(fontsize=8, loc="lower right")
    m = np.asarray([[r["scores"][t] for t in tasks] for r in runs])
    im = b.imshow(m, aspect="auto", vmin=0, vmax=1, cmap="viridis")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            b.text(j, i, f"{100 * m[i, j]:.0f}", ha="center", va="center", fontsize=7,
                   color="white" if m[i, j] < 0.6 else "black")  # fmt: skip
    b.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right", fontsize=8)
    b.set_yticks(range(len(runs)), names, fontsize=8)
    fig.colorbar(im, ax=b, shrink=0.8, label="score")
    samples = sorted({len(r["predictions"]) // max(1, len(tasks)) for r in runs})
    hybrid = sorted({tuple(r["full_layers"]) for r in runs if r["full_layers"]})
    fig.suptitle(
        f"RULER-style suite at {runs[0]['length']} tokens; hybrids: full attention in layers "
        f"{' / '.join(map(str, hybrid)) or '-'}; hatched: plain sparse; "
        f"{'/'.join(map(str, samples))} samples per task",
        fontsize=9,
    )
    fig.tight_layout()
    return Path(save_figure(fig, path, dpi=110))


# ---------------------------------------------------------------------------- probing


def summarize_probe(runs_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``({"runs": [{"pattern", "trained", "layer", "block", "accuracy"}]}, the runs)``."""
    runs = [json.loads(p.read_text()) for p in sorted(Path(runs_dir).glob(f"*/{PROBE_FILE}"))]
    if not runs:
        raise ValueError(f"no {PROBE_FILE} under {runs_dir}/*/; run eval probe first")
    rows = []
    for r in runs:
        for trained, key in ((False, "before"), (True, "after")):
            for layer, accs in enumerate(r[key]):
                for block, a in enumerate(accs):
                    rows.append(
                        {
                            "pattern": r["pattern"],
                            "seed": r["seed"],
                            "trained": trained,
                            "layer": layer,
                            "block": block,
                            "accuracy": round(float(a), 4),
                        }
                    )
    return {"runs": rows}, runs


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``k / n``."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def _test_documents(run: dict[str, Any]) -> int:
    """Held-out documents of a probe: the larger half of each key's ``per_key`` documents
    (:func:`powerattn.eval.probe._split`)."""
    keys = run["documents"] // run["per_key"]
    return keys * (run["per_key"] - run["per_key"] // 2)


def probe_details(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per run: last layer / last block accuracy before and after training with Wilson
    intervals (over the held-out half of the documents), and the structural check's worst
    cells: the best accuracy before the needle's block and outside the theory's reach."""
    out = {}
    for r in runs:
        n_test = _test_documents(r)
        row = {"steps": [r["steps"], r["steps_planned"]], "test_documents": n_test}
        reach = np.asarray(r["reached"], dtype=bool)
        for key in ("before", "after"):
            acc = np.asarray(r[key])
            last = float(acc[-1, -1])
            row[key] = {
                "last_block_last_layer": last,
                "wilson95": wilson(round(last * n_test), n_test),
                "max_before_needle": float(acc[:, : r["earliest_key_block"]].max(initial=0.0)),
                "max_outside_reach": float(np.where(reach, 0.0, acc).max()),
            }
        out[r["name"]] = row
    return out


# Figure 5's decision rules (docs/evaluation.md, "Decision rules", fixed before any run).
FINDS_LOWER = 0.8  # claim 1 reproduced: the Wilson interval's lower bound at least this
FAILS_UPPER = 0.5  # claim 1 refuted and claim 2 reproduced: the upper bound below this
ABOVE_CHANCE = 0.5  # the structural check: "not above chance (accuracy <= 0.5)"
# Claim 1's exception: "a trained power model that cannot do the passkey task itself (its exact
# match at 4096 ...)". The rule states no threshold; this is the passkey gate's (exact match
# >= 0.95, docs/experiments.md): below it the model cannot do the task.
PASSKEY_CAN = 0.95
PASSKEY_LENGTH = "4096"  # the rule's key of probe.json's passkey.exact_match, as written
NOT_TESTED = "not tested"
# Several seeds: the rules speak of one run's interval. Each seed's run is judged alone and a
# claim takes a status only when every seed gives it (as Table 1 asks every seed's interval to
# agree); seeds that disagree make it inconclusive. No pooling over seeds.
SEEDS_RULE = "per seed; a status holds only if every seed's run gives it, else inconclusive"


def _last_cell(run: dict[str, Any]) -> dict[str, Any]:
    """The trained model's last block of the last layer: accuracy, correct / held-out
    documents and the 95 % Wilson interval."""
    n = _test_documents(run)
    acc = float(np.asarray(run["after"])[-1, -1])
    k = round(acc * n)
    lo, hi = wilson(k, n)
    return {"seed": run["seed"], "accuracy": acc, "correct": k, "n": n, "wilson95": [lo, hi]}


def _cell_text(c: dict[str, Any], run: dict[str, Any]) -> str:
    lo, hi = c["wilson95"]
    text = f"s{c['seed']} {c['accuracy']:.3f} ({c['correct']}/{c['n']}) [{lo:.3f}, {hi:.3f}]"
    if run["steps"] < run["steps_planned"]:  # the rules say nothing of it: shown, not judged
        text += f" INCOMPLETE ({run['steps']}/{run['steps_planned']} steps)"
    return text


def _all_seeds(statuses: list[str]) -> str:
    if not statuses:
        return NOT_TESTED
    return statuses[0] if len(set(statuses)) == 1 else "inconclusive"


def _claim(
    pattern: str, rule: str, per_seed: list[dict[str, Any]], parts: list[str]
) -> dict[str, Any]:
    """A claim about the trained ``pattern``'s last cell: seeds combined, and the evidence."""
    return {
        "status": _all_seeds([s["status"] for s in per_seed]),
        "evidence": (
            f"{pattern} after training, last layer, last block (Wilson 95 %; {rule}): "
            + "; ".join(parts)
            if parts
            else f"no {pattern} run"
        ),
        "per_seed": per_seed,
    }


def _of(runs: list[dict[str, Any]], pattern: str) -> list[dict[str, Any]]:
    return sorted((r for r in runs if r["pattern"] == pattern), key=lambda r: r["seed"])


def _power_finds_key(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Claim 1: after training, power's last block of the last layer finds the key."""
    per_seed, parts = [], []
    for r in _of(runs, "power"):
        c = _last_cell(r)
        lo, hi = c["wilson95"]
        status = (
            "reproduced" if lo >= FINDS_LOWER else "refuted" if hi < FAILS_UPPER else "inconclusive"
        )
        exact = ((r.get("passkey") or {}).get("exact_match") or {}).get(PASSKEY_LENGTH)
        text = _cell_text(c, r) + f", passkey exact match at {PASSKEY_LENGTH} "
        if exact is None:  # the exception cannot be checked; read literally, it does not apply
            text += "unknown (the passkey exception not checked)"
        elif exact < PASSKEY_CAN:  # whatever the probe says (the rule: inconclusive)
            status = "inconclusive"
            text += f"{exact:.3f} < {PASSKEY_CAN}: cannot do the task"
        else:
            text += f"{exact:.3f}"
        per_seed.append({**c, "passkey_exact_match": exact, "status": status})
        parts.append(f"{text} -> {status}")
    rule = f"reproduced: lower >= {FINDS_LOWER}, refuted: upper < {FAILS_UPPER}"
    return _claim("power", rule, per_seed, parts)


def _sliding_cannot(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Claim 2: after training, sliding window's last block of the last layer is at chance.

    The rule gives only the reproduced outcome (interval contains 1/6, upper bound below 0.5)
    and no refuted one: otherwise inconclusive. In the runs' geometry (6 layers, 128 blocks)
    the last block is outside the window's reach, so one above 0.5 is the structural check's
    bug, not a refutation."""
    per_seed, parts = [], []
    for r in _of(runs, "sliding_window"):
        c = _last_cell(r)
        lo, hi = c["wilson95"]
        ok = lo <= r["chance"] <= hi and hi < FAILS_UPPER
        status = "reproduced" if ok else "inconclusive"
        per_seed.append({**c, "status": status})
        parts.append(f"{_cell_text(c, r)} -> {status}")
    rule = f"reproduced: contains 1/6 and upper < {FAILS_UPPER}"
    return _claim("sliding_window", rule, per_seed, parts)


def _worst(acc: np.ndarray, cells: np.ndarray) -> dict[str, Any] | None:
    """The highest accuracy among ``cells`` (bool, the shape of ``acc``) and where it is."""
    if not cells.any():
        return None
    at = np.unravel_index(np.argmax(np.where(cells, acc, -np.inf)), acc.shape)
    return {"accuracy": float(acc[at]), "layer": int(at[0]), "block": int(at[1])}


def _structural(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Check 3 (not a paper claim; a failure is a bug): in every run, before and after
    training, the blocks before the needle and the blocks outside the theory's reach are at
    most :data:`ABOVE_CHANCE` in every layer.

    "At chance" before the needle is read with the rule's only threshold, accuracy <= 0.5
    (its "not above chance"): a per-cell interval containing 1/6, over the ~80 cells before
    the needle of each map, would fail by chance alone (several cells at 95 % each)."""
    cells, bad = [], []
    for r in sorted(runs, key=lambda r: (r["pattern"], r["seed"])):
        reach = np.asarray(r["reached"], dtype=bool)
        before_needle = np.zeros_like(reach)
        before_needle[:, : r["earliest_key_block"]] = True
        for key in ("before", "after"):
            acc = np.asarray(r[key], dtype=float)
            for where, mask in (("before the needle", before_needle), ("outside reach", ~reach)):
                w = _worst(acc, mask)
                if w is None:
                    continue
                cell = {"run": r["name"], "model": key, "where": where, **w}
                cells.append(cell)
                if w["accuracy"] > ABOVE_CHANCE:
                    bad.append(cell)

    def say(c: dict[str, Any]) -> str:
        return (
            f"{c['run']} {c['model']} training, {c['where']}: {c['accuracy']:.3f} at layer "
            f"{c['layer']}, block {c['block']}"
        )

    if not cells:
        return {"status": NOT_TESTED, "bug": False, "evidence": "no probed run", "worst": []}
    if bad:
        evidence = f"BUG: above {ABOVE_CHANCE}: " + "; ".join(say(c) for c in bad)
    else:
        worst: dict[str, dict[str, Any]] = {}
        for c in cells:
            if c["accuracy"] > worst.get(c["where"], {"accuracy": -1.0})["accuracy"]:
                worst[c["where"]] = c
        evidence = (
            f"every cell at most {ABOVE_CHANCE} in {len(runs)} runs, before and after training; "
            "highest " + "; ".join(say(c) for c in worst.values())
        )
    return {
        "status": "refuted" if bad else "reproduced",
        "bug": bool(bad),
        "evidence": evidence,
        "worst": cells,
    }


def probe_verdicts(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Figure 5's decision rules of docs/evaluation.md (fixed before any run) applied to the
    runs' ``probe.json`` contents: ``{"seeds", "claims": {name: {"status", "evidence", ...}}}``,
    each status "reproduced", "refuted", "inconclusive" or "not tested" (no run of the
    pattern).

    1. ``power_last_block_finds_key``: power after training, last layer, last block: reproduced
       if the Wilson 95 % interval's lower bound is >= :data:`FINDS_LOWER`, refuted if its
       upper bound is < :data:`FAILS_UPPER`, else inconclusive; inconclusive whatever the
       interval if the run's passkey exact match at 4096 is below :data:`PASSKEY_CAN`.
    2. ``sliding_window_cannot``: sliding window after training, last layer, last block:
       reproduced if the interval contains the chance rate 1/6 and its upper bound is below
       :data:`FAILS_UPPER`, else inconclusive (the rule states no refuted outcome).
    3. ``structural_check`` (not a paper claim): "refuted" with ``bug`` set if any run, trained
       or not, has a block before the needle or outside the theory's reach above
       :data:`ABOVE_CHANCE` in any layer.

    Several seeds: :data:`SEEDS_RULE`."""
    return {
        "seeds": sorted({r["seed"] for r in runs}),
        "seeds_rule": SEEDS_RULE,
        "passkey_threshold": PASSKEY_CAN,
        "claims": {
            "power_last_block_finds_key": _power_finds_key(runs),
            "sliding_window_cannot": _sliding_cannot(runs),
            "structural_check": _structural(runs),
        },
    }


def probe_verdict_text(verdicts: dict[str, Any]) -> str:
    """The Figure 5 rules' outcome (:func:`probe_verdicts`) in a few lines."""
    lines = [f"Figure 5 decision rules (seeds {verdicts['seeds']}; {verdicts['seeds_rule']}):"]
    for name, c in verdicts["claims"].items():
        tag = " -- a BUG, not a claim" if c.get("bug") else ""
        lines.append(f"  {name}: {c['status']}{tag}\n    {c['evidence']}")
    return "\n".join(lines)


def plot_probe(runs: list[dict[str, Any]], path: str | Path) -> Path:
    """Heat maps layers x blocks (rows: pattern and seed; columns: before / after training),
    with the theory's boundary (blocks the needle can have reached by each layer) outlined."""
    import matplotlib.pyplot as plt

    from ..plots import save_figure  # matplotlib on the Agg backend

    fig, axes = plt.subplots(
        len(runs), 2, figsize=(12, 1.6 + 1.4 * len(runs)), squeeze=False, sharex=True
    )
    for i, r in enumerate(runs):
        reached = np.asarray(r["reached"], dtype=float)
        for j, key in enumerate(("before", "after")):
            ax = axes[i, j]
            acc = np.asarray(r[key])
            im = ax.imshow(acc, aspect="auto", origin="lower", vmin=0, vmax=1, cmap="viridis")
            ax.contour(reached, levels=[0.5], colors="red", linewidths=1)
            ax.set_title(f"{r['pattern']} s{r['seed']}, {key} training", fontsize=9)
            ax.set_ylabel("layer")
    for ax in axes[-1]:
        ax.set_xlabel("block (needle block marked by the red theory outline)")
    fig.colorbar(im, ax=axes, shrink=0.6, label="probe accuracy (chance 1/6)")
    return Path(save_figure(fig, path, dpi=110))


WORKERS = {"lm": lm.run_one, "ruler": ruler_run_one}


if __name__ == "__main__":  # a worker of run_pool(jobs > 1)
    WORKERS[sys.argv[1]](**json.loads(sys.argv[2]))
