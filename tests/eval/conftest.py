"""A tiny corpus of synthetic documents (content fixed here, so its hash split is too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

WORDS = ["def", "return", "self", "value", "import", "class", "for", "in", "if", "else", "x"]


def write_docs(root: Path, n: int = 12, words: int = 900) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        body = " ".join(rng.choice(WORDS + ["(", ")", ":", "\n", "    "], size=words))
        (root / f"doc{i}.py").write_text(f"# document {i}\n{body}\n")
    return root


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    from powerattn.eval.corpus import build_corpus

    base = tmp_path_factory.mktemp("corpus")
    build_corpus(
        base / "corpus", [str(write_docs(base / "src"))], min_chars=2000, test_permille=300
    )
    return base / "corpus"


@pytest.fixture
def make_docs():
    """``write_docs(root, n=12, words=900)``: synthetic documents in ``root``."""
    return write_docs
