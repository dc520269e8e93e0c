#!/usr/bin/env python3
"""Training speed of the Trainer's opt-in speed options on one GPU (nvidia-h200, ~4-5 min;
phases started after --budget seconds are skipped and listed).

    PYTHONPATH=src python3 scripts/gpu_train_speed.py            # writes $OUT/train_speed.json

Two models: (a) ``passkey`` -- the gpu-mix preset's model (6 layers, hidden 256, batch 16,
power pattern at equal budget, 32-token blocks) at 4096 tokens; (b) ``lm`` -- the Table 1
preset ``gpu`` of powerattn.eval.lm (7 layers, hidden 512, vocab 8192, 4 x 4096 tokens; random
tokens: speed does not depend on the text). For each setting (default, each option alone, all
options), in one process:

1. correctness first: the first CHECK_STEPS steps' losses against the default's, with the
   tolerance twice the default's distance from the same steps computed in float32 (autocast
   off): the bf16 run's own error;
2. speed: steps/s and tokens/s over ``--seconds`` after those steps (compilation excluded and
   reported apart as ``first_steps_s``), host syncs per step (CUDA sync debug mode), peak
   memory.

Then the fastest setting that passed, as 1 process alone vs ``--procs`` processes sharing the
GPU (3 for passkey, 4 for lm; aggregate steps/s over a common window started together).
Phases past ``--budget`` seconds are skipped (listed in the JSON). Everything under $OUT:
train_speed.json and train_speed.log.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

SETTINGS = {
    "default": {},
    "fused_optim": {"fused_optim": True},
    "pin_memory": {"pin_memory": True},
    # "all" before "compile" alone: if the budget runs out, the combination is measured
    # (and the second compile of the same graphs is faster, from Inductor's cache).
    "all": {"fused_optim": True, "pin_memory": True, "compile": True},
    "compile": {"compile": True},
}
PROCS = {"passkey": 3, "lm": 4}
CHECK_STEPS = 5
SEQ_LEN = 4096
# GPU_TRAIN_SPEED_SMOKE=1: tiny models at 384 tokens on any device, to check the script's
# plumbing (processes, barrier, JSON) on a CPU before spending GPU time; numbers meaningless.
SMOKE = os.environ.get("GPU_TRAIN_SPEED_SMOKE") == "1"
if SMOKE:
    SEQ_LEN = 384
TOTAL = 10**6  # planned steps (never reached: no end-of-run checkpoint inside a measurement)
OUT = Path(os.environ.get("OUT", "out"))
LOG = None


def log(*args) -> None:
    line = " ".join(str(a) for a in args)
    print(line, flush=True)
    if LOG is not None:
        with open(LOG, "a") as f:
            f.write(line + "\n")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


def make_trainer(model: str, opts: dict, out_dir: Path):
    """A Trainer of ``model`` ("passkey" or "lm") at SEQ_LEN tokens with the speed options."""
    from powerattn.training import PatternConfig, Stage, TaskConfig, TrainConfig, Trainer
    from powerattn.training.config import ModelConfig

    tiny = {}
    if SMOKE:
        tiny = {
            "model": ModelConfig(layers=1, hidden=32, heads=2, kv_heads=2, intermediate=64),
            "batch_size": 2,
            "stages": [Stage(SEQ_LEN, TOTAL)],
        }

    if model == "passkey":
        from powerattn.experiments.presets import PRESETS

        p = PRESETS["gpu-mix"]
        cfg = TrainConfig(
            model=dataclasses.replace(p.model),
            pattern=PatternConfig(name="power"),
            task=TaskConfig(block_size=p.block_size, heldout_keys=p.heldout_keys),
            optim=dataclasses.replace(p.optim),
            stages=[Stage(SEQ_LEN, TOTAL)],
            batch_size=p.batch_size,
            loss_on=p.loss_on,
            lm_weight=p.lm_weight,
            checkpoint_every=10**9,
            log_every=1,
            **opts,
        )
        return Trainer(dataclasses.replace(cfg, **tiny), out_dir, progress=False)
    from powerattn.eval.bpe import DEFAULT_PATH, BPETokenizer
    from powerattn.eval.lm import PRESETS, train_config
    from powerattn.training.lm_data import lm_batch_fn

    p = PRESETS["gpu"]
    assert p.context == SEQ_LEN or SMOKE
    cfg = train_config(p, "power", 0, steps=TOTAL)
    cfg = dataclasses.replace(cfg, checkpoint_every=10**9, log_every=1, **opts, **tiny)
    tok = BPETokenizer(DEFAULT_PATH)
    tokens = np.random.default_rng(0).integers(0, tok.vocab_size, size=1 << 22)
    return Trainer(cfg, out_dir, progress=False, tokenizer=tok, batch_fn=lm_batch_fn(tokens))


def tokens_per_step(tr) -> int:
    return tr.cfg.batch_size * SEQ_LEN


@contextlib.contextmanager
def autocast_off():
    """The float32 reference: the Trainer's bf16 autocast disabled (script only)."""
    orig = torch.autocast

    def off(device_type, dtype=None, enabled=True, cache_enabled=None):
        return orig(device_type, dtype=dtype, enabled=False)

    torch.autocast = off
    try:
        yield
    finally:
        torch.autocast = orig


