"""The training loop: AdamW, warm-up + cosine (or constant), gradient clipping, bf16 autocast
on GPU, a length curriculum (optionally mixing lengths every step), an optional next-token
loss on the whole document next to the answer's, checkpoints that resume exactly, a progress
bar and a JSONL metrics file.

Exact resume: the batch of step ``t`` is a pure function of ``(seed, t)`` (see
:mod:`.data`), and a checkpoint holds the model, optimizer, scheduler, step and every RNG
state, and the partial sums of the metrics window being averaged. A run killed at any point
and restarted from its last checkpoint therefore takes the same steps and logs the same
metrics as one that was never interrupted (bit for bit on CPU; on GPU up to the
non-determinism of the kernels).

Speed options (:class:`~.config.TrainConfig` ``fused_optim``, ``compile``, ``pin_memory``;
off by default): the same training up to float rounding (tests/training/test_speed.py),
measured on the GPU by ``scripts/gpu_train_speed.py``. Single-process trainer only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask

from ..patterns import Pattern
from .config import SPEED_OPTIONS, Stage, TrainConfig
from .data import batch_for_step, stage_at
from .model import build_model

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
# The files a Trainer writes in its run directory (with the checkpoint's temporary copy);
# a fresh start removes exactly these.
RUN_FILES = (CHECKPOINT, Path(CHECKPOINT).with_suffix(".tmp").name, METRICS, CONFIG)
# Config fields that choose how the model is computed, not which model is trained: every
# attention backend computes the same model, so a checkpoint resumes under any of them (a run
# that fell back to "sdpa_mask" resumes on a kernel and back).
# The speed options (fused optimizer, compile, pinned batches) likewise.
NOT_IN_IDENTITY = ("backend", "checkpoint_every_s", *SPEED_OPTIONS)
# What ``compile=True`` hands to torch.compile (the tests swap in "aot_eager": the same
# tracing and autograd graphs without generating code, seconds instead of minutes on a CPU).
COMPILE_BACKEND = "inductor"


class CheckpointMismatchError(ValueError):
    """The run directory holds a checkpoint of another configuration (not resumable)."""


def clear_run(out_dir: str | Path) -> None:
    """Remove the files a :class:`Trainer` writes in ``out_dir`` (:data:`RUN_FILES`: the
    checkpoint, metrics, config), so that nothing of an earlier run can be resumed or appended
    to; other files (e.g. an experiment's ``eval.json``) stay."""
    for name in RUN_FILES:
        (Path(out_dir) / name).unlink(missing_ok=True)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {name!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
    return device


def lr_lambda(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate for the update of ``step`` (0-based; the
    scheduler is stepped after each update, so update ``t`` uses ``lr_lambda(t)``): linear
    warm-up over ``warmup_steps``, then by ``optim.schedule``: cosine decay reaching
    ``min_lr_ratio`` at ``step = total_steps``; 1 (``"constant"``); or 1 until the last
    ``cfg.decay_steps`` updates, which decay linearly (``"wsd"``: the first of them at 1, the
    last at ``min_lr_ratio + (1 - min_lr_ratio) / decay_steps``, reaching ``min_lr_ratio`` at
    ``step = total_steps``). ``step`` counts every stage's steps (``cfg.total_steps``)."""
    o = cfg.optim
    if step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "wsd":
        left = max(cfg.total_steps - step, 0)  # updates still to come, this one included
        if left >= cfg.decay_steps:
            return 1.0
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * left / cfg.decay_steps
    span = max(cfg.total_steps - o.warmup_steps, 1)
    t = min((step - o.warmup_steps) / span, 1.0)
    return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def build_run_model(cfg: TrainConfig, pattern: Pattern, tokenizer=None) -> torch.nn.Module:
    """The model of a run: ``cfg.model`` with ``pattern``, sized for its longest stage (the
    single-process and the distributed trainers build it the same way)."""
    return build_model(
        cfg.model,
        pattern,
        max_seq_len=max(s.seq_len for s in cfg.stages),
        full_layers=cfg.pattern.full_layers,
        backend=cfg.backend,
        seed=cfg.seed,
        tokenizer=tokenizer,
    )


def build_optimizer(
    model: torch.nn.Module, cfg: TrainConfig, fused: bool = False
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (weight decay on matrices only) and the schedule of ``cfg.optim``: the one
    optimiser of the single-process and the distributed trainers. ``fused``: AdamW's fused
    kernel (:attr:`TrainConfig.fused_optim`; the same update up to float rounding), else
    PyTorch's default (foreach on CUDA)."""
    o = cfg.optim
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": o.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        fused=True if fused else None,
    )
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, cfg))


def passkey_loss(
    model: nn.Module,
    input_ids: torch.Tensor,
    digits: int,
    loss_on: str,
    lm: bool = False,
    block_mask: BlockMask | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(loss, answer_correct, lm_loss)``: mean next-token cross-entropy (over the answer's
    digits, or over every token with ``loss_on="all"``), ``(B, digits)`` bool, whether the
    teacher-forced argmax got each answer digit right, and with ``lm`` (``loss_on="answer"``
    only) the mean next-token cross-entropy over every other position (haystack, needle,
    question), else None. The training objective is ``loss + lm_weight * lm_loss``.

    Args:
        input_ids: ``(B, S)`` int64 documents whose last ``digits`` tokens are the answer.
        block_mask: the pattern's FlexAttention mask for ``S`` tokens
            (:meth:`Trainer.block_mask`), handed to the model as its ``attention_mask``:
            built outside a compiled loss, it keeps the forward one graph (see
            :func:`compile_loss`); no KV cache then (nothing reads it).
    """
    kw = {} if block_mask is None else {"attention_mask": block_mask, "use_cache": False}
    if loss_on == "answer" and lm:
        logits = model(input_ids, **kw).logits.float()  # (B, S, V)
        v = logits.shape[-1]
        ans = logits[:, -digits - 1 : -1]  # (B, digits, V): the positions predicting the key
        loss = F.cross_entropy(ans.reshape(-1, v), input_ids[:, -digits:].ravel())
        rest = logits[:, : -digits - 1]  # (B, S - digits - 1, V)
        lm_loss = F.cross_entropy(rest.reshape(-1, v), input_ids[:, 1:-digits].ravel())
        return loss, ans.argmax(-1) == input_ids[:, -digits:], lm_loss
    if loss_on == "answer":
        # Only the last digits + 1 positions' logits are needed: the one before each digit.
        logits = model(input_ids, logits_to_keep=digits + 1, **kw).logits[:, :-1].float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), input_ids[:, -digits:].ravel())
    else:
        logits = model(input_ids, **kw).logits.float()  # (B, S, V)
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].ravel()
        )
        logits = logits[:, -digits - 1 : -1]
    correct = logits.argmax(-1) == input_ids[:, -digits:]  # (B, digits)
    return loss, correct, None


def compile_loss(cfg: TrainConfig) -> Callable[..., Any]:
    """:func:`passkey_loss` under ``torch.compile`` (:attr:`TrainConfig.compile`): the model's
    forward and the loss in one graph per document length (static shapes: a run mixes a few
    lengths, each compiled once), the backward compiled by AOTAutograd. Inductor fuses the
    float32 cast of the logits into the cross-entropy. The attention runs inside the graph:
    FlexAttention is traced as the op itself (``powerattn.ops.flex`` skips its own compile
    when ``torch.compiler.is_compiling()``), its BlockMask an input built outside the graph
    (:meth:`Trainer.block_mask`), so that the forward has no graph break and the graph count
    does not grow with the layers; full attention is SDPA. Call it under
    :func:`compile_limits`."""
    return torch.compile(passkey_loss, backend=COMPILE_BACKEND, dynamic=False)


def _distinct_lengths(cfg: TrainConfig) -> int:
    return len({n for s in cfg.stages for n in s.lengths})


def compile_limits(cfg: TrainConfig) -> contextlib.AbstractContextManager:
    """Let the compiled loss hold one graph per length of ``cfg`` (and a margin for other
    models compiled in the same process), and make running past that an error: dynamo
    would otherwise fall back to running eagerly without a word."""
    from ..ops.flex import dynamo_recompile_limit, recompile_limit

    def error(limit: int) -> RuntimeError:
        return RuntimeError(
            f"compile=True: the compiled loss reached {limit} graphs (one per document length "
            "and model); train with compile=False, or call torch._dynamo.reset() between the "
            "runs of one process"
        )

    return recompile_limit(max(dynamo_recompile_limit(), 2 * _distinct_lengths(cfg) + 8), error)


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the fields of :data:`NOT_IN_IDENTITY`."""
    return {k: v for k, v in config.items() if k not in NOT_IN_IDENTITY}


def _rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    # .cpu(): torch.load(map_location="cuda") moves the saved generator states to the GPU,
    # and the setters take CPU byte tensors only.
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class Trainer:
    """Trains one model on the passkey curriculum of ``cfg``, writing into ``out_dir``:
    ``checkpoint.pt`` (latest), ``metrics.jsonl`` (one JSON object per logged step),
    ``config.json``."""

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: str | Path,
        progress: bool = True,
        *,
        tokenizer=None,
        batch_fn: Callable[[TrainConfig, int], torch.Tensor] | None = None,
    ) -> None:
        # tokenizer, batch_fn: another vocabulary (see build_model) and another data source,
        # ``batch_fn(cfg, step) -> (B, S) int64`` (a pure function of (cfg.seed, step), so that
        # resume stays exact), e.g. language modelling with cfg.loss_on="all"
        # (powerattn.training.lm_data); default: the passkey curriculum.
        cfg.validate()
        self.cfg = cfg
        self._batch_fn = batch_fn or (lambda c, t: batch_for_step(c, t).input_ids)
        self.out = Path(out_dir)
        self.progress = progress
        self.device = resolve_device(cfg.device)
        self.pattern = cfg.build_pattern()
        torch.manual_seed(cfg.seed)
        self.model = build_run_model(cfg, self.pattern, tokenizer).to(self.device)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg, fused=cfg.fused_optim)
        self._loss = compile_loss(cfg) if cfg.compile else passkey_loss
        self._pin = cfg.pin_memory and self.device.type == "cuda"
        self.step = 0
        self.resumed_from: int | None = None  # the checkpoint's step of the last train()
        self.interrupted: str | None = None  # the signal that stopped the last train()
        self._signals: list[int] = []
        # The metrics window since the last logged step: loss sum, exact-match sum, steps.
        # Sums stay on the device and are read at log time only (a read per step would make
        # the host wait for the GPU every step); checkpoints carry them.
        self._window = _Window(self.device)

    def block_mask(self, ids: torch.Tensor) -> BlockMask | None:
        """Compile: the pattern's FlexAttention BlockMask for documents like ``ids`` (cached
        per length: a dict look-up per step once built), handed to the compiled loss as an
        input (:func:`passkey_loss`'s ``block_mask``). Looked up inside the trace instead, it
        breaks the graph in every attention layer, each layer's forward then becomes a
        compiled frame of its own, recompiled per layer and length (an 8-layer model over
        the gpu-mix lengths passed dynamo's recompile limit). ``None`` where no layer runs
        FlexAttention: full attention (SDPA), backends ``dense``, ``reference``,
        ``sdpa_mask``. (The CPU's ``auto`` trains on ``dense``, which ignores it.)"""
        if self.pattern.name == "full" or self.cfg.backend not in ("auto", "flex", "flash"):
            return None
        from ..ops.flex import block_mask_for

        return block_mask_for(self.pattern, ids.shape[1], ids.shape[1], ids.device)

    def loss(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:func:`passkey_loss` of the batch ``ids`` (on the device) as a training step
        computes it: under bf16 autocast on the GPU; compiled with ``cfg.compile``."""
        cfg = self.cfg
        bm = self.block_mask(ids) if cfg.compile else None
        with (
            torch.autocast(
                self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
            ),
            compile_limits(cfg) if cfg.compile else contextlib.nullcontext(),
        ):
            return self._loss(self.model, ids, cfg.task.digits, cfg.loss_on, cfg.lm_weight > 0, bm)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write the full training state atomically (a kill mid-write keeps the old one)."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / CHECKPOINT
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "step": self.step,
                "config": self.cfg.to_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(),
                "window": self._window.state(),
            },
            tmp,
        )
        os.replace(tmp, path)
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Restore the state saved in ``path`` (default: ``out_dir/checkpoint.pt``); False if
        there is none. A checkpoint of a different configuration raises ``ValueError``; the
        fields of :data:`NOT_IN_IDENTITY` (the attention backend) may differ."""
        path = Path(path) if path else self.out / CHECKPOINT
        if not path.exists():
            return False
        state = torch.load(path, map_location=self.device, weights_only=False)
        if _identity(state["config"]) != _identity(self.cfg.to_dict()):
            raise CheckpointMismatchError(
                f"checkpoint {path} was written by a different configuration"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step = int(state["step"])
        self._window.load(state.get("window"))
        return True

    def _trim_metrics(self) -> None:
        """Drop metric lines logged after the checkpoint we resume from (they will be
        logged again), so the file reads like an uninterrupted run's."""
        path = self.out / METRICS
        if not path.exists():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        keep = [ln for ln in lines if json.loads(ln).get("step", 0) <= self.step]
        path.write_text("".join(ln + "\n" for ln in keep))

    # ------------------------------------------------------------------ the loop
    def train(
        self,
        resume: bool = True,
        stop_at: int | None = None,
        stop_time: float | None = None,
        on_stage_end: Callable[[int, Stage], None] | None = None,
        stop_on_signal: bool = False,
    ) -> dict[str, Any]:
        """:meth:`train_loop`; with ``stop_on_signal`` (main thread only), SIGINT (Ctrl-C) and
        SIGTERM stop it after the current step with a checkpoint (``self.interrupted`` then
        names the signal), so that a rerun resumes there; the handlers are restored after."""
        self.interrupted = None
        self._signals = []
        old = {}
        if stop_on_signal and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                old[sig] = signal.signal(sig, lambda signum, frame: self._signals.append(signum))
        try:
            return self.train_loop(
                resume=resume, stop_at=stop_at, stop_time=stop_time, on_stage_end=on_stage_end
            )
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def train_loop(
        self,
        resume: bool = True,
        stop_at: int | None = None,
        stop_time: float | None = None,
        on_stage_end: Callable[[int, Stage], None] | None = None,
    ) -> dict[str, Any]:
        """Train to the end of the curriculum, or until the wall clock (``time.time()``)
        passes ``stop_time`` -- then a checkpoint is written and a later call resumes from it
        -- or to step ``stop_at``, which stops like a killed process: nothing is written
        beyond the regular checkpoints and log lines.

        With ``resume`` (default), continue from ``out_dir/checkpoint.pt`` if it exists;
        otherwise start over: the old run's files are removed first (:func:`clear_run`), so a
        run stopped before its first checkpoint cannot leave a stale one for a later resume.
        ``on_stage_end(stage_index, stage)`` is called after the last step of each curriculum
        stage (after that step's checkpoint, if any), e.g. to evaluate the model at the
        stage's length; the model is put back in training mode afterwards. A run resumed from
        a checkpoint at a stage's last step calls it again for that stage (the callback may
        have been cut short by the kill), so it should be idempotent.

        Returns the last logged metrics.
        """
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = resume and self.load_checkpoint()
        self.resumed_from = self.step if resumed else None
        if resumed:
            self._trim_metrics()
        else:
            clear_run(self.out)
        (self.out / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        end = cfg.total_steps if stop_at is None else min(stop_at, cfg.total_steps)
        bar = _progress(self.progress, total=cfg.total_steps, initial=self.step)
        last: dict[str, Any] = {}
        tokens, t0 = 0, time.perf_counter()
        win = self._window
        stage_ends = np.cumsum([s.steps for s in cfg.stages]).tolist()
        if on_stage_end is not None and resumed and self.step in stage_ends:
            # The checkpoint of a stage's last step is written before the callback: a run
            # killed during the callback resumes here, and the callback must not be lost.
            i = stage_ends.index(self.step)
            on_stage_end(i, cfg.stages[i])
        self.model.train()
        last_save = time.time()
        while self.step < end:
            if stop_time is not None and time.time() > stop_time:
                self.save_checkpoint()
                break
            if self._signals:
                self.interrupted = signal.Signals(self._signals[0]).name
                self.save_checkpoint()
                break
            stage_idx, stage = stage_at(cfg.stages, self.step)
            ids = self._batch_fn(cfg, self.step)
            if self._pin:  # a copy from pageable memory would wait for the GPU
                ids = ids.pin_memory()
            ids = ids.to(self.device, non_blocking=True)
            loss, correct, lm_loss = self.loss(ids)
            objective = loss if lm_loss is None else loss + cfg.lm_weight * lm_loss
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            tokens += ids.numel()
            win.add(loss.detach(), correct.all(-1).float().mean(), ids.shape[1], lm_loss)
            if self.step % cfg.log_every == 0 or self.step == cfg.total_steps:
                elapsed = time.perf_counter() - t0
                last = {
                    "step": self.step,
                    "stage": stage_idx,
                    "seq_len": stage.seq_len,  # the stage's (replayed steps may be shorter)
                    "loss": float(win.loss) / win.count,
                    "exact_match": float(win.correct) / win.count,
                    # Exact match per document length drawn in the window (mixed stages).
                    "exact_match_by_len": win.by_length(),
                    "grad_norm": float(grad_norm),
                    "lr": self.scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens / elapsed,
                    "time_s": elapsed,
                }
                if win.lm_count:
                    last["lm_loss"] = float(win.lm_loss) / win.lm_count
                with open(self.out / METRICS, "a") as f:
                    f.write(json.dumps(last) + "\n")
                bar.set_postfix(
                    loss=f"{last['loss']:.3f}",
                    em=f"{last['exact_match']:.2f}",
                    L=stage.seq_len,
                    tok_s=f"{last['tokens_per_s']:.3g}",
                )
                win.reset()
            bar.update(1)
            due = cfg.checkpoint_every_s and time.time() - last_save > cfg.checkpoint_every_s
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.total_steps or due:
                self.save_checkpoint()
                last_save = time.time()
            if on_stage_end is not None and self.step == stage_ends[stage_idx]:
                on_stage_end(stage_idx, stage)
                self.model.train()
        bar.close()
        return last


class _Window:
    """Running sums of the metrics logged every ``log_every`` steps."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)
        self.count = 0
        self.lm_loss = torch.zeros((), device=device)
        self.lm_count = 0
        self.per_len: dict[int, list] = {}  # length -> [exact-match sum (tensor), steps]

    def add(
        self,
        loss: torch.Tensor,
        correct: torch.Tensor,
        seq_len: int = 0,
        lm_loss: torch.Tensor | None = None,
    ) -> None:
        self.loss += loss
        self.correct += correct
        self.count += 1
        if lm_loss is not None:
            self.lm_loss += lm_loss.detach()
            self.lm_count += 1
        if seq_len not in self.per_len:
            self.per_len[seq_len] = [torch.zeros((), device=self.device), 0]
        acc = self.per_len[seq_len]
        acc[0] += correct
        acc[1] += 1

    def by_length(self) -> dict[str, float]:
        return {str(n): float(c) / k for n, (c, k) in sorted(self.per_len.items())}

    def reset(self) -> None:
        self.loss.zero_()
        self.correct.zero_()
        self.count = 0
        self.lm_loss.zero_()
        self.lm_count = 0
        self.per_len = {}

    def state(self) -> dict[str, Any]:
        return {
            "loss": self.loss.cpu(),
            "correct": self.correct.cpu(),
            "count": self.count,
            "lm_loss": self.lm_loss.cpu(),
            "lm_count": self.lm_count,
            "per_len": {n: [c.cpu(), k] for n, (c, k) in self.per_len.items()},
        }

    def load(self, state: dict[str, Any] | None) -> None:
        self.reset()
        if state:  # checkpoints written before the window was saved have none
            self.loss.copy_(state["loss"])
            self.correct.copy_(state["correct"])
            self.count = int(state["count"])
            if "lm_loss" in state:  # saved since lm_weight exists
                self.lm_loss.copy_(state["lm_loss"])
                self.lm_count = int(state["lm_count"])
                self.per_len = {
                    int(n): [c.to(self.device), int(k)] for n, (c, k) in state["per_len"].items()
                }


def _progress(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
