"""The prefill/training call's host-time savings keep results and refusals: the pattern
object reused per registered name (``get_pattern``'s cache), and the recompile guard as a class
(scripts/prefill_host_cpu.py measures what they save)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from powerattn import get_pattern, pattern_names, sparse_attention
from powerattn.ops import flex
from powerattn.patterns import PATTERNS

S = 1100  # five 256-token blocks and a partial one: the default patterns differ here


def _qkv(dtype=torch.float32, s=S, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, h, s, 16, generator=g).to(dtype).requires_grad_(grad) for h in (4, 2, 2)]


def test_named_pattern_one_object_per_name():
    for name in pattern_names():
        p = get_pattern(name)
        assert p is get_pattern(name)
        assert p == PATTERNS[name]() and type(p) is PATTERNS[name]


@pytest.mark.parametrize("grad", [False, True])
def test_calls_by_name_match_calls_with_a_fresh_pattern(grad):
    """Alternating names, lengths and dtypes with a warm cache: each call by name gives what
    the same call with a freshly built pattern gives (bitwise), outputs and gradients, and
    the patterns' outputs differ from each other (a mixed-up cache would show)."""
    outs = {}
    for dtype in (torch.float32, torch.bfloat16):
        for s in (S, 700):
            for name in pattern_names():
                q, k, v = _qkv(dtype, s, grad, seed=s)
                by_name = sparse_attention(q, k, v, name)
                q2, k2, v2 = (t.detach().clone().requires_grad_(grad) for t in (q, k, v))
                fresh = sparse_attention(q2, k2, v2, PATTERNS[name]())
                assert torch.equal(by_name, fresh), (name, dtype, s)
                if grad:
                    by_name.sum().backward()
                    fresh.sum().backward()
                    for a, b in ((q, q2), (k, k2), (v, v2)):
                        assert torch.equal(a.grad, b.grad), (name, dtype, s)
                if dtype == torch.float32 and s == S:
                    outs[name] = by_name.detach()
    names = sorted(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if not torch.equal(get_pattern(a).dense_mask(S, S), get_pattern(b).dense_mask(S, S)):
                assert not torch.equal(outs[a], outs[b]), (a, b)


def test_named_pattern_follows_the_registry():
    """A name registered again (tests do it) gives the new class; a removed name gives the
    registry's unknown-name error, as without the cache."""
    q, k, v = _qkv()
    base = sparse_attention(q, k, v, "power")  # warm the cache

    @dataclasses.dataclass(frozen=True)
    class Other(PATTERNS["sliding_window"]):
        name = "power"

    saved = dict(PATTERNS)  # restored in its order: tables and plots list patterns in it
    try:
        PATTERNS["power"] = Other
        assert type(get_pattern("power")) is Other
        assert torch.equal(sparse_attention(q, k, v, "power"), sparse_attention(q, k, v, Other()))
        del PATTERNS["power"]
        with pytest.raises(ValueError, match="unknown pattern 'power'"):
            sparse_attention(q, k, v, "power")
    finally:
        PATTERNS.clear()
        PATTERNS.update(saved)
    assert type(get_pattern("power")) is PATTERNS["power"]
    assert torch.equal(sparse_attention(q, k, v, "power"), base)


@pytest.mark.parametrize(
    "pattern, words",
    [("no_such_pattern", "unknown pattern 'no_such_pattern'"), ("", "unknown pattern ''")],
)
def test_bad_names_raise_as_before_with_a_warm_cache(pattern, words):
    q, k, v = _qkv()
    sparse_attention(q, k, v, "power")
    for _ in range(2):  # errors are never cached
        with pytest.raises(ValueError, match=words):
            sparse_attention(q, k, v, pattern)
    with pytest.raises(ValueError, match="must have 4 dimensions"):
        sparse_attention(q[0], k, v, "power")  # the shapes are still checked before the name


def test_recompile_limit_turns_the_fallback_into_the_error_and_restores():
    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    before = getattr(cfg, name), cfg.fail_on_recompile_limit_hit

    def error(limit):
        return RuntimeError(f"limit {limit}")

    with pytest.raises(RuntimeError, match="limit 7") as info, flex.recompile_limit(7, error):
        with flex.recompile_limit(3, error):  # nested: each restores what it found
            assert getattr(cfg, name) == 3
        assert (getattr(cfg, name), cfg.fail_on_recompile_limit_hit) == (7, True)
        raise torch._dynamo.exc.FailOnRecompileLimitHit("hit")
    assert isinstance(info.value.__cause__, torch._dynamo.exc.FailOnRecompileLimitHit)
    assert (getattr(cfg, name), cfg.fail_on_recompile_limit_hit) == before
    assert flex.dynamo_recompile_limit() == before[0]