def first_losses(tr, steps: int) -> tuple[list[float], float]:
    """Losses of the first ``steps`` steps (logged every step) and their wall time."""
    sync()
    t0 = time.perf_counter()
    tr.train(stop_at=steps)
    sync()
    dt = time.perf_counter() - t0
    lines = (tr.out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(ln)["loss"] for ln in lines][:steps], dt


def timed(tr, seconds: float, chunk: int = 10) -> dict:
    """Steps/s and tokens/s over about ``seconds`` (whole chunks, synchronised at both ends)."""
    tr.cfg.log_every = 10**9  # no metric reads (host syncs) inside the measurement
    sync()
    t0, s0 = time.perf_counter(), tr.step
    while time.perf_counter() - t0 < seconds:
        tr.train(stop_at=tr.step + chunk)
    sync()
    dt = time.perf_counter() - t0
    steps = tr.step - s0
    return {
        "steps": steps,
        "seconds": dt,
        "steps_per_s": steps / dt,
        "tokens_per_s": steps * tokens_per_step(tr) / dt,
    }


def syncs_per_step(tr, steps: int = 4) -> float:
    """Host-device synchronisations per step (CUDA sync debug mode warnings)."""
    if not torch.cuda.is_available():
        return 0.0
    sync()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            tr.train(stop_at=tr.step + steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    n = sum("synchroniz" in str(w.message) for w in caught)
    return n / steps


def run_setting(model: str, name: str, seconds: float, ref: dict | None) -> dict:
    if SETTINGS[name].get("compile"):  # fresh dynamo caches (the eager settings run first,
        torch._dynamo.reset()  # reusing FlexAttention's compiled kernels)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as d:
        tr = make_trainer(model, SETTINGS[name], Path(d))
        losses, first_s = first_losses(tr, CHECK_STEPS)
        row = {"setting": name, "losses": losses, "first_steps_s": first_s}
        if ref is not None:
            diff = max(abs(a - b) for a, b in zip(losses, ref["losses"], strict=True))
            row["check"] = {"max_abs_diff": diff, "tol": ref["tol"], "pass": diff <= ref["tol"]}
        row.update(timed(tr, seconds))
        row["syncs_per_step"] = syncs_per_step(tr)
        row["peak_mem_gib"] = peak_gib()
        del tr
    return row


def reference(model: str) -> dict:
    """The default's first losses in float32: the tolerance of the checks is twice the bf16
    default's distance from them."""
    with tempfile.TemporaryDirectory() as d, autocast_off():
        tr = make_trainer(model, {}, Path(d))
        losses, _ = first_losses(tr, CHECK_STEPS)
        del tr
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"losses32": losses}


# ------------------------------------------------------------------ shared-GPU workers


def worker(args) -> None:
    """One of several processes sharing the GPU: first steps (compile), then wait for the
    common start, then train ``args.seconds`` and write the result."""
    with tempfile.TemporaryDirectory() as d:
        tr = make_trainer(args.worker, SETTINGS[args.setting], Path(d))
        first_losses(tr, CHECK_STEPS)
        tr.cfg.log_every = 10**9
        barrier = Path(args.barrier)
        (barrier / f"ready{args.rank}").touch()
        while not (barrier / "go").exists():
            time.sleep(0.01)
        go = float((barrier / "go").read_text())
        while time.time() < go:
            time.sleep(0.001)
        sync()
        t0, s0 = time.perf_counter(), tr.step
        while time.perf_counter() - t0 < args.seconds:
            tr.train(stop_at=tr.step + 10)
        sync()
        dt = time.perf_counter() - t0
        steps = tr.step - s0
        res = {"rank": args.rank, "steps": steps, "seconds": dt, "steps_per_s": steps / dt}
        res["tokens_per_s"] = res["steps_per_s"] * tokens_per_step(tr)
        res["peak_mem_gib"] = peak_gib()
        Path(args.result).write_text(json.dumps(res))


