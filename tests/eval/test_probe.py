"""Probing: the documents, the two probe engines (they agree, and find information exactly
where it is), and the theory's reach mask."""

from __future__ import annotations

import numpy as np
import pytest

from powerattn.eval import probe
from powerattn.patterns import equal_budget, get_pattern
from powerattn.receptive import hop_matrix
from powerattn.tasks.passkey import HEADER, NEEDLE, QUESTION


def test_documents():
    ids, labels, starts = probe.probe_documents(640, per_key=3, depth=0.1, seed=1)
    assert ids.shape == (18, 640) and np.bincount(labels).tolist() == [3] * 6
    for row, label, start in zip(ids.tolist(), labels, starts, strict=True):
        text = bytes(row[1:]).decode()
        needle = NEEDLE.format(key=probe.KEYS[label])
        assert text.index(needle) == start - 1  # start counts the <bos>
        hay = 640 - (1 + len(HEADER) + 1 + len(needle) + 1 + 1 + len(QUESTION))
        at = start - (1 + len(HEADER) + 1)  # the needle's offset in the haystack
        assert abs(at - 0.1 * hay) <= 25  # the nearest sentence start to 10 % depth
    again = probe.probe_documents(640, per_key=3, depth=0.1, seed=1)[0]
    assert (again == ids).all()
    assert len({tuple(r) for r in ids[labels == 0].tolist()}) > 1  # the haystacks vary
    with pytest.raises(ValueError, match="seq_len must be at least"):
        probe.probe_documents(200, per_key=1)


def _synthetic(seed=0, n_per=20, layers=3, blocks=5, hidden=16):
    """Features where only (layer 2, block 3) carries the label, plus noise everywhere."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(6), n_per)
    x = rng.normal(size=(layers, labels.size, blocks, hidden))
    centres = rng.normal(size=(6, hidden)) * 3
    x[2, :, 3] += centres[labels]  # (layer 2, block 3): the signal
    return x, labels


@pytest.mark.parametrize("engine", ["torch", "sklearn"])
def test_probes_find_information_where_it_is(engine):
    if engine == "sklearn":
        pytest.importorskip("sklearn")
    x, labels = _synthetic()
    acc = probe.probe_accuracy(x, labels, seed=0, engine=engine)
    assert acc.shape == (3, 5)
    assert acc[2, 3] >= 0.95
    noise = np.delete(acc.ravel(), 2 * 5 + 3)
    assert noise.max() <= 0.5 and abs(noise.mean() - 1 / 6) < 0.1


def test_engines_agree():
    pytest.importorskip("sklearn")
    rng = np.random.default_rng(3)
    x, labels = _synthetic(seed=3, layers=3, blocks=4)
    x[:, :, :, :4] += rng.normal(size=(6, 4))[labels][None, :, None, :] * 0.7  # weak signal
    a = probe.probe_accuracy(x, labels, seed=1, engine="torch")
    b = probe.probe_accuracy(x, labels, seed=1, engine="sklearn")
    assert np.abs(a - b).max() <= 2 / 60 + 1e-9  # at most two test documents of 60 differ


def test_refusals():
    x, labels = _synthetic()
    with pytest.raises(ValueError, match="engine"):
        probe.probe_accuracy(x, labels, engine="svm")
    with pytest.raises(ValueError, match="two documents"):
        probe.probe_accuracy(x[:, :2], labels[:2])


@pytest.mark.parametrize("name", ["power", "sliding_window", "full"])
def test_reached_follows_the_hop_matrix(name):
    pat = get_pattern("full", block_size=32) if name == "full" else equal_budget(2048, 32)[name]
    r = probe.reached(pat, 2048, needle_block=6, layers=6)
    assert r.shape == (7, 64)
    assert r[0].tolist() == [b == 6 for b in range(64)]  # embeddings: the needle's block only
    assert (r[1:] >= r[:-1]).all() and not r[:, :6].any()  # grows; never before the needle
    h = hop_matrix(pat, 2048)[:, 6]
    assert r[3].tolist() == [0 <= v <= 3 for v in h]
    if name == "full":
        assert r[1, 6:].all()


def test_reached_from_several_key_blocks():
    pat = equal_budget(2048, 32)["sliding_window"]
    both = probe.reached(pat, 2048, needle_block=[6, 7], layers=3)
    assert (
        both.tolist() == (probe.reached(pat, 2048, 6, 3) | probe.reached(pat, 2048, 7, 3)).tolist()
    )
    assert both[0].sum() == 2
