"""Passkey retrieval in the Landmark Attention / LongLoRA format, generated offline.

A document of exactly ``seq_len`` byte tokens::

    <bos>HEADER hay[:a]NEEDLE hay[a:] QUESTION KEY

* HEADER: "There is an important info hidden inside a lot of irrelevant text. ..."
* hay: the filler "The grass is green. The sky is blue. ..." repeated and cut to the length
  that makes the document exactly ``seq_len`` tokens long;
* NEEDLE: "The pass key is KEY. Remember it. KEY is the pass key." inserted at the sentence
  start ``a`` nearest to ``depth * len(hay)`` (depth 0 = right after the header, depth 1 =
  before the last sentence of the haystack, i.e. just before the question);
* QUESTION: "What is the pass key? The pass key is", then " KEY" -- the answer, always the
  last ``digits`` tokens, so every document of a batch has its answer at the same positions.

Everything is a function of a ``numpy.random.Generator``: same seed, same documents.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..validate import check_int
from .tokenizer import ByteTokenizer

HEADER = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the important information there."
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"

_TOKENIZER = ByteTokenizer()
_UNIT = FILLER + " "
# Offsets of the sentence starts inside one filler unit.
_SENTENCE_STARTS = [0] + [i + 2 for i in range(len(_UNIT) - 2) if _UNIT[i : i + 2] == ". "]


def fixed_length(digits: int) -> int:
    """Tokens of a document that are not haystack: bos, header, needle, question, answer."""
    key = "0" * digits
    return (
        1
        + len(HEADER) + 1
        + len(NEEDLE.format(key=key)) + 1
        + 1 + len(QUESTION) + 1 + digits
    )  # fmt: skip


def min_length(digits: int = 5) -> int:
    """The shortest ``seq_len`` a passkey document can have (an empty haystack)."""
    return fixed_length(digits)


@dataclass(frozen=True)
class PasskeyBatch:
    """A batch of passkey documents.

    Attributes:
        input_ids: ``(B, S)`` int64 token ids; the answer is the last ``digits`` tokens.
        keys: the ``B`` passkeys as strings of ``digits`` digits.
        depths: ``(B,)`` float64, the needle's actual depth in the haystack (0..1).
        key_positions: ``(B, 2, digits)`` int64 token positions of the key's digits inside
            the needle (it states the key twice).
        digits: number of digits of every key.
    """

    input_ids: torch.Tensor
    keys: list[str]
    depths: np.ndarray
    key_positions: np.ndarray
    digits: int

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def answer_ids(self) -> torch.Tensor:
        """``(B, digits)`` int64: the answer tokens (the key's digits as bytes)."""
        return self.input_ids[:, -self.digits :]


def _haystack(length: int) -> str:
    reps = length // len(_UNIT) + 1
    return (_UNIT * reps)[:length]


def _snap(pos: float, length: int) -> int:
    """The sentence start in ``[0, length]`` nearest to ``pos``."""
    starts = np.array([u + s for u in range(0, length + 1, len(_UNIT)) for s in _SENTENCE_STARTS])
    starts = starts[starts <= length]
    return int(starts[np.argmin(np.abs(starts - pos))])


def make_document(seq_len: int, key: str, depth: float) -> tuple[list[int], int, float]:
    """One document: ``(token ids, index of the needle's first token, actual depth)``."""
    digits = len(key)
    hay_len = seq_len - fixed_length(digits)
    if hay_len < 0:
        raise ValueError(
            f"seq_len ({seq_len}) is shorter than a passkey document with an empty haystack "
            f"({fixed_length(digits)} tokens for {digits} digits)"
        )
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth!r}")
    hay = _haystack(hay_len)
    a = _snap(depth * hay_len, hay_len)
    head = HEADER + " " + hay[:a]
    text = head + NEEDLE.format(key=key) + " " + hay[a:] + " " + QUESTION + " " + key
    ids = _TOKENIZER.encode(text, bos=True)
    assert len(ids) == seq_len, (len(ids), seq_len)
    return ids, 1 + len(head), (a / hay_len if hay_len else 0.0)


