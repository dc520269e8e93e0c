"""scripts/corpus_longrange.py on synthetic windows whose answer is known by construction."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "corpus_longrange.py"
C, START, CUT = 4096, 3072, 2048


@pytest.fixture(scope="module")
def clr() -> ModuleType:
    spec = importlib.util.spec_from_file_location("corpus_longrange", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def background() -> np.ndarray:
    """A window of distinct tokens: no n-gram (n >= 1) repeats, no token repeats."""
    return np.arange(100, 100 + C, dtype=np.int64)


PHRASE = np.arange(10_000, 10_017, dtype=np.int64)  # 16 tokens + the token that follows


def test_far_only_phrase(clr: ModuleType) -> None:
    """A 17-token phrase at 500 and again in the late region: its continuation tokens are
    far-only for every n <= 16 (and no other late token has any opportunity)."""
    x = background()
    x[500:517] = PHRASE
    x[3500:3517] = PHRASE
    out = clr.classify_window(x, (4, 8, 16), START, CUT)
    for n in (4, 8, 16):
        code = out[str(n)]
        # Predicted position p (index p - START) copies iff x[p-n..p] lies inside the phrase.
        expect = np.zeros(C - START, dtype=np.int8)
        expect[3500 + n - START : 3517 - START] = clr.FAR_ONLY
        np.testing.assert_array_equal(code, expect)
        assert (code == clr.NEAR).sum() == 0
    # Every phrase token is seen far back only: far-only vocabulary at 3500..3516.
    vocab = np.zeros(C - START, dtype=bool)
    vocab[3500 - START : 3517 - START] = True
    np.testing.assert_array_equal(out["far_vocab"], vocab)


def test_near_phrase_wins_over_far(clr: ModuleType) -> None:
    """The same phrase also at 2600 (inside the kept 1024 tokens): the late copy is near."""
    x = background()
    x[500:517] = PHRASE
    x[2600:2617] = PHRASE
    x[3500:3517] = PHRASE
    out = clr.classify_window(x, (4, 16), START, CUT)
    for n in (4, 16):
        code = out[str(n)]
        assert (code[3500 + n - START : 3517 - START] == clr.NEAR).all()
        assert (code == clr.FAR_ONLY).sum() == 0
        assert (code == clr.NEAR).sum() == 17 - n
    assert not out["far_vocab"].any()  # the tokens occur after the cut


def test_near_only_and_different_continuation(clr: ModuleType) -> None:
    """A phrase only at 2600 is near; a matching 16-gram with a different next token is no
    opportunity at n=16."""
    x = background()
    x[2600:2617] = PHRASE
    x[3500:3516] = PHRASE[:16]
    x[3516] = 7  # a different continuation (7 occurs nowhere else)
    code = clr.classify_window(x, (16,), START, CUT)["16"]
    assert (code == clr.NONE).all()
    x[3516] = PHRASE[16]
    code = clr.classify_window(x, (16,), START, CUT)["16"]
    assert code[3516 - START] == clr.NEAR and (code != clr.NONE).sum() == 1


def test_boundary_at_cut(clr: ModuleType) -> None:
    """Near iff the matched n-gram ends at j >= cut: ending at cut - 1 is far-only."""
    for end, expect in ((CUT - 1, "far"), (CUT, "near")):
        x = background()
        x[end - 15 : end + 2] = PHRASE  # the 16-gram ends at `end`, its continuation at end + 1
        x[3500:3517] = PHRASE
        code = clr.classify_window(x, (16,), START, CUT)["16"][3516 - START]
        assert code == (clr.FAR_ONLY if expect == "far" else clr.NEAR), (end, code)


def test_matches_brute_force(clr: ModuleType) -> None:
    """Random small windows over a tiny vocabulary against a direct definition."""
    rng = np.random.default_rng(0)
    start, cut = 90, 60
    for _ in range(10):
        x = rng.integers(0, 3, 120)
        out = clr.classify_window(x, (1, 3), start, cut)
        for n in (1, 3):
            for p in range(start, len(x)):
                t = p - 1
                js = [
                    j
                    for j in range(n - 1, t)
                    if (x[j - n + 1 : j + 1] == x[t - n + 1 : t + 1]).all() and x[j + 1] == x[p]
                ]
                want = clr.NONE if not js else clr.NEAR if max(js) >= cut else clr.FAR_ONLY
                assert out[str(n)][p - start] == want


def test_rates_bootstrap_and_windows(clr: ModuleType) -> None:
    x = background()
    x[500:517] = PHRASE
    x[3500:3517] = PHRASE
    r = clr.window_rates(x, (16,), START, CUT)
    assert r["n16_far_only"] == pytest.approx(1 / 1024)
    assert r["n16_near"] == 0 and r["n16_none"] == pytest.approx(1023 / 1024)
    b = clr.bootstrap_mean(np.array([0.1, 0.3, 0.2]), np.array([0, 0, 1]), boot=200)
    assert b["mean"] == pytest.approx(0.2) and b["lo"] <= 0.2 <= b["hi"]
    # Round-robin over documents, consecutive windows from each start, short tails dropped.
    docs = [list(range(25)), list(range(100, 105)), list(range(200, 220))]
    w, d = clr.cut_windows(docs, 10, 4)
    assert d.tolist() == [0, 2, 0, 2]
    assert w[:, 0].tolist() == [0, 200, 10, 210]


def test_windows_match_the_evaluation(clr: ModuleType, tmp_path: Path) -> None:
    """cut_windows picks the windows powerattn.eval.lm.eval_windows picks (same token arrays)."""
    from powerattn.eval.lm import eval_windows

    rng = np.random.default_rng(1)
    docs = [[1, *rng.integers(3, 50, k).tolist()] for k in (95, 7, 41, 230, 30)]
    offsets = np.cumsum([0, *(len(d) for d in docs)])
    np.save(tmp_path / "test.npy", np.concatenate(docs).astype(np.uint16))
    np.save(tmp_path / "test_offsets.npy", offsets.astype(np.int64))
    for max_windows in (3, 7, 100):
        want_w, want_d = eval_windows(tmp_path, 20, max_windows)
        got_w, got_d = clr.cut_windows(docs, 20, max_windows)
        np.testing.assert_array_equal(got_w, want_w)
        np.testing.assert_array_equal(got_d, want_d)


# ---------------------------------------------------------------- the library module


def test_script_uses_the_library(clr: ModuleType) -> None:
    """The statistic has one home, powerattn.eval.longrange; the script imports it."""
    from powerattn.eval import longrange

    for name in ("classify_window", "window_rates", "bootstrap_mean", "cut_windows", "regions"):
        assert getattr(clr, name) is getattr(longrange, name)


def test_document_score() -> None:
    """Mean over a document's consecutive windows of the far-only share; None without one."""
    from powerattn.eval.longrange import document_score, far_only_share

    x = background()
    x[500:517] = PHRASE
    x[3500:3517] = PHRASE  # 17 - 8 = 9 far-only late tokens at n = 8
    assert far_only_share(x, 8, START, CUT) == pytest.approx(9 / 1024)
    second = background() + C  # a second window with no opportunity
    doc = np.concatenate([x, second, second[:100]])  # the 100-token tail is dropped
    assert document_score(doc) == pytest.approx(9 / 1024 / 2)
    assert document_score(x, n=16) == pytest.approx(1 / 1024)
    assert document_score(x[: C - 1]) is None


def test_top_fraction_nested_ties_and_errors() -> None:
    from powerattn.eval.longrange import summary, top_fraction

    scores = {"a": 0.1, "b": 0.3, "c": None, "d": 0.3, "e": 0.0}
    assert top_fraction(scores, 1.0) == (["b", "d", "a", "e"], 0.0)  # c has no score
    assert top_fraction(scores, 0.25) == (["b"], 0.3)  # a tie: by key
    assert top_fraction(scores, 0.5) == (["b", "d"], 0.3)
    assert top_fraction(scores, 0.51) == (["b", "d", "a"], 0.1)  # ceil(0.51 * 4) = 3
    for f in (0, -1, 1.01):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            top_fraction(scores, f)
    s = summary([0.0, 0.1, 0.2, 0.3])
    assert s["count"] == 4 and s["median"] == pytest.approx(0.15) and s["zero_share"] == 0.25