def shared(model: str, setting: str, procs: int, seconds: float, timeout: float) -> dict:
    """``procs`` worker processes started together on the GPU; aggregate throughput."""
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "src")}
        logs = [d / f"w{i}.log" for i in range(procs)]  # a full pipe would stall a worker
        cmd = [sys.executable, __file__, "--worker", model, "--setting", setting]
        cmd += ["--seconds", str(seconds), "--barrier", str(d)]
        ps = [
            subprocess.Popen(
                [*cmd, "--rank", str(i), "--result", str(d / f"r{i}.json")],
                env=env,
                stdout=open(logs[i], "w"),  # noqa: SIM115 - closed with the process
                stderr=subprocess.STDOUT,
            )
            for i in range(procs)
        ]
        t0 = time.time()
        while sum((d / f"ready{i}").exists() for i in range(procs)) < procs:
            if time.time() - t0 > timeout or any(p.poll() not in (None, 0) for p in ps):
                for p in ps:
                    p.kill()
                    p.wait()
                outs = [f.read_text()[-2000:] for f in logs]
                raise RuntimeError(f"workers not ready after {time.time() - t0:.0f} s: {outs}")
            time.sleep(0.05)
        ready_s = time.time() - t0
        (d / "go").write_text(str(time.time() + 0.5))
        for p, f in zip(ps, logs, strict=True):
            if p.wait(timeout=seconds + 120):
                raise RuntimeError(f"worker failed: {f.read_text()[-3000:]}")
        rows = [json.loads((d / f"r{i}.json").read_text()) for i in range(procs)]
    return {
        "setting": setting,
        "procs": procs,
        "start_s": ready_s,
        "per_process": rows,
        "aggregate_steps_per_s": sum(r["steps_per_s"] for r in rows),
        "aggregate_tokens_per_s": sum(r["tokens_per_s"] for r in rows),
    }


# ------------------------------------------------------------------ main


def main() -> None:
    global LOG
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="passkey,lm")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--seconds", type=float, default=4.0, help="measured seconds per setting")
    ap.add_argument("--budget", type=float, default=200.0, help="skip phases started later")
    ap.add_argument("--no-shared", action="store_true", help="skip the shared-GPU phase")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--setting", help=argparse.SUPPRESS)
    ap.add_argument("--barrier", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if not torch.cuda.is_available() and not SMOKE:
        sys.exit("gpu_train_speed.py needs a CUDA GPU")
    OUT.mkdir(parents=True, exist_ok=True)
    LOG = OUT / "train_speed.log"
    LOG.write_text("")
    start = time.time()
    result = {
        "env": {
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
            "smoke": SMOKE,
            "torch": torch.__version__,
            "seq_len": SEQ_LEN,
            "check_steps": CHECK_STEPS,
            "measured_s": args.seconds,
        },
        "models": {},
        "skipped": [],
        "errors": [],
    }

    def save():
        result["wall_s"] = time.time() - start
        (OUT / "train_speed.json").write_text(json.dumps(result, indent=2) + "\n")

    def over(what: str) -> bool:
        if time.time() - start > args.budget:
            result["skipped"].append(what)
            log(f"SKIP {what}: past the budget of {args.budget:.0f} s")
            return True
        return False

    settings = args.settings.split(",")
    for model in args.models.split(","):
        res = result["models"].setdefault(model, {"settings": {}})
        if over(f"{model}: all"):
            continue
        ref = reference(model)
        log(f"{model}: float32 reference losses {ref['losses32']}")
        base = run_setting(model, "default", args.seconds, None)
        base["tol"] = 2 * max(
            abs(a - b) for a, b in zip(base["losses"], ref["losses32"], strict=True)
        )
        res["reference"] = {**ref, "bf16_losses": base["losses"], "tol": base["tol"]}
        res["settings"]["default"] = base
        log(f"{model} default: {json.dumps(base)}")
        save()
        for name in settings:
            if name == "default" or over(f"{model}: {name}"):
                continue
            try:
                row = run_setting(model, name, args.seconds, base)
            except Exception as exc:  # noqa: BLE001 - recorded, the other settings go on
                msg = f"{model} {name}: {type(exc).__name__}: {exc}"
                result["errors"].append({"model": model, "setting": name, "error": msg[:3000]})
                log("ERROR", msg[:3000], traceback.format_exc()[-3000:])
                save()
                continue
            row["speedup"] = row["steps_per_s"] / base["steps_per_s"]
            res["settings"][name] = row
            log(f"{model} {name}: {json.dumps(row)}")
            save()
        passed = [
            r for r in res["settings"].values() if r["setting"] == "default" or r["check"]["pass"]
        ]
        best = max(passed, key=lambda r: r["steps_per_s"])
        res["best"] = best["setting"]
        log(f"{model}: best setting {best['setting']} ({best['steps_per_s']:.2f} steps/s alone)")
        if args.no_shared or over(f"{model}: shared"):
            continue
        try:
            sh = shared(model, best["setting"], PROCS[model], args.seconds, timeout=150)
        except Exception as exc:  # noqa: BLE001
            msg = f"{model} shared: {type(exc).__name__}: {exc}"
            result["errors"].append({"model": model, "setting": "shared", "error": msg[:3000]})
            log("ERROR", msg[:3000])
            save()
            continue
        sh["alone_steps_per_s"] = best["steps_per_s"]
        sh["aggregate_over_alone"] = sh["aggregate_steps_per_s"] / best["steps_per_s"]
        res["shared"] = sh
        log(f"{model} shared: {json.dumps(sh)}")
        save()
    save()
    log(f"done in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
