"""Linear probing of where a passkey's information is (the paper's Figure 5), scaled down.

Documents are passkey documents (:mod:`powerattn.tasks.passkey`'s header, needle and question)
whose key is one of ``len(keys)`` candidates (6, chance 1/6), the needle at a fixed depth (10 %),
and whose haystack is the filler's sentences in a random order (so that hidden states vary
for reasons other than the key). For every layer (0 = the embeddings) and every attention
block, the hidden states are mean-pooled over the block's tokens and one multinomial
logistic-regression probe (L2, standardised features; scikit-learn's objective, fitted by
scikit-learn or, batched over all probes, by L-BFGS in PyTorch) is fitted on half of the
documents and scored on the other half (stratified by key).

The theory to compare with: a block's state can depend on the key after ``L`` layers iff the
block receives the needle's block within ``L`` hops of the pattern's block graph
(:func:`powerattn.receptive.hop_matrix`); :func:`reached` returns that mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..patterns import Pattern
from ..receptive import hop_matrix
from ..tasks.passkey import FILLER, HEADER, NEEDLE, QUESTION
from ..tasks.tokenizer import ByteTokenizer

KEYS = ("31415", "27182", "16180", "14142", "17320", "22360")
_SENTENCES = [s.strip() + "." for s in FILLER.split(".") if s.strip()]


def probe_documents(
    seq_len: int,
    per_key: int,
    depth: float = 0.1,
    seed: int = 0,
    keys: tuple[str, ...] = KEYS,
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``(ids (N, seq_len) int64, labels (N,) key index, needle start (N,))`` with
    ``N = per_key * len(keys)``, byte tokens, each document exactly ``seq_len`` tokens:
    ``<bos>HEADER hay[:a]NEEDLE hay[a:] QUESTION`` with ``a`` the sentence start nearest to
    ``depth`` of the haystack."""
    tok = ByteTokenizer()
    rng = np.random.default_rng([seed, 0x9B0E])
    fixed = 1 + len(HEADER) + 1 + len(NEEDLE.format(key=keys[0])) + 1 + 1 + len(QUESTION)
    hay_len = seq_len - fixed
    if hay_len < 64:
        raise ValueError(f"seq_len must be at least {fixed + 64} for probing, got {seq_len}")
    rows, labels, starts = [], [], []
    for label in np.repeat(np.arange(len(keys)), per_key):
        sents: list[str] = []
        while sum(len(s) + 1 for s in sents) < hay_len + 100:
            sents.append(_SENTENCES[int(rng.integers(len(_SENTENCES)))])
        hay = " ".join(sents)[:hay_len]
        bounds = [0] + [i + 2 for i in range(len(hay) - 2) if hay[i : i + 2] == ". "]
        a = min(bounds, key=lambda b: abs(b - depth * hay_len))
        head = HEADER + " " + hay[:a]
        text = head + NEEDLE.format(key=keys[label]) + " " + hay[a:] + " " + QUESTION
        ids = tok.encode(text, bos=True)
        assert len(ids) == seq_len, (len(ids), seq_len)
        rows.append(ids)
        labels.append(label)
        starts.append(1 + len(head))
    return torch.tensor(rows), np.asarray(labels), np.asarray(starts)


