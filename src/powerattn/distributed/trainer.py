"""``powerattn train`` over several processes: the passkey curriculum of
:class:`~powerattn.training.TrainConfig`, data parallel x context parallel.

The same run as :class:`powerattn.training.Trainer` (same model, data, loss, optimiser,
schedule, clipping and metrics), with the ranks arranged as a ``(dp, cp)`` grid
(:class:`~powerattn.distributed.train.CPMesh`): each data-parallel row takes ``B / dp`` of
the step's ``B`` documents and its ``cp`` ranks split every document into contiguous shards
(:func:`~powerattn.distributed.context_parallel_attention` in every layer). Parameters,
gradients and optimiser state are sharded with FSDP2 over all ranks; decoder layers are
recomputed in the backward pass (activation checkpointing, default on); checkpoints are
``torch.distributed.checkpoint`` directories that resume at any ``dp x cp``, including one
process. Under torchrun::

    torchrun --standalone --nproc-per-node 4 -m powerattn.cli train --cp 2 --out runs/cp

Losses: every rank computes the summed token losses of its shard over the whole row's
token count, scaled by ``cp`` (FSDP2 averages gradients over ``dp x cp`` ranks), so the
gradient is that of the step's mean loss, as in one process.

Mixed precision (``mixed_precision="bf16"``): FSDP2's ``MixedPrecisionPolicy`` -- bf16
parameters in forward and backward, float32 master weights, float32 gradient reduction.
Without it, a CUDA run computes under bf16 autocast like the single-process trainer.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..training.config import SPEED_OPTIONS, TrainConfig
from ..training.data import batch_for_step, stage_at
from ..training.model import SDPA_MASK
from ..training.trainer import (
    CONFIG,
    METRICS,
    NOT_IN_IDENTITY,
    build_optimizer,
    build_run_model,
    resolve_device,
)
from .hf import shard_batch
from .train import CPMesh, load_checkpoint, prepare_model, save_checkpoint

CHECKPOINT_DIR = "checkpoint.dcp"  # a torch.distributed.checkpoint directory
META = "meta.json"  # in it: step, config, scheduler, metrics window, the grid that wrote it
MIXED_PRECISION = ("bf16",)
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def launched_by_torchrun() -> bool:
    """Whether this process is one rank of a torchrun (or torch.distributed.run) launch."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def has_checkpoint(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a checkpoint written by :class:`CPTrainer`."""
    return (Path(out_dir) / CHECKPOINT_DIR / META).is_file()


