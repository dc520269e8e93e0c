"""The corpus builder, the BPE tokenizer and the language-modelling batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from powerattn.eval.bpe import DEFAULT_PATH, BPETokenizer, train_tokenizer
from powerattn.eval.corpus import build_corpus, read_documents, split_of
from powerattn.training.lm_data import lm_batch_fn


def test_split_by_hash_no_overlap_and_reproducible(tiny_corpus, tmp_path):
    m = json.loads((tiny_corpus / "manifest.json").read_text())
    train, test = set(m["ids"]["train"]), set(m["ids"]["test"])
    assert train and test and not train & test
    for split, ids in (("train", train), ("test", test)):
        docs = read_documents(tiny_corpus, split)
        assert {d["id"] for d in docs} == ids
        assert all(split_of(d["id"], 300) == split for d in docs)
    # Rebuilding gives the same documents on the same sides.
    again = build_corpus(tmp_path / "again", m["sources"], min_chars=2000, test_permille=300)
    assert again["ids"] == m["ids"]


def test_duplicates_short_and_binary_files_are_dropped(tmp_path, make_docs):
    src = make_docs(tmp_path / "src", n=4)
    (src / "copy.py").write_text((src / "doc0.py").read_text())  # same content
    (src / "short.txt").write_text("tiny")
    (src / "binary.txt").write_bytes(b"\x00" * 5000)
    m = build_corpus(tmp_path / "c", [str(src)], min_chars=2000, test_permille=500)
    assert m["documents"]["train"] + m["documents"]["test"] == 4


def test_bad_input_is_refused(tmp_path, make_docs):
    with pytest.raises(ValueError, match="neither 'python' nor a directory"):
        build_corpus(tmp_path / "c", [str(tmp_path / "missing")])
    with pytest.raises(ValueError, match="test_permille"):
        build_corpus(tmp_path / "c", ["python"], test_permille=0)
    src = make_docs(tmp_path / "one", n=1)
    with pytest.raises(ValueError, match="held-out"):
        build_corpus(tmp_path / "c", [str(src)], min_chars=2000, test_permille=1)
    with pytest.raises(ValueError, match="build the corpus first"):
        read_documents(tmp_path / "nowhere", "train")


def test_tokenizer_trains_and_round_trips(tiny_corpus, tmp_path):
    texts = [d["text"] for d in read_documents(tiny_corpus, "train")]
    tok = BPETokenizer(train_tokenizer(texts, tmp_path / "tok.json", vocab_size=300))
    assert tok.vocab_size == 300
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    sample = "def f(x):\n    return x  # é ü 中\n"
    ids = tok.encode(sample, bos=True)
    assert ids[0] == tok.bos_id and tok.decode(ids) == sample
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(texts, tmp_path / "t.json", vocab_size=10)


def test_committed_tokenizer():
    tok = BPETokenizer(DEFAULT_PATH)
    assert tok.vocab_size == 8192
    text = "import numpy as np\n\nclass Model:\n    def forward(self, x):\n        return x\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text) / 2.5  # a real BPE on code, not bytes


def test_lm_batches_are_a_function_of_seed_and_step():
    from powerattn.training.config import Stage, TrainConfig

    tokens = np.arange(10_000, dtype=np.uint16)
    fn = lm_batch_fn(tokens)
    cfg = TrainConfig(stages=[Stage(300, 5)], batch_size=3, seed=1, loss_on="all")
    a, b = fn(cfg, 2), fn(cfg, 2)
    assert a.shape == (3, 300) and a.dtype.is_floating_point is False
    assert (a == b).all() and not (a == fn(cfg, 3)).all()
    assert ((a[:, 1:] - a[:, :-1]) == 1).all()  # contiguous windows of the stream
    with pytest.raises(ValueError, match="shorter than one window"):
        lm_batch_fn(np.arange(100))(cfg, 0)
