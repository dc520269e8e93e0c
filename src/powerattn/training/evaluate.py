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


@torch.no_grad()
def evaluate_passkey(
    model: nn.Module,
    seq_len: int,
    depths: list[float] | np.ndarray,
    samples: int,
    digits: int = 5,
    seed: int = 1234,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """Score ``samples`` documents of ``seq_len`` tokens at each needle depth.

    Returns numpy arrays with one entry per document (``len(depths) * samples``):
    ``depth_target`` and ``depth`` (float), ``correct`` (bool, exact match),
    ``digit_acc`` (float, fraction of digits right), ``key_positions`` ``(n, 2, digits)``.
    """
    device = next(model.parameters()).device
    targets = np.repeat(np.asarray(depths, dtype=np.float64), samples)
    rng = np.random.default_rng([seed, seq_len, 0xE7A1])
    was_training = model.training
    model.eval()
    out: dict[str, list] = {"depth": [], "correct": [], "digit_acc": [], "key_positions": []}
    for start in range(0, targets.size, batch_size):
        chunk = targets[start : start + batch_size]
        batch = passkey_batch(seq_len, chunk.size, rng, digits=digits, depths=chunk)
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


def needle_hops(
    pattern: Pattern, seq_len: int, key_positions: np.ndarray, digits: int
) -> np.ndarray:
    """Fewest layers after which the first answer position can hold the whole key, per
    document: ``(n,)`` int, -1 where no number of layers suffices.

    The key is stated twice in the needle; every digit must reach the query through at least
    one of its two occurrences: ``max over digits (min over occurrences (hops of its block))``.
    Hops are counted from the block of the token that predicts the first digit (position
    ``seq_len - digits - 1``), with every layer using ``pattern``.
    """
    h = hops(pattern, seq_len - digits).astype(np.float64)  # blocks 0 .. that token's block
    h[h < 0] = np.inf
    blocks = np.asarray(key_positions) // pattern.block_size  # (n, 2, digits)
    need = h[blocks].min(axis=1).max(axis=1)  # (n,)
    return np.where(np.isinf(need), -1, need).astype(np.int64)