@torch.no_grad()
def pooled_states(
    model: torch.nn.Module, ids: torch.Tensor, block_size: int, batch_size: int = 8
) -> np.ndarray:
    """``(layers + 1, N, blocks, hidden)`` float32: each layer's hidden states (0: the
    embeddings) mean-pooled over each block of ``block_size`` tokens (a last partial block is
    pooled over its tokens)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n, s = ids.shape
    blocks = -(-s // block_size)
    block_of = torch.arange(s, device=device) // block_size
    sizes = torch.bincount(block_of, minlength=blocks).float()  # (blocks,)
    out = []
    for i in range(0, n, batch_size):
        x = ids[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            hs = model(x, output_hidden_states=True).hidden_states  # (L + 1) x (b, S, H)
        h = torch.stack([t.float() for t in hs])  # (L + 1, b, S, H)
        pooled = torch.zeros(h.shape[0], h.shape[1], blocks, h.shape[3], device=device)
        pooled.index_add_(2, block_of, h)
        out.append((pooled / sizes[None, None, :, None]).cpu())
    model.train(was_training)
    return torch.cat(out, dim=1).numpy()


def _split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified halves (train, test) of the documents."""
    rng = np.random.default_rng([seed, 0x5B1])
    train = np.zeros(labels.size, dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train[idx[: idx.size // 2]] = True
    return np.flatnonzero(train), np.flatnonzero(~train)


ENGINES = ("torch", "sklearn")


def check_engine(engine: str) -> None:
    """Refuse an engine that is not one of :data:`ENGINES`."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")


def probe_accuracy(
    features: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    C: float = 1.0,
    engine: str = "torch",
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """``(layers, blocks)`` held-out accuracy of one multinomial logistic-regression probe per
    (layer, block) on ``features`` ``(layers, N, blocks, hidden)``: standardised features
    (statistics of the training half), L2 penalty ``1 / C`` as in scikit-learn.

    ``engine="sklearn"``: scikit-learn's ``LogisticRegression``, one fit per probe (the
    reference); ``"torch"``: the same objective for all probes at once, minimised with L-BFGS
    in float64 on ``device`` (seconds instead of minutes for 128 blocks x 7 layers, and no
    scikit-learn needed on the GPU machine). Tests check they agree.
    """
    check_engine(engine)
    tr, te = _split(labels, seed)
    if np.unique(labels[tr]).size < 2 or te.size == 0:
        raise ValueError("probing needs at least two documents of each of two keys")
    layers, _, blocks, hidden = features.shape
    x = features.transpose(0, 2, 1, 3).reshape(layers * blocks, -1, hidden)  # (P, N, H)
    mu = x[:, tr].mean(1, keepdims=True)
    sd = x[:, tr].std(1, keepdims=True)
    sd = np.where(sd < 1e-6, 1.0, sd)  # a constant feature (e.g. before the needle) stays 0
    x = (x - mu) / sd
    if engine == "sklearn":
        acc = _sklearn_probes(x, labels, tr, te, C)
    else:
        acc = _torch_probes(x, labels, tr, te, C, torch.device(device))
    return acc.reshape(layers, blocks)


def _sklearn_probes(x, labels, tr, te, C) -> np.ndarray:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ValueError(
            "engine='sklearn' needs scikit-learn (pip install scikit-learn); or use engine='torch'"
        ) from exc
    acc = np.zeros(x.shape[0])
    for i in range(x.shape[0]):
        clf = LogisticRegression(C=C, max_iter=2000, tol=1e-8)
        clf.fit(x[i, tr], labels[tr])
        acc[i] = clf.score(x[i, te], labels[te])
    return acc


def _torch_probes(x, labels, tr, te, C, device: torch.device) -> np.ndarray:
    classes = int(labels.max()) + 1
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device, torch.float64)  # (P, N, H)
    y = torch.from_numpy(labels).long().to(device)
    tr, te = torch.from_numpy(tr).to(device), torch.from_numpy(te).to(device)
    P, _, H = xt.shape
    w = torch.zeros(P, H + 1, classes, dtype=torch.float64, device=device, requires_grad=True)
    xa = torch.cat([xt, torch.ones(P, xt.shape[1], 1, dtype=xt.dtype, device=device)], dim=2)
    x_tr, y_tr = xa[:, tr], y[tr]
    opt = torch.optim.LBFGS(
        [w], lr=1, max_iter=150, tolerance_grad=1e-7, tolerance_change=1e-10,
        history_size=10, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        logits = x_tr @ w  # (P, n, classes)
        ce = torch.nn.functional.cross_entropy(
            logits.reshape(-1, classes), y_tr.repeat(P), reduction="sum"
        )
        loss = C * ce + 0.5 * (w[:, :H] ** 2).sum()  # sklearn's objective, summed over probes
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        pred = (xa[:, te] @ w).argmax(-1)  # (P, n_test)
    return (pred == y[te]).double().mean(1).cpu().numpy()


def reached(pattern: Pattern, seq_len: int, needle_block, layers: int) -> np.ndarray:
    """``(layers + 1, blocks)`` bool: row ``L`` marks the blocks whose state can depend on the
    needle after ``L`` layers, every layer using ``pattern`` (row 0, the embeddings: the
    needle's blocks only). ``needle_block``: the block, or a list of the blocks, holding the
    key's tokens."""
    sources = np.atleast_1d(np.asarray(needle_block, dtype=np.int64))
    hm = hop_matrix(pattern, seq_len)[:, sources]  # (blocks, sources) hops from each source
    lvl = np.arange(layers + 1)[:, None, None]
    return ((hm[None] >= 0) & (hm[None] <= lvl)).any(-1)


def probe_model(
    model: torch.nn.Module,
    pattern: Pattern,
    seq_len: int,
    per_key: int = 16,
    depth: float = 0.1,
    seed: int = 0,
    batch_size: int = 8,
    engine: str = "torch",
) -> dict[str, Any]:
    """Probe ``model`` (a byte-vocabulary model such as the passkey experiment's) on
    :func:`probe_documents`: ``{"accuracy": (layers + 1, blocks), "reached": same shape bool,
    "needle_block", "chance"}``."""
    ids, labels, starts = probe_documents(seq_len, per_key, depth, seed)
    bs = pattern.block_size
    feats = pooled_states(model, ids, bs, batch_size)
    device = next(model.parameters()).device
    acc = probe_accuracy(feats, labels, seed, engine=engine, device=device)
    # The key's digits (it is stated twice) in the most common needle position.
    start = int(np.bincount(starts).argmax())
    first, second = NEEDLE.split("{key}")[:2]
    digits = len(KEYS[0])
    at = [start + len(first), start + len(first) + digits + len(second)]
    key_blocks = sorted({(a + i) // bs for a in at for i in range(digits)})
    return {
        "accuracy": acc,
        "reached": reached(pattern, seq_len, key_blocks, acc.shape[0] - 1),
        "needle_block": key_blocks[0],
        # Before this block no document has a digit of its key: probes there are at chance.
        "earliest_key_block": int((starts.min() + len(first)) // bs),
        "key_blocks": key_blocks,
        "needle_starts": sorted({int(b) for b in starts}),
        "chance": 1.0 / len(KEYS),
        "documents": int(labels.size),
    }
