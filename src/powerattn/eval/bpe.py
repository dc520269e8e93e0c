"""A byte-level BPE tokenizer (Hugging Face ``tokenizers``) trained on the corpus.

The committed ``tokenizer.json`` next to this file (8192 tokens) was trained by
``powerattn eval tokenizer`` on the training split of a corpus of Python sources (see
docs/evaluation.md for the exact command). Ids 0, 1, 2 are ``<pad>``, ``<bos>``, ``<eos>``.
Byte-level: every string encodes (no unknown token) and decodes back exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

DEFAULT_PATH = Path(__file__).with_name("tokenizer.json")
SPECIALS = ("<pad>", "<bos>", "<eos>")


class BPETokenizer:
    """A trained ``tokenizers.Tokenizer`` with the interface of
    :class:`powerattn.training.ByteTokenizer` (``vocab_size``, ``pad_id``, ``bos_id``,
    ``eos_id``, ``encode``, ``decode``), so :func:`powerattn.training.model.build_model`
    takes it."""

    def __init__(self, path: str | Path = DEFAULT_PATH) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise ValueError(
                f"tokenizer file {path} does not exist; train one: powerattn eval tokenizer "
                "--corpus CORPUS --out PATH"
            )
        self.path = path
        self._tok = Tokenizer.from_file(str(path))
        ids = [self._tok.token_to_id(s) for s in SPECIALS]
        if None in ids:
            raise ValueError(f"{path} lacks the special tokens {SPECIALS}")
        self.pad_id, self.bos_id, self.eos_id = ids

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """Token ids of ``text``, optionally after ``bos``."""
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if bos else ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (in parallel, in Rust)."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens are dropped."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


def train_tokenizer(texts: Iterable[str], out_path: str | Path, vocab_size: int = 8192) -> Path:
    """Train a byte-level BPE of ``vocab_size`` tokens (specials included) on ``texts`` and
    save it as JSON at ``out_path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 256 + len(SPECIALS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIALS)}, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_path))
    return out_path
