"""Deterministic training data: the batch of step ``t`` depends only on ``(seed, t)``.

So a resumed run sees exactly the batches the uninterrupted run would have seen, with no
data-loader state to save.
"""

from __future__ import annotations

import numpy as np

from ..tasks.passkey import PasskeyBatch, passkey_batch
from .config import Stage, TrainConfig


def stage_at(stages: list[Stage], step: int) -> tuple[int, Stage]:
    """``(index, stage)`` of the curriculum stage that step ``step`` (0-based) belongs to."""
    if step < 0:
        raise ValueError(f"step must be non-negative, got {step}")
    end = 0
    for i, stage in enumerate(stages):
        end += stage.steps
        if step < end:
            return i, stage
    raise ValueError(f"step {step} is past the last stage (total {end} steps)")


def seq_len_for_step(cfg: TrainConfig, step: int) -> int:
    """The document length of step ``step``: with probability ``cfg.replay`` (stages after
    the first) an earlier stage's ``seq_len``, drawn uniformly; otherwise one of its stage's
    :attr:`~.config.Stage.lengths`, drawn uniformly (the stage's ``seq_len`` if it mixes in
    none)."""
    idx, stage = stage_at(cfg.stages, step)
    rng = np.random.default_rng([cfg.seed, 0x1E7, step])
    if idx > 0 and rng.random() < cfg.replay:
        return cfg.stages[int(rng.integers(idx))].seq_len
    if stage.mix:
        return stage.lengths[int(rng.integers(len(stage.lengths)))]
    return stage.seq_len


def batch_for_step(cfg: TrainConfig, step: int) -> PasskeyBatch:
    """The training batch of step ``step``: passkeys at uniform random depths, at the length
    :func:`seq_len_for_step` gives."""
    rng = np.random.default_rng([cfg.seed, 0x7A55, step])
    keys = "train" if cfg.task.heldout_keys else "any"
    return passkey_batch(
        seq_len_for_step(cfg, step), cfg.batch_size, rng, digits=cfg.task.digits, keys=keys
    )
