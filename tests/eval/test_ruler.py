"""RULER-style generators (invariants at several lengths and tokenizers) and the scorer,
including an oracle model that must score 100 % and a wrong one that must score 0 %."""

from __future__ import annotations

import re
from collections import Counter

import pytest
import torch

from powerattn.eval import ruler
from powerattn.eval.bpe import BPETokenizer
from powerattn.training.tokenizer import ByteTokenizer

BPE = BPETokenizer()
P = ruler.TaskParams()


def _count(tok):
    return lambda text: len(tok.encode(text, bos=True))


@pytest.mark.parametrize("task", ruler.TASKS)
@pytest.mark.parametrize(("tok", "length"), [(BPE, 1024), (BPE, 4096), (ByteTokenizer(), 2048)])
def test_generator_fills_the_length_and_is_deterministic(task, tok, length):
    count = _count(tok)
    s = ruler.generate(task, length, 7, count)
    budget = length - ruler.GEN_TOKENS[task]
    assert count(s.prompt) <= budget
    assert count(s.prompt) >= 0.85 * budget  # filled, not just under the limit
    assert ruler.generate(task, length, 7, count) == s
    assert ruler.generate(task, length, 8, count) != s
    for a in s.answers:  # every reference is in the context (RULER's tasks are extractive)
        assert a in s.prompt


def test_niah_invariants():
    count = _count(BPE)
    s = ruler.generate("niah_single", 2048, 1, count)
    assert len(s.answers) == 1 and len(s.answers[0]) == P.value_digits
    # the header, the needle, twice in the question
    assert s.prompt.count("special magic number") == 4
    key = re.search(r"special magic number for (\w+) mentioned", s.prompt).group(1)
    assert s.prompt.count(f"One of the special magic numbers for {key} is: {s.answers[0]}.") == 1

    mk = ruler.generate("niah_multikey", 2048, 1, count)
    needles = re.findall(r"One of the special magic numbers for (\w+) is: (\d+)\.", mk.prompt)
    keys = [k for k, _ in needles]
    assert len(needles) > 20 and len(set(keys)) == len(keys)  # distinct distractor keys
    asked = re.search(r"special magic number for (\w+) mentioned", mk.prompt).group(1)
    assert dict(needles)[asked] == mk.answers[0]

    mv = ruler.generate("niah_multivalue", 2048, 1, count)
    assert len(mv.answers) == P.multivalue
    mq = ruler.generate("niah_multiquery", 2048, 1, count)
    assert len(mq.answers) == P.multiquery
    asked = re.search(r"numbers for ([\w, ]+) mentioned", mq.prompt).group(1).split(", ")
    found = dict(re.findall(r"numbers for (\w+) is: (\d+)\.", mq.prompt))
    assert [found[k] for k in asked] == list(mq.answers)


def test_vt_chain():
    s = ruler.generate("vt", 2048, 3, _count(BPE))
    assert len(s.answers) == P.vt_hops + 1
    value = re.search(r"assigned the value (\d+) in", s.prompt).group(1)
    assert f"VAR {s.answers[0]} = {value}." in s.prompt
    pos = [s.prompt.index(f"VAR {s.answers[0]} = {value}.")]
    for a, b in zip(s.answers, s.answers[1:], strict=False):
        pos.append(s.prompt.index(f"VAR {b} = VAR {a}."))
    assert pos == sorted(pos)  # each hop after the one it copies


def test_aggregation_answers_are_the_true_top_words():
    cwe = ruler.generate("cwe", 2048, 5, _count(BPE))
    listing = cwe.prompt.split("\n")[1]
    counts = Counter(re.findall(r"\d+\. (\w+)", listing))
    assert all(counts[w] == P.cwe_freq for w in cwe.answers)
    assert max(c for w, c in counts.items() if w not in cwe.answers) == P.cwe_rare_freq
    fwe = ruler.generate("fwe", 2048, 5, _count(BPE))
    counts = Counter(fwe.prompt.split("\n")[1].split(" ... "))
    top = [c for _, c in counts.most_common()]
    assert sorted(counts[w] for w in fwe.answers) == sorted(top[: P.fwe_top])
    assert min(counts[w] for w in fwe.answers) > top[P.fwe_top]  # unambiguous


def test_refusals():
    with pytest.raises(ValueError, match="task must be one of"):
        ruler.generate("qa", 1024, 0, _count(BPE))
    with pytest.raises(ValueError, match="too short"):
        ruler.generate("niah_single", 40, 0, _count(BPE))
    with pytest.raises(ValueError, match="at least one"):
        ruler.string_match_all("x", [])
    with pytest.raises(ValueError, match="unknown tasks"):
        ruler.evaluate_model(None, BPE, 512, tasks=["nope"])


def test_string_match_all():
    assert ruler.string_match_all("The numbers are 123 and 456.", ["123", "456"]) == 1.0
    assert ruler.string_match_all("only 123", ["123", "456"]) == 0.5
    assert ruler.string_match_all("KOL, ekq", ["kol", "EKQ", "ZZZ"]) == pytest.approx(2 / 3)
    assert ruler.string_match_all("", ["1"]) == 0.0
    cats = ruler.category_scores({"niah_single": 1.0, "niah_multikey": 0.5, "vt": 0.0})
    assert cats == {"retrieval": 0.75, "multi-hop": 0.0, "average": 0.5}


class _Lookup(torch.nn.Module):
    """A 'model' whose greedy generation is a fixed function of the prompt: the reference
    answer (oracle) or another sample's answer (wrong)."""

    def __init__(self, samples, tok, wrong: bool):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok = tok
        answers = [s.answer_text for s in samples]
        if wrong:  # a wrong but well-formed answer: numbers/words of no reference
            answers = [" 000000, QQQ, zzzzzz." for _ in samples]
        self.table = {s.prompt: a for s, a in zip(samples, answers, strict=True)}

    def generate(self, ids, max_new_tokens, **kwargs):
        prompt = self.tok.decode(ids[0].tolist())
        new = self.tok.encode(self.table[prompt])[:max_new_tokens]
        return torch.cat([ids, torch.tensor([new])], dim=1)


@pytest.mark.parametrize("wrong", [False, True])
def test_oracle_scores_100_and_wrong_scores_0(wrong):
    samples = ruler.make_samples(list(ruler.TASKS), 1024, 2, 0, BPE, P)
    model = _Lookup(samples, BPE, wrong)
    res = ruler.evaluate_model(model, BPE, 1024, samples=2)
    expect = 0.0 if wrong else 1.0
    assert res["scores"] == {t: expect for t in ruler.TASKS}
    assert res["categories"]["average"] == expect
    assert "average" in ruler.table({"m": {**res["scores"], **res["categories"]}})


def test_training_documents_put_the_answer_last():
    from powerattn.training.config import Stage, TaskConfig, TrainConfig

    cfg = TrainConfig(stages=[Stage(1024, 3)], batch_size=7, seed=0, task=TaskConfig(digits=18))
    fn = ruler.training_batch_fn(BPE)
    ids = fn(cfg, 0)
    assert ids.shape == (7, 1024) and (ids == fn(cfg, 0)).all()
    for row in ids.tolist():
        tail = BPE.decode(row[-18:])
        assert tail.endswith(".") and row[-1] == BPE.eos_id
        assert BPE.bos_id in row[: 1024 - 18]
