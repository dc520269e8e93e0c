"""``powerattn train`` (one model on the passkey curriculum) and ``powerattn experiment
passkey`` (the pattern comparison)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..validate import add_list_argument
from .argtypes import nonnegative_int, positive_int

_TRAIN_EPILOG = """\
presets (without --config):
  cpu      the default: a 2-layer Llama (hidden 64), 400 steps of batch 8 at 320 tokens,
           constant LR; minutes on a laptop CPU (with the default power pattern it learned
           the task in our check: 1.00 exact match at 320 tokens, 0.00 at 448)
  gpu-mix  the passkey experiments' recipe (6 layers, hidden 256, 320 -> 4096 tokens mixed
           per step, 5500 steps, lr 3e-4): a GPU run
Ctrl-C (or SIGTERM) stops after the current step with a checkpoint; rerunning the same
command resumes from it.

A --config file (YAML or JSON) sets any field of powerattn.training.TrainConfig; unknown
keys and bad values are refused, naming the field:

    seed: 0
    batch_size: 32
    model: {layers: 6, hidden: 128, heads: 4, kv_heads: 4}
    pattern: {name: power, full_layers: []}   # params: {window: 3} overrides the budget's
    task: {block_size: 32, digits: 5}
    stages: [{seq_len: 512, steps: 200}, {seq_len: 1024, steps: 200}]
    optim: {lr: 1.0e-3, warmup_steps: 50}

examples:
  powerattn train --out runs/power
  powerattn train --config my.yaml --out runs/ss --pattern stride_slash --layers 4

several processes (data parallel x context parallel, FSDP2; docs/distributed.md):
  torchrun --standalone --nproc-per-node 4 -m powerattn.cli train --cp 2 --out runs/cp
      4 processes (one GPU each under CUDA, gloo on a CPU): 2 data-parallel rows of 2
      context-parallel ranks; every document length a multiple of cp x task.block_size and
      batch_size of dp = processes / cp. Activation checkpointing is on
      (--no-activation-checkpointing); --mixed-precision bf16 for bf16 compute with float32
      master weights. Checkpoints go to OUT/checkpoint.dcp and resume under any number of
      processes and --cp, including a plain `powerattn train --out runs/cp` (one process).
  (without torchrun installed as a command: python3 -m torch.distributed.run ... the same)
"""

_PASSKEY_EPILOG = """\
parts (each a list of runs; every run trains one model, then evaluates it):
  main    every pattern at the equal budget of the last length, same model and data
  layers  the preset's layer-sweep patterns (power; gpu-mix: power, sliding window,
          stride slash) at smaller layer counts (accuracy vs receptive field)
  long    power vs stride slash trained to twice the length

presets:
  smoke       2-layer models, 4-6 steps, 320-448 tokens: checks every code path on a CPU
  smoke-mix   the same for the levers of gpu-mix (mixed lengths, LM loss, wsd schedule)
  gpu-mix     the recipe of the gate: 6 layers, hidden 256 (~5M parameters), a 250-step
              warm-up at 320/512 tokens, then 5250 steps each drawing its length from
              512..4096 (long: ..8192), batch 16, lr 3e-4 decayed to 0 over the last
              20 % of the steps (wsd), 10 depth bins x 64 documents on held-out keys;
              layers part: power, sliding window and stride slash with 1..8 layers
  gpu         the second campaign: 6-layer hidden-128 models, 320 -> 4096 tokens (long:
              8192), 300 steps per length after a 200-step warm-up
  gpu-replay  the first campaign: shorter stages, 25 % of steps replay earlier lengths

Writes OUT/results.json (per document: correct, digit accuracy, needle_hops, the theory's
reachable fraction; for the final model at the evaluated lengths, and for the model at the
end of each stage at that stage's length), OUT/runs/NAME/ (checkpoint, metrics, eval.json,
stage_eval.json; rerunning resumes), heatmaps.png, reach.png, long.png, curves.png, and
prints the summary table.