# One key in HELDOUT_EVERY is held out (see is_heldout_key).
HELDOUT_EVERY = 8
_KEY_SETS = ("any", "train", "heldout")


def is_heldout_key(keys: np.ndarray) -> np.ndarray:
    """Whether each key belongs to the held-out set (about 1 key in :data:`HELDOUT_EVERY`):
    evaluation draws its keys there and training (with ``keys="train"``) never does.

    Membership is a multiplicative hash of the key (the top 3 bits of ``key x 2^64/phi``
    mod 2^64 are zero), not a digit rule a model could pick up, so both sets cover every
    digit at every position."""
    k = np.asarray(keys).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = k * np.uint64(0x9E3779B97F4A7C15)  # wraps mod 2^64
    return (h >> np.uint64(61)) == 0


def _draw_keys(rng: np.random.Generator, n: int, digits: int, keys: str) -> np.ndarray:
    """``n`` random ``digits``-digit keys from the set ``keys`` (any, train or heldout),
    by rejection (a pure function of ``rng``'s state)."""
    out = rng.integers(10 ** (digits - 1), 10**digits, size=n)
    if keys == "any":
        return out
    want = keys == "heldout"
    bad = is_heldout_key(out) != want
    while bad.any():
        out[bad] = rng.integers(10 ** (digits - 1), 10**digits, size=int(bad.sum()))
        bad = is_heldout_key(out) != want
    return out


def passkey_batch(
    seq_len: int,
    batch_size: int,
    rng: np.random.Generator,
    digits: int = 5,
    depths: np.ndarray | list[float] | None = None,
    keys: str = "any",
) -> PasskeyBatch:
    """``batch_size`` documents of ``seq_len`` tokens with random ``digits``-digit keys.

    Args:
        seq_len: tokens per document (at least :func:`min_length`).
        batch_size: number of documents.
        rng: the source of randomness (keys, and depths when not given).
        digits: digits per key (1..18); the first digit is never 0.
        depths: needle depths in [0, 1], one per document; uniform at random if None.
        keys: which keys to draw: ``"any"``; ``"train"``, none of the held-out set
            (:func:`is_heldout_key`); ``"heldout"``, only those (for evaluation).
    """
    if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 18:
        raise ValueError(f"digits must be an integer in 1..18, got {digits!r}")
    check_int("batch_size", batch_size)
    if keys not in _KEY_SETS:
        raise ValueError(f"keys must be one of {_KEY_SETS}, got {keys!r}")
    keys = _draw_keys(rng, batch_size, digits, keys)
    if depths is None:
        depths = rng.random(batch_size)
    depths = np.asarray(depths, dtype=np.float64)
    if depths.shape != (batch_size,):
        raise ValueError(f"depths must have batch_size ({batch_size}) entries, got {depths.shape}")
    ids, actual, pos = [], [], []
    offset = len("The pass key is ")
    second = len(NEEDLE.split("{key}")[0]) + digits + len(NEEDLE.split("{key}")[1])
    for key, depth in zip(keys, depths, strict=True):
        doc, needle, d = make_document(seq_len, str(int(key)), float(depth))
        ids.append(doc)
        actual.append(d)
        pos.append([needle + offset + np.arange(digits), needle + second + np.arange(digits)])
    return PasskeyBatch(
        input_ids=torch.tensor(ids, dtype=torch.int64),
        keys=[str(int(k)) for k in keys],
        depths=np.array(actual),
        key_positions=np.array(pos, dtype=np.int64),
        digits=digits,
    )


def exact_match(predicted: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
    """``(B,)`` bool: every predicted answer token equals the reference.

    Args:
        predicted, answer: ``(B, digits)`` integer token ids.
    """
    if predicted.shape != answer.shape:
        raise ValueError(
            f"predicted has shape {tuple(predicted.shape)}, answer {tuple(answer.shape)}; "
            "they must match"
        )
    return (predicted == answer).all(dim=-1)
