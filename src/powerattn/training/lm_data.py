"""Language-modelling batches for :class:`powerattn.training.Trainer` (its ``batch_fn`` hook).

The batch of step ``t`` is ``batch_size`` windows of the stage's length cut from a token
stream at offsets drawn from ``(seed, t)`` only, so a resumed run sees the same batches as an
uninterrupted one (as with the passkey data). Train with ``loss_on="all"``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .config import TrainConfig
from .data import seq_len_for_step


def lm_batch_fn(tokens: np.ndarray) -> Callable[[TrainConfig, int], torch.Tensor]:
    """``batch_fn(cfg, step) -> (cfg.batch_size, seq_len) int64``: random windows of
    ``tokens`` (a 1-D integer array, e.g. a memory-mapped ``.npy`` of the concatenated
    training documents), ``seq_len`` from the curriculum (:func:`seq_len_for_step`)."""
    tokens = np.asarray(tokens) if not isinstance(tokens, np.memmap) else tokens
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens must be a 1-D integer array, got {tokens.dtype} {tokens.shape}")

    def batch(cfg: TrainConfig, step: int) -> torch.Tensor:
        seq_len = seq_len_for_step(cfg, step)
        if tokens.size < seq_len:
            raise ValueError(
                f"the token stream ({tokens.size} tokens) is shorter than one window "
                f"({seq_len}); build a larger corpus"
            )
        rng = np.random.default_rng([cfg.seed, 0x1A4, step])
        starts = rng.integers(0, tokens.size - seq_len + 1, size=cfg.batch_size)
        rows = np.stack([tokens[s : s + seq_len] for s in starts]).astype(np.int64)
        return torch.from_numpy(rows)  # (B, S)

    return batch