examples:
  powerattn experiment passkey --preset smoke --out /tmp/pk
  powerattn experiment passkey --preset gpu --out pk --jobs 10 --deadline 1800
  powerattn experiment passkey --preset gpu --out pk1 --jobs 10 --seed 1   # a replicate
  powerattn experiment passkey --preset gpu-mix --parts main --patterns full \
      --seeds 0,1,2 --jobs 3 --out gate --deadline 400                     # the gate
  powerattn experiment passkey --out merged --replot a/results.json,b/results.json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a small Llama from scratch on the passkey curriculum",
        description=(
            "Train a small Llama (random init, our attention) on passkey documents with a "
            "length curriculum. Resumes from OUT/checkpoint.pt if it exists (--fresh: "
            "starts over). Writes OUT/metrics.jsonl, OUT/config.json, OUT/checkpoint.pt."
        ),
        epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML or JSON file mapped to TrainConfig")
    p.add_argument(
        "--preset",
        choices=sorted(TRAIN_PRESETS),
        help="a named configuration instead of --config (default: cpu); see below",
    )
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--pattern", help="override pattern.name")
    p.add_argument("--layers", type=int, help="override model.layers")
    p.add_argument("--device", help="override device (auto, cpu, cuda)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start over: first delete OUT's checkpoint, metrics and config (other files stay)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--stop-at",
        type=positive_int,
        metavar="STEP",
        help="stop after this step with a checkpoint (rerun without it to continue)",
    )
    d = p.add_argument_group(
        "several processes",
        "under torchrun (see below); without it, these run one process through the same "
        "distributed path (FSDP2 over a world of one)",
    )
    d.add_argument(
        "--cp",
        type=positive_int,
        help="context-parallel size: each document split over CP processes (default 1); data "
        "parallel = processes / CP. --cp > 1 needs torchrun: torchrun --standalone "
        "--nproc-per-node N -m powerattn.cli train --cp CP ...",
    )
    d.add_argument(
        "--activation-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute each decoder layer in the backward pass (default: on in the "
        "distributed path)",
    )
    d.add_argument(
        "--mixed-precision",
        choices=MIXED_PRECISION,
        help="FSDP2 mixed precision: bf16 parameters in forward/backward, float32 master "
        "weights, optimiser state and gradient reduction (default: float32, under bf16 "
        "autocast on CUDA)",
    )
    p.set_defaults(func=_train)

    e = sub.add_parser("experiment", help="experiments that train and evaluate models")
    esub = e.add_subparsers(dest="experiment", metavar="WHAT")
    e.set_defaults(func=lambda args: e.print_help() or 2)
    k = esub.add_parser(
        "passkey",
        help="passkey retrieval per pattern at equal budget vs the receptive-field theory",
        description=(
            "Train one model per pattern (and power with fewer layers, and power vs stride "
            "slash at a longer length), evaluate passkey retrieval by needle depth and length, "
            "and compare with the theory. Writes OUT/results.json and PNG figures."
        ),
        epilog=_PASSKEY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    k.add_argument(
        "--preset",
        default="smoke",
        help="smoke (default), smoke-mix, gpu-mix, gpu or gpu-replay; see below",
    )
    k.add_argument("--out", required=True, help="output directory")
    add_list_argument(k, "--parts", help="of main, layers, long (default all)")
    add_list_argument(k, "--patterns", help="registered pattern names (default all)")
    add_list_argument(
        k, "--layer-sweep", positive_int,
        help="layer counts of the 'layers' part (default: the preset's)",
    )  # fmt: skip
    k.add_argument("--steps-scale", type=float, default=1.0, help="multiply every stage's steps")
    k.add_argument(
        "--seed",
        type=nonnegative_int,
        help="seed of initialisation and data (default: the preset's, 0); a replicate's run "
        "names end in -sSEED, so its results.json merges with the first one's (--replot)",
    )
    add_list_argument(
        k, "--seeds", nonnegative_int,
        help="the campaign of each seed in one call (run names as with --seed)",
    )  # fmt: skip
    k.add_argument(
        "--jobs",
        type=positive_int,
        default=1,
        help="runs trained at once, one process each (they share the GPU; one GPU each, round "
        "robin, when several are visible)",
    )
    k.add_argument(
        "--backend",
        default="auto",
        help="attention backend of the sparse layers: a sparse_attention backend or sdpa_mask",
    )
    add_list_argument(
        k, "--speed",
        help="trainer speed options to switch on, of compile, fused_optim, pin_memory (the "
        "same training up to float rounding; compile: ~2.4x steps/s for power on an H200)",
    )  # fmt: skip
    k.add_argument("--only", help="train and evaluate this one run of the plan (by its name)")
    k.add_argument(
        "--deadline",
        type=float,
        help="seconds from now after which every run stops training and is evaluated as is",
    )
    add_list_argument(
        k, "--replot", metavar="RESULTS",
        help="no training: merge these results.json files into OUT, redraw, print the "
        "tables and the verdicts, and write OUT/summary.json",
    )  # fmt: skip
    k.add_argument("--no-progress", action="store_true", help="no progress bars")
    k.set_defaults(func=_passkey)


TRAIN_PRESETS = ("cpu", "gpu-mix")
MIXED_PRECISION = ("bf16",)  # = powerattn.distributed.trainer.MIXED_PRECISION (light import)
TORCHRUN = "torchrun --standalone --nproc-per-node {n} -m powerattn.cli train --cp {cp}"


def train_preset(name: str, pattern: str = "power"):
    """The :class:`~powerattn.training.TrainConfig` of a ``powerattn train --preset``."""
    from ..training import ModelConfig, OptimConfig, Stage, TaskConfig, TrainConfig

    if name == "cpu":  # = scripts/passkey_recipe_cpu.py's "320-const" (power pattern)
        return TrainConfig(
            model=ModelConfig(layers=2, hidden=64, heads=4, kv_heads=4, intermediate=128),
            task=TaskConfig(heldout_keys=True),
            stages=[Stage(320, 400)],
            batch_size=8,
            optim=OptimConfig(lr=3e-3, warmup_steps=20, schedule="constant"),
            log_every=25,
            checkpoint_every_s=60.0,
        )
    if name == "gpu-mix":
        from ..experiments.passkey import plan

        return plan("gpu-mix", ["main"], [pattern])[0].config
    raise ValueError(f"preset must be one of {TRAIN_PRESETS}, got {name!r}")


def warn_gpu_preset_on_cpu(command: str, preset: str | None, device: str | None) -> None:
    """A ``gpu*`` preset where no GPU will run it: say so on stderr (it runs, for hours)."""
    if not (preset or "").startswith("gpu") or (device or "").startswith("cuda"):
        return
    import torch

    if device in (None, "auto") and torch.cuda.is_available():
        return
    small = "cpu" if command == "train" else "smoke"
    print(
        f"powerattn {command}: note: preset {preset!r} is sized for an H200 and will run on the "
        f"CPU here for hours; --preset {small} is the CPU preset",
        file=sys.stderr,
    )


def _train(args: argparse.Namespace) -> int:
    from ..training import Trainer, load_config
    from ..training.trainer import CheckpointMismatchError

    if args.config and args.preset:
        print("powerattn train: error: give --config or --preset, not both", file=sys.stderr)
        return 2
    warn_gpu_preset_on_cpu("train", args.preset, args.device)
    pattern = args.pattern or "power"
    cfg = load_config(args.config) if args.config else train_preset(args.preset or "cpu", pattern)
    if args.pattern:
        cfg.pattern.name = args.pattern
    if args.layers is not None:
        cfg.model.layers = args.layers
    if args.device:
        cfg.device = args.device
    route = _distributed_route(args)
    if isinstance(route, str):
        print(f"powerattn train: error: {route}", file=sys.stderr)
        return 2
    if route:
        return _train_distributed(args, cfg)
    if args.fresh:  # or a later run without --fresh would resume the distributed one
        import shutil
        from pathlib import Path

        shutil.rmtree(Path(args.out) / "checkpoint.dcp", ignore_errors=True)
    trainer = Trainer(cfg, args.out, progress=not args.no_progress)
    print(f"pattern {trainer.pattern.describe()}, {cfg.total_steps} steps, device {trainer.device}")
    try:
        if not args.fresh and trainer.load_checkpoint():
            print(f"resuming from step {trainer.step} of {cfg.total_steps} ({args.out})")
        stop = {} if args.stop_at is None else {"stop_at": args.stop_at}
        last = trainer.train(resume=not args.fresh, stop_on_signal=True, **stop)
        if args.stop_at is not None and trainer.step == args.stop_at and not trainer.interrupted:
            trainer.save_checkpoint()  # train() stops there like a kill; keep the state
            print(f"stopped at step {trainer.step} (--stop-at): checkpoint saved; rerun "
                  "without --stop-at to continue")  # fmt: skip
    except CheckpointMismatchError as exc:
        print(f"powerattn train: error: {exc}; use another --out, or --fresh to discard it",
              file=sys.stderr)  # fmt: skip
        return 2
    if last:  # nothing logged after a resume of a finished run or a --stop-at
        print(json.dumps(last))
    if trainer.interrupted:
        print(f"stopped by {trainer.interrupted} at step {trainer.step}: checkpoint saved; "
              "rerun the same command to resume")  # fmt: skip
        return 130
    return 0


def _distributed_route(args: argparse.Namespace) -> bool | str:
    """Whether this run takes the distributed path (torchrun, a distributed checkpoint to
    resume, or one of its options), or the error to print."""
    from pathlib import Path

    torchrun = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    cp = args.cp or 1
    if cp > 1 and not torchrun:
        cmd = TORCHRUN.format(n=cp, cp=cp)
        return (
            f"--cp {cp} splits each document over {cp} processes: launch one per rank with "
            f"torchrun, e.g.\n  {cmd} --out {args.out} ...\n(python3 -m torch.distributed.run "
            "is the same command where torchrun is not on PATH)"
        )
    resume = not args.fresh and (Path(args.out) / "checkpoint.dcp" / "meta.json").is_file()
    options = args.activation_checkpointing is not None or args.mixed_precision is not None
    return torchrun or resume or options or args.cp is not None


def _train_distributed(args: argparse.Namespace, cfg) -> int:
    """The data parallel x context parallel path (powerattn.distributed.trainer)."""
    from pathlib import Path

    from ..distributed.trainer import CPTrainer, process_group
    from ..training.trainer import CHECKPOINT, CheckpointMismatchError

    if not args.fresh and (Path(args.out) / CHECKPOINT).is_file():
        print(f"powerattn train: error: {args.out} holds a single-process checkpoint "
              f"({CHECKPOINT}); the distributed path resumes only its own (checkpoint.dcp): "
              "use another --out, --fresh to discard it, or continue without torchrun and "
              "without --cp/--mixed-precision/--activation-checkpointing",
              file=sys.stderr)  # fmt: skip
        return 2
    ac = True if args.activation_checkpointing is None else args.activation_checkpointing
    with process_group(cfg.device) as device:
        import torch.distributed as dist

        rank0 = dist.get_rank() == 0
        try:
            trainer = CPTrainer(
                cfg,
                args.out,
                cp=args.cp or 1,
                activation_checkpointing=ac,
                mixed_precision=args.mixed_precision,
                device=device,
                progress=not args.no_progress,
            )
        except ValueError as exc:  # the same on every rank: check_config runs everywhere
            if rank0:
                print(f"powerattn train: error: {exc}", file=sys.stderr)
            return 2
        m = trainer.mesh
        if rank0:
            print(f"pattern {trainer.pattern.describe()}, {cfg.total_steps} steps, "
                  f"{dist.get_world_size()} process(es) = dp {m.dp} x cp {m.cp}, device "
                  f"{device.type}, activation checkpointing {'on' if ac else 'off'}, "
                  f"mixed precision {args.mixed_precision or 'off'}")  # fmt: skip
        try:
            last = trainer.train(resume=not args.fresh, stop_at=args.stop_at)
        except CheckpointMismatchError as exc:
            if rank0:
                print(f"powerattn train: error: {exc}; use another --out, or --fresh to "
                      "discard it", file=sys.stderr)  # fmt: skip
            return 2
        if rank0 and last:
            print(json.dumps(last))
        if trainer.interrupted:
            if rank0:
                print(f"stopped by {trainer.interrupted} at step {trainer.step}: checkpoint "
                      "saved; rerun the same command to resume")  # fmt: skip
            return 130
        if rank0 and args.stop_at is not None and trainer.step == args.stop_at:
            print(f"stopped at step {trainer.step} (--stop-at): checkpoint saved; rerun "
                  "without --stop-at to continue")  # fmt: skip
    return 0


def _passkey(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..experiments.passkey import (
        EXIT_CHECKPOINT_MISMATCH,
        gate_table,
        run_experiment,
        seed_table,
        summary_table,
        theory_table,
    )
    from ..training.trainer import CheckpointMismatchError

    if args.replot:
        from ..experiments.passkey import merge_results
        from ..experiments.plots import plot_all

        results = merge_results(args.replot)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "results.json").write_text(json.dumps(results) + "\n")
        for path in plot_all(results, args.out):
            print(path)
        print(summary_table(results))
        print()
        print(theory_table(results))
        print()
        print(seed_table(results))
        print()
        print(gate_table(results))
        from ..experiments.verdicts import summary, verdict_table

        summ = summary(results)
        (Path(args.out) / "summary.json").write_text(json.dumps(summ) + "\n")
        print()
        print(verdict_table(summ))
        return 0
    stop_time = None
    if args.deadline is not None:
        import time

        stop_time = time.time() + args.deadline
    if not args.only:  # a worker of --jobs: its parent has said it
        warn_gpu_preset_on_cpu("experiment passkey", args.preset, None)
    try:
        run_experiment(
            args.preset,
            args.out,
            parts=args.parts,
            patterns=args.patterns,
            steps_scale=args.steps_scale,
            jobs=args.jobs,
            only=args.only,
            progress=not args.no_progress,
            stop_time=stop_time,
            layer_sweep=args.layer_sweep,
            backend=args.backend,
            seed=args.seed,
            seeds=args.seeds,
            speed=args.speed,
        )
    except CheckpointMismatchError as exc:  # its own status: --jobs must not retry it
        print(f"powerattn experiment passkey: error: {exc}", file=sys.stderr)
        return EXIT_CHECKPOINT_MISMATCH
    return 0
