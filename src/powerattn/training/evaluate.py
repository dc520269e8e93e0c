"""Passkey evaluation of a trained model, and where the theory says each needle can be read.

Scoring is exact match of the key's digits under teacher forcing: the model reads the
document up to each answer digit and we take the argmax there. All digits right under teacher
forcing is the same event as greedy decoding producing the key (if greedy decoding is right
up to digit ``i``, its inputs equal the teacher-forced ones), so the exact-match accuracy is
that of greedy generation, from one forward pass.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..patterns import Pattern
from ..receptive import hops
from ..tasks.passkey import passkey_batch
from ..validate import check_int


@torch.no_grad()
def evaluate_passkey(
    model: nn.Module,
    seq_len: int,
    depths: list[float] | np.ndarray,
    samples: int,
    digits: int = 5,
    seed: int = 1234,
    batch_size: int = 16,
    depth_width: float = 0.0,
    keys: str = "any",
) -> dict[str, np.ndarray]:
    """Score ``samples`` documents of ``seq_len`` tokens at each needle depth.

    With ``depth_width > 0`` each document's needle goes to a depth drawn uniformly from
    ``[d - depth_width / 2, d + depth_width / 2]`` (clipped to [0, 1]) around its target
    ``d`` -- with :func:`depth_bins`, uniformly inside each bin -- so that the documents of
    one cell do not all share one needle position. ``keys="heldout"`` draws only keys that a
    run trained with ``task.heldout_keys`` never saw. The documents are a function of
    ``(seed, seq_len)``: every model is scored on the same ones.

    Returns numpy arrays with one entry per document (``len(depths) * samples``):
    ``depth_target`` and ``depth`` (float), ``correct`` (bool, exact match),
    ``digit_acc`` (float, fraction of digits right), ``key_positions`` ``(n, 2, digits)``.
    """
    check_int("samples", samples)
    check_int("batch_size", batch_size)
    if np.asarray(depths).size == 0:
        raise ValueError("depths must hold at least one needle depth")
    if not 0.0 <= depth_width <= 1.0:
        raise ValueError(f"depth_width must be in [0, 1], got {depth_width!r}")
    device = next(model.parameters()).device
    targets = np.repeat(np.asarray(depths, dtype=np.float64), samples)
    rng = np.random.default_rng([seed, seq_len, 0xE7A1])
    placed = targets
    if depth_width > 0:  # its own stream: the keys drawn below stay those of the seed
        jitter = np.random.default_rng([seed, seq_len, 0xD5]).random(targets.size) - 0.5
        placed = np.clip(targets + depth_width * jitter, 0.0, 1.0)
    was_training = model.training
    model.eval()
    out: dict[str, list] = {"depth": [], "correct": [], "digit_acc": [], "key_positions": []}
    for start in range(0, targets.size, batch_size):
        chunk = placed[start : start + batch_size]
        batch = passkey_batch(seq_len, chunk.size, rng, digits=digits, depths=chunk, keys=keys)
        ids = batch.input_ids.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(ids, logits_to_keep=digits + 1).logits[:, :-1]
        hit = (logits.argmax(-1) == ids[:, -digits:]).cpu()  # (b, digits)
        out["depth"].append(batch.depths)
        out["correct"].append(hit.all(-1).numpy())
        out["digit_acc"].append(hit.float().mean(-1).numpy())
        out["key_positions"].append(batch.key_positions)
    model.train(was_training)
    res = {k: np.concatenate(v) for k, v in out.items()}
    res["depth_target"] = targets
    return res


def depth_bins(n: int) -> tuple[np.ndarray, float]:
    """``(centres, width)`` of ``n`` equal needle-depth bins covering [0, 1], for
    :func:`evaluate_passkey` (``depths=centres, depth_width=width``)."""
    check_int("n", n)
    return (np.arange(n) + 0.5) / n, 1.0 / n


def needle_hops(
    pattern: Pattern, seq_len: int, key_positions: np.ndarray, digits: int
) -> np.ndarray:
    """Fewest layers after which every answer digit can be read, per document: ``(n,)`` int,
    -1 where no number of layers suffices (every layer using ``pattern``): the maximum over
    the digits of :func:`digit_hops`."""
    per_digit = digit_hops(pattern, seq_len, key_positions, digits)
    return np.where((per_digit < 0).any(axis=1), -1, per_digit.max(axis=1))


def digit_hops(
    pattern: Pattern, seq_len: int, key_positions: np.ndarray, digits: int
) -> np.ndarray:
    """Fewest layers after which each answer digit can be read, per document and digit:
    ``(n, digits)`` int, -1 where no number of layers suffices.

    Digit ``i`` is predicted at position ``p_i = seq_len - digits - 1 + i`` and must reach it
    through at least one of the key's two statements in the needle:
    ``min over statements (layers from the digit's token to p_i)``.
    Layers between blocks are :func:`powerattn.receptive.hops` counted from ``p_i``'s block
    (the answer may straddle two blocks); a digit inside that block takes 1 layer (``hops``
    gives the block itself 0).

    Args:
        key_positions: ``(n, 2, digits)`` token positions of the key's digits, as in
            :class:`powerattn.tasks.PasskeyBatch`; all before ``p_0``.
    """
    kp = np.asarray(key_positions)
    if kp.ndim != 3 or kp.shape[1:] != (2, digits):
        raise ValueError(f"key_positions must have shape (n, 2, {digits}), got {kp.shape}")
    first = seq_len - digits - 1
    if kp.size and not 0 <= kp.min() <= kp.max() < first:
        raise ValueError(f"key_positions must lie in [0, {first}) (before the answer)")
    bs = pattern.block_size
    blocks = kp // bs  # (n, 2, digits)
    need = np.zeros((kp.shape[0], digits))
    by_block: dict[int, np.ndarray] = {}
    for i in range(digits):
        qb = (first + i) // bs
        if qb not in by_block:  # at most two distinct query blocks
            h = hops(pattern, (qb + 1) * bs).astype(np.float64)  # blocks 0 .. qb
            h[h < 0] = np.inf
            by_block[qb] = np.maximum(h, 1.0)  # the digit precedes p_i: at least 1 layer
        need[:, i] = by_block[qb][blocks[:, :, i]].min(axis=1)
    return np.where(np.isinf(need), -1, need).astype(np.int64)


def guess_probability(per_digit_hops: np.ndarray, layers: int) -> np.ndarray:
    """Probability, per document, of guessing every digit the theory says cannot reach the
    answer in ``layers`` layers: ``1/9`` for the first digit (never 0), ``1/10`` for each
    other one; 1 where every digit can arrive. ``per_digit_hops``: ``(n, digits)`` from
    :func:`digit_hops`."""
    h = np.asarray(per_digit_hops)
    out_of_reach = (h < 0) | (h > layers)
    chance = np.full(h.shape, 0.1)
    chance[:, 0] = 1 / 9
    return np.where(out_of_reach, chance, 1.0).prod(axis=1)
