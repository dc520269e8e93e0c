"""Recipe sweep for the passkey gate (issue 10), one call on one H200, from the repo root:

    python3 scripts/gpu_passkey_sweep.py OUT TRAIN_S [VARIANT ...]

The gate (scripts/gpu_passkey_gate.sh) failed with preset gpu-mix: full attention learned
320-512 tokens and stalled at 1024-4096 (training exact match ~0.01 at 4096 after 2750
steps, results/passkey/gate-session4). This trains full attention once per recipe variant
(seed 0), all variants at once on the one GPU, each through `powerattn train --config`,
stops each after TRAIN_S seconds (SIGTERM: the trainer checkpoints and exits), and tables
the training exact match per length over the last 200 logged steps. A variant that reaches
>= 0.9 at 4096 is the candidate for the next gate call; the sweep itself decides nothing
about the patterns. Writes OUT/sweep.txt, OUT/sweep.json, OUT/sweep_runs.tgz.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from powerattn.experiments.passkey import plan
from powerattn.experiments.tables import train_exact_match_by_len
from powerattn.training.config import Stage

MIX = [512, 1024, 2048, 4096]
WARM = Stage(512, 250, mix=[320])
# Lengths doubled in turn, each stage mixing every shorter length (no hard switch).
RAMP = [
    WARM,
    Stage(1024, 400, mix=[512]),
    Stage(2048, 600, mix=[512, 1024]),
    Stage(4096, 3000, mix=MIX),
]


def variants(base):
    def v(**kw):
        cfg = dataclasses.replace(
            base, **{k: x for k, x in kw.items() if k in {"stages", "lm_weight", "batch_size"}}
        )
        if "lr" in kw:
            cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=kw["lr"]))
        if "model" in kw:
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **kw["model"]))
        return cfg

    return {
        "base": v(),
        "lm0.1": v(lm_weight=0.1),
        "lm1": v(lm_weight=1.0),
        "lr3e-4": v(lr=3e-4),
        "ramp": v(stages=RAMP),
        "ramp-lm0.1": v(stages=RAMP, lm_weight=0.1),
        "ramp-lr3e-4-lm0.1": v(stages=RAMP, lm_weight=0.1, lr=3e-4),
        "big": v(
            model={"layers": 8, "hidden": 384, "heads": 6, "kv_heads": 6, "intermediate": 1024}
        ),
    }


def summarize(run: Path) -> dict:
    path = run / "metrics.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []
    if not lines:
        return {"steps": 0}
    last = lines[-1]["step"]
    return {
        "steps": last,
        "steps_per_s": last / lines[-1]["time_s"],
        "loss_last": lines[-1]["loss"],
        "exact_match_last200": train_exact_match_by_len(lines, 200),
    }


def main() -> None:
    out, train_s = Path(sys.argv[1]), float(sys.argv[2])
    base = plan("gpu-mix", parts=["main"], patterns=["full"])[0].config
    allv = variants(base)
    names = sys.argv[3:] or list(allv)
    work = Path("/tmp/passkey_sweep")
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    procs = {}
    for name in names:
        d = work / name
        d.mkdir(exist_ok=True)
        (d / "variant.json").write_text(json.dumps(dataclasses.asdict(allv[name]), indent=1))
        log = open(d / "log.txt", "w")
        cmd = [sys.executable, "-m", "powerattn.cli", "train", "--config", str(d / "variant.json"),
               "--out", str(d), "--no-progress", "--fresh"]  # fmt: skip
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while time.monotonic() - t0 < train_s and any(p.poll() is None for p in procs.values()):
        time.sleep(2)
    for p in procs.values():
        if p.poll() is None:
            p.terminate()
    for p in procs.values():
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
    rows = {}
    for name in names:
        try:
            rows[name] = summarize(work / name)
        except Exception as e:  # a crashed variant is reported, not hidden
            rows[name] = {
                "error": repr(e),
                "log_tail": (work / name / "log.txt").read_text()[-2000:],
            }
    (out / "sweep.json").write_text(json.dumps({"train_s": train_s, "variants": rows}, indent=1))
    with open(out / "sweep.txt", "w") as f:
        f.write(
            f"full attention, seed 0, {train_s:.0f} s of training each, "
            "all variants sharing one GPU\n"
        )
        f.write("training exact match over the last 200 steps, per length\n")
        for name, r in rows.items():
            if "error" in r:
                f.write(f"{name:<20} ERROR {r['error']}\n{r['log_tail']}\n")
                continue
            em = "  ".join(f"{n}: {x:.3f}" for n, x in r.get("exact_match_last200", {}).items())
            rate, loss = r.get("steps_per_s", 0), r.get("loss_last", 0)
            f.write(f"{name:<20} step {r['steps']:>5} ({rate:.1f}/s) loss {loss:.3f}  {em}\n")
    with tarfile.open(out / "sweep_runs.tgz", "w:gz") as t:
        for name in names:
            for fn in ("variant.json", "metrics.jsonl", "log.txt", "config.json"):
                if (work / name / fn).exists():
                    t.add(work / name / fn, arcname=f"{name}/{fn}")
    print((out / "sweep.txt").read_text())


if __name__ == "__main__":
    main()