@contextlib.contextmanager
def process_group(device: str = "auto", timeout_s: float = 600.0) -> Iterator[torch.device]:
    """The default process group of a run, and this rank's device.

    Under torchrun: initialised from its environment (NCCL on CUDA, one GPU per local rank;
    gloo on CPU). Otherwise: a group of one process (world size 1), e.g. to resume a
    distributed checkpoint on one machine. A group initialised by the caller is used as it
    is. The group is destroyed on exit only if it was created here."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        yield dev
        return
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    with tempfile.TemporaryDirectory() as tmp:
        if launched_by_torchrun():
            dist.init_process_group(backend, timeout=timeout)
        else:
            store = dist.FileStore(os.path.join(tmp, "store"), 1)
            dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
        try:
            yield dev
        finally:
            dist.destroy_process_group()


def check_config(cfg: TrainConfig, world_size: int, cp: int) -> None:
    """``ValueError`` naming the fix when ``cfg`` cannot run on a ``(world / cp, cp)`` grid."""
    cfg.validate()
    speed = [name for name in SPEED_OPTIONS if getattr(cfg, name)]
    if speed:
        raise ValueError(
            f"{', '.join(speed)}: speed options of the single-process trainer, not supported "
            "with --cp / torchrun; set them to false for distributed runs"
        )
    if cp <= 0 or world_size % cp:
        raise ValueError(
            f"--cp {cp} must divide the number of processes ({world_size}): data parallel = "
            "processes / cp (launch torchrun with --nproc-per-node a multiple of --cp)"
        )
    dp = world_size // cp
    if cfg.batch_size % dp:
        raise ValueError(
            f"batch_size {cfg.batch_size} is not divisible by the data-parallel size {dp} "
            f"(= {world_size} processes / cp {cp}): each row takes batch_size / dp documents"
        )
    if cfg.backend == SDPA_MASK:
        raise ValueError(
            "backend 'sdpa_mask' has no context-parallel form; use a sparse_attention backend "
            "(auto, dense, flex, ...) for distributed training"
        )
    block = cfg.task.block_size
    lengths = sorted({n for s in cfg.stages for n in s.lengths})
    bad = [n for n in lengths if n % (cp * block)]
    if bad:
        raise ValueError(
            f"under context parallelism every document length must be a multiple of cp x "
            f"task.block_size = {cp} x {block} = {cp * block} (whole blocks per rank); the "
            f"stages' lengths {bad} are not: change the stages' seq_len/mix, task.block_size "
            "or --cp"
        )


def _labels(ids: torch.Tensor, digits: int, loss_on: str, lm: bool) -> dict[str, torch.Tensor]:
    """Position-aligned targets (-100: none) of the trainer's losses on ``(B, S)`` documents:
    ``answer`` (the positions predicting the key's digits), ``main`` (the loss: the answer,
    or every next token with ``loss_on="all"``), ``lm`` (every other next token)."""
    B, S = ids.shape
    out = {"answer": torch.full_like(ids, -100)}
    out["answer"][:, S - digits - 1 : S - 1] = ids[:, S - digits :]
    if loss_on == "all":
        out["main"] = torch.full_like(ids, -100)
        out["main"][:, :-1] = ids[:, 1:]
    else:
        out["main"] = out["answer"]
    if lm:
        out["lm"] = torch.full_like(ids, -100)
        out["lm"][:, : S - digits - 1] = ids[:, 1 : S - digits]
    return out


class CPTrainer:
    """:class:`powerattn.training.Trainer`'s run on a ``(dp, cp)`` grid of processes (see the
    module docstring). Every rank constructs it (collective); rank 0 writes
    ``OUT/metrics.jsonl`` and ``OUT/config.json``; all write ``OUT/checkpoint.dcp``.

    Args:
        cfg: the run; every document length a multiple of ``cp x task.block_size`` and
            ``batch_size`` of ``dp`` (:func:`check_config`).
        out_dir: run directory (shared by every rank: one machine, or a shared filesystem).
        cp: context-parallel size; ``dp = world_size / cp``.
        activation_checkpointing: recompute each decoder layer in the backward pass.
        mixed_precision: None, or ``"bf16"`` (FSDP2 ``MixedPrecisionPolicy``: bf16 compute,
            float32 master weights and gradient reduction).
        device: this rank's device (:func:`process_group` gives it).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: str | Path,
        *,
        cp: int = 1,
        activation_checkpointing: bool = True,
        mixed_precision: str | None = None,
        device: torch.device | None = None,
        progress: bool = True,
    ) -> None:
        if not dist.is_initialized():
            raise RuntimeError(
                "CPTrainer needs torch.distributed initialised (powerattn.distributed.trainer."
                "process_group(), or torchrun); one process: powerattn.training.Trainer"
            )
        if mixed_precision not in (None, *MIXED_PRECISION):
            raise ValueError(f"mixed_precision must be None or one of {MIXED_PRECISION}")
        check_config(cfg, dist.get_world_size(), cp)
        self.cfg = cfg
        self.out = Path(out_dir)
        self.rank = dist.get_rank()
        self.progress = progress and self.rank == 0
        self.device = device or resolve_device(cfg.device)
        self.mixed_precision = mixed_precision
        self.activation_checkpointing = activation_checkpointing
        self.mesh = CPMesh.build(cp, device_type=self.device.type)
        self.pattern = cfg.build_pattern()
        model = build_run_model(cfg, self.pattern).to(self.device)
        param_dtype = torch.bfloat16 if mixed_precision == "bf16" else None
        self.model = prepare_model(
            model,
            self.mesh,
            activation_checkpointing=activation_checkpointing,
            param_dtype=param_dtype,
        )
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg)
        self.step = 0
        self.interrupted: str | None = None
        self._signals: list[int] = []
        self._window = _Window()

    # ------------------------------------------------------------------ checkpoints
    def _identity(self) -> dict[str, Any]:
        return {k: v for k, v in self.cfg.to_dict().items() if k not in NOT_IN_IDENTITY}

    def save_checkpoint(self) -> Path:
        """Write ``OUT/checkpoint.dcp`` (every rank calls it); the previous one is replaced
        only once the new one is complete."""
        path = self.out / CHECKPOINT_DIR
        tmp = path.with_name(path.name + ".tmp")
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        save_checkpoint(str(tmp), self.model, self.optimizer)
        if self.rank == 0:
            meta = {
                "step": self.step,
                "config": self.cfg.to_dict(),
                "scheduler": self.scheduler.state_dict(),
                "window": self._window.state(),
                "world_size": dist.get_world_size(),
                "dp": self.mesh.dp,
                "cp": self.mesh.cp,
                "mixed_precision": self.mixed_precision,
            }
            (tmp / META).write_text(json.dumps(meta) + "\n")
            old = path.with_name(path.name + ".old")
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        dist.barrier()
        return path

    def load_checkpoint(self) -> bool:
        """Restore ``OUT/checkpoint.dcp`` whatever grid wrote it; False if there is none. A
        checkpoint of another configuration raises ``ValueError`` (the attention backend
        may differ)."""
        path = self.out / CHECKPOINT_DIR
        if not has_checkpoint(self.out):
            return False
        meta = json.loads((path / META).read_text())
        saved = {k: v for k, v in meta["config"].items() if k not in NOT_IN_IDENTITY}
        if saved != self._identity():
            from ..training.trainer import CheckpointMismatchError

            raise CheckpointMismatchError(
                f"checkpoint {path} was written by a different configuration"
            )
        load_checkpoint(str(path), self.model, self.optimizer)
        self.scheduler.load_state_dict(meta["scheduler"])
        self.step = int(meta["step"])
        self._window.load(meta["window"])
        return True

    def clear(self) -> None:
        """Remove this run's files from ``OUT`` (checkpoint, metrics, config); collective."""
        if self.rank == 0:
            shutil.rmtree(self.out / CHECKPOINT_DIR, ignore_errors=True)
            for name in (METRICS, CONFIG):
                (self.out / name).unlink(missing_ok=True)
        dist.barrier()

    # ------------------------------------------------------------------ one step
    def _step_loss(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and backward of this rank's part of the step's ``(B, S)`` documents.
        Returns ``(parts, correct)``: this rank's share of the row's mean main and lm
        losses (summing over the row gives the row's means) and, per document of the row,
        the number of answer digits predicted right on this rank."""
        cfg, mesh = self.cfg, self.mesh
        rows = cfg.batch_size // mesh.dp
        ids = ids[mesh.dp_rank * rows : (mesh.dp_rank + 1) * rows].to(self.device)
        B, S = ids.shape
        d = cfg.task.digits
        lm = cfg.lm_weight > 0
        labels = _labels(ids, d, cfg.loss_on, lm)
        block = self.pattern.block_size
        batch = shard_batch(ids, mesh.cp_group, block_size=block, labels=labels["main"])
        L = S // mesh.cp  # the other label sets: the same slice of the document
        local = {k: t[:, mesh.cp_rank * L : (mesh.cp_rank + 1) * L] for k, t in labels.items()}
        amp = self.device.type == "cuda" and self.mixed_precision is None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = self.model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"]
            ).logits
        logits = logits.float().reshape(-1, logits.shape[-1])  # the loss in float32

        def ce(name: str) -> torch.Tensor:
            return F.cross_entropy(
                logits, local[name].reshape(-1), ignore_index=-100, reduction="sum"
            )

        main = ce("main") / (B * (S - 1) if cfg.loss_on == "all" else B * d)
        lm_loss = ce("lm") / (B * (S - d - 1)) if lm else torch.zeros_like(main)
        objective = main + cfg.lm_weight * lm_loss
        (objective * mesh.cp).backward()  # FSDP2 averages over dp x cp ranks
        ans = local["answer"]  # (B, L)
        hit = (logits.argmax(-1).view(ans.shape) == ans) & (ans >= 0)
        return torch.stack((main.detach(), lm_loss.detach())), hit.sum(1).double()

    def train(self, resume: bool = True, stop_at: int | None = None) -> dict[str, Any]:
        """Train to the end of the curriculum or to step ``stop_at``, writing a checkpoint
        there (rerun to continue). SIGINT/SIGTERM (main thread) stop every rank after the
        same step, with a checkpoint (``self.interrupted`` names the signal). Returns the
        last logged metrics."""
        old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, lambda signum, frame: self._signals.append(signum))
        try:
            return self._loop(resume, stop_at)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _loop(self, resume: bool, stop_at: int | None) -> dict[str, Any]:
        cfg, mesh = self.cfg, self.mesh
        resumed = resume and self.load_checkpoint()
        if not resumed:
            self.clear()
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            if resumed:
                _trim_metrics(self.out / METRICS, self.step)
        end = cfg.total_steps if stop_at is None else min(stop_at, cfg.total_steps)
        bar = _progress(self.progress, cfg.total_steps, self.step)
        last: dict[str, Any] = {}
        tokens, t0, last_save = 0, time.perf_counter(), time.time()
        win = self._window
        self.model.train()
        self.interrupted = None
        while self.step < end:
            stage_idx, stage = stage_at(cfg.stages, self.step)
            ids = batch_for_step(cfg, self.step).input_ids
            losses, hits = self._step_loss(ids)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            tokens += ids.numel()
            # Exact match per document: its digits are counted on the ranks of its row.
            dist.all_reduce(hits, group=mesh.cp_group)
            em = (hits == cfg.task.digits).double().mean() / mesh.cp
            due = cfg.checkpoint_every_s and time.time() - last_save > cfg.checkpoint_every_s
            flags = [float(bool(self._signals)), float(bool(due) and self.rank == 0)]
            vec = torch.cat((losses.double(), em[None], torch.tensor(flags, device=em.device)))
            dist.all_reduce(vec)  # sums over every rank: / dp gives the step's means
            main, lm_l, em_v, stop, due_any = (vec / mesh.dp).tolist()
            win.add(main, em_v, ids.shape[1], lm_l if cfg.lm_weight > 0 else None)
            if self.step % cfg.log_every == 0 or self.step == cfg.total_steps:
                elapsed = time.perf_counter() - t0
                last = win.metrics()
                last = {
                    "step": self.step,
                    "stage": stage_idx,
                    "seq_len": stage.seq_len,
                    **last,
                    "grad_norm": _scalar(grad_norm),
                    "lr": self.scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens / elapsed,
                    "time_s": elapsed,
                    "dp": mesh.dp,
                    "cp": mesh.cp,
                }
                if self.rank == 0:
                    with open(self.out / METRICS, "a") as f:
                        f.write(json.dumps(last) + "\n")
                bar.set_postfix(loss=f"{last['loss']:.3f}", em=f"{last['exact_match']:.2f}")
                win.reset()
            bar.update(1)
            if stop:
                self.interrupted = (
                    signal.Signals(self._signals[0]).name if self._signals else "signal"
                )
            if (
                self.step % cfg.checkpoint_every == 0
                or self.step in (cfg.total_steps, end)
                or due_any
                or stop
            ):
                self.save_checkpoint()
                last_save = time.time()
            if stop:
                break
        bar.close()
        return last


def _scalar(t: torch.Tensor) -> float:
    """A float from a (possibly distributed) 0-d tensor: FSDP2's clip_grad_norm_ returns a
    DTensor."""
    full = getattr(t, "full_tensor", None)
    return float(full() if full is not None else t)


def _trim_metrics(path: Path, step: int) -> None:
    """Drop the lines logged after ``step`` (the resumed run logs them again)."""
    if path.exists():
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
        path.write_text("".join(ln + "\n" for ln in keep))


class _Window:
    """The metrics since the last logged step (plain floats: already reduced over ranks)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss = self.correct = self.lm_loss = 0.0
        self.count = self.lm_count = 0
        self.per_len: dict[int, list] = {}

    def add(self, loss: float, correct: float, seq_len: int, lm_loss: float | None) -> None:
        self.loss += loss
        self.correct += correct
        self.count += 1
        if lm_loss is not None:
            self.lm_loss += lm_loss
            self.lm_count += 1
        acc = self.per_len.setdefault(seq_len, [0.0, 0])
        acc[0] += correct
        acc[1] += 1

    def metrics(self) -> dict[str, Any]:
        out = {
            "loss": self.loss / self.count,
            "exact_match": self.correct / self.count,
            "exact_match_by_len": {str(n): c / k for n, (c, k) in sorted(self.per_len.items())},
        }
        if self.lm_count:
            out["lm_loss"] = self.lm_loss / self.lm_count
        return out

    def state(self) -> dict[str, Any]:
        return {
            k: getattr(self, k) for k in ("loss", "correct", "lm_loss", "count", "lm_count")
        } | {"per_len": {str(n): v for n, v in self.per_len.items()}}

    def load(self, state: dict[str, Any]) -> None:
        self.reset()
        for k in ("loss", "correct", "lm_loss", "count", "lm_count"):
            setattr(self, k, state[k])
        self.per_len = {int(n): list(v) for n, v in state["per_len"].items()}


def _progress(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
