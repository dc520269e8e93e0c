"""A RULER-style synthetic long-context suite (Table 2), generated offline at any length.

Seven tasks in RULER's three categories, following RULER's templates scaled down for small
models (fewer values per needle, shorter answers; :class:`TaskParams`):

* retrieval (NIAH): ``niah_single`` (one needle in the noise haystack), ``niah_multikey`` (the
  haystack is made of needle-like distractors with other keys), ``niah_multivalue`` (one key,
  several values: all must be returned), ``niah_multiquery`` (several keys asked at once);
* multi-hop tracing: ``vt`` (variable tracking: ``VAR B = VAR A`` chains, find every variable
  holding a value);
* aggregation: ``cwe`` (common words in a numbered list), ``fwe`` (most frequent words of a
  Zipf-distributed coded text).

A sample is a prompt that ends where the answer starts, and its reference answers. It is a
pure function of ``(task, length, seed, tokenizer)``: the filler size is the largest for which
the prompt takes at most ``length - gen_tokens`` tokens, bisected with the tokenizer (one random
stream per (seed, task), whose haystack grows with the size). Keys and words are pronounceable
pseudo-words from a fixed syllable list (nothing to download).

Scoring is RULER's ``string_match_all``: a prediction scores the fraction of its references
that occur in it as substrings, case-insensitively; a task's score is the mean over samples.
:func:`evaluate_model` generates greedily with any causal LM of ``transformers`` (ours or a
local checkpoint) and its tokenizer; :func:`training_batch_fn` makes training documents of the
mixture for :class:`powerattn.training.Trainer` (answer-only loss).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..tasks.passkey import FILLER

TASKS = (
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "vt",
    "cwe",
    "fwe",
)
CATEGORIES = {
    "retrieval": ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery"),
    "multi-hop": ("vt",),
    "aggregation": ("cwe", "fwe"),
}
_TASK_ID = {t: i for i, t in enumerate(TASKS)}


@dataclass(frozen=True)
class TaskParams:
    """Sizes of the tasks (RULER's defaults in brackets)."""

    value_digits: int = 6  # [7]
    multivalue: int = 2  # values of the one key of niah_multivalue [4]
    multiquery: int = 2  # keys asked in niah_multiquery [4]
    vt_hops: int = 3  # assignments after the first: answers = hops + 1 variables [4]
    cwe_common: int = 3  # common words asked for [10]
    cwe_freq: int = 12  # repetitions of each common word [30]
    cwe_rare_freq: int = 2  # repetitions of each other word [3]
    fwe_top: int = 3  # [3]
    fwe_alpha: float = 2.0  # Zipf exponent [2.0]


# Tokens left for the answer (generation budget and room after the prompt).
GEN_TOKENS = {
    "niah_single": 16,
    "niah_multikey": 16,
    "niah_multivalue": 32,
    "niah_multiquery": 32,
    "vt": 32,
    "cwe": 32,
    "fwe": 24,
}

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def _word_list() -> list[str]:
    rng = np.random.default_rng(0x5EED)
    words: list[str] = []
    seen = set()
    while len(words) < 16000:
        w = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


WORDS = _word_list()


@dataclass(frozen=True)
class Sample:
    """One prompt (ends where the answer begins) and its reference answers."""

    task: str
    prompt: str
    answers: tuple[str, ...]
    size: int  # the filler size the length search chose

    @property
    def answer_text(self) -> str:
        """The answer a perfect model would write after the prompt."""
        return " " + ", ".join(self.answers) + "."


# ---------------------------------------------------------------------------- generators


def _value(rng: np.random.Generator, p: TaskParams) -> str:
    return str(int(rng.integers(10 ** (p.value_digits - 1), 10**p.value_digits)))


def _needle(key: str, value: str) -> str:
    return f"One of the special magic numbers for {key} is: {value}."


def _word_order(rng: np.random.Generator) -> list[str]:
    """All of :data:`WORDS` in a random order: the first ``n`` are ``n`` distinct words, and a
    longer haystack extends a shorter one's words instead of redrawing them."""
    return [WORDS[i] for i in rng.permutation(len(WORDS))]


def _insert(units: list[str], items: list[str], depths: np.ndarray) -> list[str]:
    """``units`` with ``items`` inserted at fractions ``depths`` of their length (sorted
    insertion points, ``items``' order kept)."""
    pos = np.sort(np.floor(depths * (len(units) + 1)).astype(int))
    out, prev = [], 0
    for q, item in zip(pos, items, strict=True):
        out.extend(units[prev:q])
        out.append(item)
        prev = q
    out.extend(units[prev:])
    return out


_NIAH_HEAD = (
    "Some special magic numbers are hidden within the following text. Make sure to memorize "
    "it. I will quiz you about the numbers afterwards.\n"
)

# Every generator draws its size-independent choices first and its size-dependent ones last,
# from one stream per (seed, task): the haystack of size n + 1 extends that of size n, so the
# prompt's length grows with the size and the length search is a bisection.


def _niah(task: str, size: int, rng: np.random.Generator, p: TaskParams) -> tuple[str, list[str]]:
    n_keys = p.multiquery if task == "niah_multiquery" else 1
    n_vals = p.multivalue if task == "niah_multivalue" else 1
    words = _word_order(rng)
    asked = words[:n_keys]
    needles, answers = [], []
    for k in asked:
        for _ in range(n_vals):
            v = _value(rng, p)
            needles.append(_needle(k, v))
            answers.append(v)
    depths = rng.random(len(needles))
    order = rng.permutation(len(needles))
    if task == "niah_multikey":  # the haystack: needles of other keys
        if n_keys + size > len(words):
            raise ValueError(f"niah_multikey: at most {len(words) - n_keys} distractors")
        units = [_needle(k, _value(rng, p)) for k in words[n_keys : n_keys + size]]
    else:
        units = [FILLER] * size
    text = " ".join(_insert(units, [needles[i] for i in order], depths))
    if task in ("niah_single", "niah_multikey"):
        q = (
            f"What is the special magic number for {asked[0]} mentioned in the provided text? "
            f"The special magic number for {asked[0]} mentioned in the provided text is"
        )
    elif task == "niah_multivalue":
        q = (
            f"What are all the special magic numbers for {asked[0]} mentioned in the provided "
            f"text? The special magic numbers for {asked[0]} mentioned in the provided text are"
        )
    else:
        ks = ", ".join(asked)
        q = (
            f"What are all the special magic numbers for {ks} mentioned in the provided text? "
            f"The special magic numbers for {ks} mentioned in the provided text are"
        )
    return _NIAH_HEAD + text + "\n" + q, answers


def _vt(size: int, rng: np.random.Generator, p: TaskParams) -> tuple[str, list[str]]:
    letters = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    names: list[str] = []
    while len(names) < p.vt_hops + 1:
        n = "".join(rng.choice(letters, size=3))
        if n not in names:
            names.append(n)
    value = _value(rng, p)
    chain = [f"VAR {names[0]} = {value}."] + [
        f"VAR {names[i + 1]} = VAR {names[i]}." for i in range(p.vt_hops)
    ]
    text = " ".join(_insert([FILLER] * size, chain, rng.random(len(chain))))
    head = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
    q = (
        f"Question: Find all variables that are assigned the value {value} in the text above. "
        f"Answer: According to the chain(s) of variable assignment in the text above, "
        f"{len(names)} variables are assigned the value {value}, they are:"
    )
    return head + text + "\n" + q, names


def _cwe(size: int, rng: np.random.Generator, p: TaskParams) -> tuple[str, list[str]]:
    words = _word_order(rng)
    if p.cwe_common + size > len(words):
        raise ValueError(f"cwe: at most {len(words) - p.cwe_common} other words")
    common, rare = words[: p.cwe_common], words[p.cwe_common : p.cwe_common + size]
    items = common * p.cwe_freq + rare * p.cwe_rare_freq
    items = [items[i] for i in rng.permutation(len(items))]
    listing = " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))
    head = (
        "Below is a numbered list of words. In these words, some appear more often than "
        "others. Memorize the ones that appear most often.\n"
    )
    q = (
        f"Question: What are the {p.cwe_common} most common words in the above list? "
        f"Answer: The top {p.cwe_common} words appearing in the above list are:"
    )
    return head + listing + "\n" + q, common


def _fwe(size: int, rng: np.random.Generator, p: TaskParams) -> tuple[str, list[str]]:
    vocab = _word_order(rng)[:200]
    ranks = list(np.minimum(rng.zipf(p.fwe_alpha, size=size + p.fwe_top), len(vocab)) - 1)
    counts = np.bincount(ranks, minlength=len(vocab))
    top = np.argsort(-counts, kind="stable")
    while counts[top[p.fwe_top - 1]] == counts[top[p.fwe_top]]:  # a tie at the cut
        ranks.append(int(top[p.fwe_top - 1]))  # one more occurrence settles it
        counts[top[p.fwe_top - 1]] += 1
        top = np.argsort(-counts, kind="stable")
    text = " ... ".join(vocab[r] for r in ranks)
    head = (
        "Read the following coded text and track the frequency of each coded word. Find the "
        f"{p.fwe_top} most frequently appeared coded words.\n"
    )
    q = (
        f"Question: Do not provide any explanation. Please ignore the dots '....'. What are "
        f"the {p.fwe_top} most frequently appeared words in the above coded text? Answer: "
        f"According to the coded text above, the {p.fwe_top} most frequently appeared words are:"
    )
    return head + text + "\n" + q, [vocab[i] for i in top[: p.fwe_top]]


def _build(task: str, size: int, seed: int, p: TaskParams) -> tuple[str, list[str]]:
    rng = np.random.default_rng([seed, _TASK_ID[task], 0x2A1E])
    if task.startswith("niah"):
        return _niah(task, size, rng, p)
    return {"vt": _vt, "cwe": _cwe, "fwe": _fwe}[task](size, rng, p)


def generate(
    task: str,
    length: int,
    seed: int,
    count_tokens: Callable[[str], int],
    params: TaskParams = TaskParams(),
    size_hint: int | None = None,
) -> Sample:
    """The sample of ``task`` for ``seed`` whose prompt fills ``length`` tokens minus the
    answer's budget (``GEN_TOKENS[task]``) as closely as the filler's granularity allows.

    Args:
        count_tokens: number of tokens of a text for the model's tokenizer (with any BOS).
        size_hint: a filler size to take if it fits (one tokenization instead of a search;
            training data uses the size found for another seed at the same length).
    """
    if task not in _TASK_ID:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    budget = length - GEN_TOKENS[task]

    def fits(size: int) -> bool:
        return count_tokens(_build(task, size, seed, params)[0]) <= budget

    if size_hint is not None and fits(size_hint):
        prompt, answers = _build(task, size_hint, seed, params)
        return Sample(task, prompt, tuple(answers), size_hint)
    if not fits(0):
        raise ValueError(
            f"{task}: length {length} is too short for even an empty haystack; use a longer length"
        )
    lo, hi = 0, 1
    while fits(hi):  # gallop, then bisect: lo fits, hi does not
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    prompt, answers = _build(task, lo, seed, params)
    return Sample(task, prompt, tuple(answers), lo)


# ---------------------------------------------------------------------------- scoring


def string_match_all(prediction: str, references: list[str] | tuple[str, ...]) -> float:
    """RULER's metric: the fraction of ``references`` found in ``prediction``
    (case-insensitive substring match)."""
    if not references:
        raise ValueError("references must hold at least one answer")
    pred = prediction.lower()
    return sum(r.lower() in pred for r in references) / len(references)


def score(samples: list[Sample], predictions: list[str]) -> dict[str, float]:
    """Mean :func:`string_match_all` per task, in [0, 1]."""
    if len(samples) != len(predictions):
        raise ValueError(f"{len(samples)} samples but {len(predictions)} predictions")
    by_task: dict[str, list[float]] = {}
    for s, pred in zip(samples, predictions, strict=True):
        by_task.setdefault(s.task, []).append(string_match_all(pred, s.answers))
    return {t: float(np.mean(v)) for t, v in by_task.items()}


def category_scores(task_scores: dict[str, float]) -> dict[str, float]:
    """Mean over the tasks of each category present, and ``"average"`` over all tasks."""
    out = {
        c: float(np.mean([task_scores[t] for t in ts if t in task_scores]))
        for c, ts in CATEGORIES.items()
        if any(t in task_scores for t in ts)
    }
    out["average"] = float(np.mean(list(task_scores.values())))
    return out


def table(rows: dict[str, dict[str, float]]) -> str:
    """Scores x 100 per model (rows) and task/category/average (columns), like the paper's."""
    tasks = [t for t in TASKS if any(t in r for r in rows.values())]
    cats = [c for c in (*CATEGORIES, "average") if any(c in r for r in rows.values())]
    cols = tasks + cats
    short = {t: t.replace("niah_", "") for t in TASKS}
    head = f"{'model':<26}" + "".join(f"{short.get(c, c)[:11]:>12}" for c in cols)
    lines = [head]
    for name, r in rows.items():
        lines.append(
            f"{name:<26}"
            + "".join(f"{100 * r[c]:>12.1f}" if c in r else f"{'-':>12}" for c in cols)
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- models


class _HFTok:
    """The encode/decode/eos of a ``transformers`` tokenizer, as our tokenizers have them."""

    def __init__(self, tok: Any) -> None:
        self._tok = tok
        self.eos_id = tok.eos_token_id

    def encode(self, text: str, bos: bool = False) -> list[int]:
        return self._tok(text, add_special_tokens=bos).input_ids

    def decode(self, ids) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


def as_tokenizer(tok: Any) -> Any:
    """Our tokenizers as they are; a ``transformers`` tokenizer wrapped (``encode(text,
    bos)``, ``decode(ids)``, ``eos_id``)."""
    return tok if hasattr(tok, "eos_id") else _HFTok(tok)


def make_samples(
    tasks: list[str], length: int, samples: int, seed: int, tokenizer: Any, params: TaskParams
) -> list[Sample]:
    """``samples`` samples of each task (seeds ``seed * 100003 + i``)."""
    tok = as_tokenizer(tokenizer)

    def count(text: str) -> int:
        return len(tok.encode(text, bos=True))

    return [
        generate(t, length, seed * 100003 + i, count, params) for t in tasks for i in range(samples)
    ]


@torch.no_grad()
def predict(model: torch.nn.Module, tokenizer: Any, samples: list[Sample]) -> list[str]:
    """Greedy continuations (``GEN_TOKENS[task]`` new tokens at most, stopping at EOS) of each
    sample's prompt, one at a time (no padding)."""
    tok = as_tokenizer(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for s in samples:
        ids = torch.tensor([tok.encode(s.prompt, bos=True)], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            gen = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=GEN_TOKENS[s.task],
                do_sample=False,
                eos_token_id=tok.eos_id,
                pad_token_id=tok.eos_id,
            )
        out.append(tok.decode(gen[0, ids.shape[1] :].tolist()))
    model.train(was_training)
    return out


def check_tasks(tasks: Sequence[str] | None) -> list[str]:
    """``tasks`` as a list (``None`` or empty: all of :data:`TASKS`); a name not in
    :data:`TASKS` raises ``ValueError`` naming the valid ones."""
    tasks = list(tasks or TASKS)
    bad = sorted(set(tasks) - set(TASKS))
    if bad:
        raise ValueError(f"unknown tasks {bad}; choose from {', '.join(TASKS)}")
    return tasks


def evaluate_model(
    model: torch.nn.Module,
    tokenizer: Any,
    length: int,
    tasks: list[str] | None = None,
    samples: int = 10,
    seed: int = 0,
    params: TaskParams = TaskParams(),
) -> dict[str, Any]:
    """Generate, predict and score: ``{"scores": {task: score}, "categories": {...},
    "predictions": [{"task", "answers", "prediction", "score"}]}`` (scores in [0, 1])."""
    tasks = check_tasks(tasks)
    batch = make_samples(tasks, length, samples, seed, tokenizer, params)
    preds = predict(model, tokenizer, batch)
    scores = score(batch, preds)
    return {
        "length": length,
        "scores": scores,
        "categories": category_scores(scores),
        "predictions": [
            {
                "task": s.task,
                "answers": list(s.answers),
                "prediction": p,
                "score": string_match_all(p, s.answers),
            }
            for s, p in zip(batch, preds, strict=True)
        ],
    }


# ---------------------------------------------------------------------------- training


def training_document(sample: Sample, tokenizer: Any, length: int, answer_tokens: int) -> list[int]:
    """``length`` token ids: padding, ``<bos>``, the prompt, then exactly ``answer_tokens``
    tokens of answer followed by EOS (repeated), so that every document of a batch has its
    answer in the same last positions (the trainer's answer-only loss)."""
    tok = as_tokenizer(tokenizer)
    prompt = tok.encode(sample.prompt, bos=True)
    answer = tok.encode(sample.answer_text) + [tok.eos_id]
    if len(answer) > answer_tokens:
        raise ValueError(
            f"{sample.task}: the answer takes {len(answer)} tokens, more than answer_tokens "
            f"({answer_tokens}); use smaller TaskParams"
        )
    answer += [tok.eos_id] * (answer_tokens - len(answer))
    pad = length - len(prompt) - answer_tokens
    if pad < 0:
        raise ValueError(f"{sample.task}: prompt of {len(prompt)} tokens exceeds the length")
    return [tok.pad_id] * pad + prompt + answer


def training_batch_fn(
    tokenizer: Any,
    tasks: list[str] | None = None,
    params: TaskParams = TaskParams(),
    length: int | None = None,
) -> Callable[[Any, int], torch.Tensor]:
    """``batch_fn(cfg, step)`` for :class:`powerattn.training.Trainer` with
    ``loss_on="answer"`` and ``cfg.task.digits`` answer tokens: ``cfg.batch_size`` documents of
    the task mixture (task of row ``i``: drawn uniformly from ``(seed, step, i)``), samples
    seeded apart from evaluation's (which uses seeds below 100003 * seeds)."""
    tasks = check_tasks(tasks)
    tok = as_tokenizer(tokenizer)

    def count(text: str) -> int:
        return len(tok.encode(text, bos=True))

    hints: dict[tuple[str, int], int] = {}  # (task, length) -> the filler size of seed 0

    def batch(cfg: Any, step: int) -> torch.Tensor:
        from ..training.data import seq_len_for_step

        L = length or seq_len_for_step(cfg, step)
        rows = []
        for i in range(cfg.batch_size):
            rng = np.random.default_rng([cfg.seed, 0x7A5C, step, i])
            task = tasks[int(rng.integers(len(tasks)))]
            seed = int(rng.integers(2**40, 2**41))
            # Room for the answer block: the generator keeps GEN_TOKENS[task] free.
            budget = L - max(0, cfg.task.digits - GEN_TOKENS[task])
            if (task, budget) not in hints:
                hints[task, budget] = generate(task, budget, 0, count, params).size
            for attempt in range(100):  # the rare answer longer than the block: redraw
                s = generate(task, budget, seed + attempt, count, params, hints[task, budget])
                if len(tok.encode(s.answer_text)) < cfg.task.digits:  # + EOS fits
                    break
            rows.append(training_document(s, tok, L, cfg.task.digits))
        return torch.tensor(rows, dtype=torch.int64)

    return batch
