"""The public operator's cached decode steps (``ops/decode.py``, ``cached_step``).

A call that a cached step serves must launch exactly what the full path launches (same plan,
lengths, scale, route), and bad input must be refused with the same messages whatever the
cache holds. Here the kernel is a recorder (CPU tensors count as kernel tensors); the real
kernel's bitwise agreement is ``decode_cases.check_steps`` (interpreter and CUDA).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from powerattn import get_pattern, pattern_names, power_attention, sparse_attention
from powerattn.ops import api, decode
from powerattn.ops.checks import needs_grad
from powerattn.patterns import PATTERNS


class _Recorder:
    """Stands in for the Triton kernel: records each launch and writes a mark into ``out``
    that depends on the launch's arguments (so outputs differ when launches do)."""

    def __init__(self):
        self.launches = []

    def __getitem__(self, grid):
        def launch(*args, **consts):
            tbl, tcnt = args[8], args[9]
            self.launches.append(
                (grid, args[10:], tuple(sorted(consts.items())), tbl.tolist(), tcnt.tolist())
            )
            args[3].fill_(args[22] + 1000 * args[24] + 0.25 * args[25])  # Sk, scale, n_slots
            return None

        return launch


@pytest.fixture
def rec(monkeypatch):
    monkeypatch.setattr(decode, "_INTERPRET", True)  # CPU tensors are kernel tensors
    kernel = _Recorder()
    monkeypatch.setattr(decode, "_decode_kernel", kernel)
    decode.clear_plans()  # plans built with another _INTERPRET stay out
    yield kernel
    decode.clear_plans()


@pytest.fixture
def auto_decodes(monkeypatch):
    """``auto`` takes the decode route for CPU tensors, as it does for CUDA ones."""
    orig = api._pick_backend

    def pick(q, k, v, pattern, return_lse):
        if q.shape[2] <= decode.DECODE_MAX_Q and not needs_grad(q, k, v):
            return "decode_auto"
        return orig(q, k, v, pattern, return_lse)

    monkeypatch.setattr(api, "_pick_backend", pick)


def _qkv(sq=1, sk=70, hq=4, hkv=2, d=16, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, hq, sq, d, generator=g).to(dtype)
    k = torch.randn(1, hkv, sk, d, generator=g).to(dtype)
    v = torch.randn(1, hkv, sk, d, generator=g).to(dtype)
    return q, k, v


# ---------------------------------------------------------------------- the length range
@pytest.mark.parametrize("name", pattern_names())
@pytest.mark.parametrize("sq", [1, 3])
@pytest.mark.parametrize("dense_ok", [True, False])
def test_step_range_is_exactly_where_the_decisions_hold(name, sq, dense_ok):
    """Every length in lo..hi takes sk's bucket and route; lo - 1 and hi + 1 do not."""
    bs = 4
    pattern = get_pattern(name, block_size=bs, **get_pattern(name).small_params)

    def decision(s):
        dense = dense_ok and decode.dense_is_exact(pattern, sq, s)
        return decode._bucket(s, bs), dense

    for sk in range(sq, 140):
        lo, hi, dense = decode.step_range(pattern, sq, sk, dense_ok)
        assert lo <= sk <= hi and dense == decision(sk)[1]
        assert all(decision(s) == decision(sk) for s in range(lo, hi + 1)), (sk, lo, hi)
        assert lo == sq or decision(lo - 1) != decision(sk)
        assert decision(hi + 1) != decision(sk)


def test_step_range_never_spans_the_32_bit_length_limit():
    p = get_pattern("power")
    big = decode._I32_MAX
    assert decode.step_range(p, 1, big, True)[1] == big
    assert decode.step_range(p, 1, big + 1, True)[0] == big + 1


# ------------------------------------------------------------- launches: cached == full
def _full_path(q, k, v, pattern, scale, return_lse, allow_dense):
    """The uncached route and launch for a validated call."""
    return decode._decode_impl(q, k, v, None, pattern, scale, return_lse, allow_dense)


def test_cached_launches_match_the_full_path(rec):
    """Changes of length (within and across buckets), pattern, dtype, scale, return_lse,
    layout and query count: each call (twice: a miss, then a hit) launches what the
    uncached path launches."""
    power = get_pattern("power", block_size=16, window=2, sink=1)
    sw = get_pattern("sliding_window", block_size=16, window=3, sink=1)
    longnet = get_pattern("longnet", block_size=16, **get_pattern("longnet").small_params)
    q, k, v = _qkv(sk=100)
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    q3 = _qkv(sq=3, sk=100, seed=1)[0]
    kt = torch.randn(1, 100, 2, 16).transpose(1, 2)  # a (B, S, H, D) cache, viewed
    calls = [
        (q, k[:, :, :70], v[:, :, :70], power, None, False),
        (q, k[:, :, :65], v[:, :, :65], power, None, False),  # same bucket
        (q, k[:, :, :40], v[:, :, :40], power, None, False),  # another bucket
        (q, k[:, :, :9], v[:, :, :9], power, None, False),  # one block
        (q, k[:, :, :70], v[:, :, :70], sw, None, False),
        (q, k[:, :, :70], v[:, :, :70], longnet, None, False),  # a table pattern
        (q, k[:, :, :70], v[:, :, :70], "power", None, False),  # by name: block 256
        (qb, kb[:, :, :70], vb[:, :, :70], power, None, False),
        (q, k[:, :, :70], v[:, :, :70], power, 0.3, False),
        (q, k[:, :, :70], v[:, :, :70], power, None, True),
        (q, kt[:, :, :70], kt[:, :, :70], power, None, False),
        (q3, k[:, :, :70], v[:, :, :70], power, None, False),
        (q.transpose(1, 2).contiguous().transpose(1, 2), k, v, power, None, False),
    ]
    for i, (q_, k_, v_, pat, scale, lse) in enumerate(calls):
        pattern = get_pattern(pat)
        s = q_.shape[-1] ** -0.5 if scale is None else scale
        for attempt in range(2):
            rec.launches.clear()
            got = sparse_attention(q_, k_, v_, pat, scale=scale, return_lse=lse, backend="decode")
            cached = rec.launches[:]
            rec.launches.clear()
            want = _full_path(q_, k_, v_, pattern, s, lse, False)
            assert cached == rec.launches and len(cached) == 1, (i, attempt)
            got = got if lse else (got, None)
            assert torch.equal(got[0], want[0]), (i, attempt)
            assert (got[1] is None) == (not lse) and got[0].is_contiguous()
        hit = decode.cached_step(q_, k_, v_, pat, scale, lse, "decode")
        assert hit is not None, f"call {i}: the repeat was not served by a cached step"


def test_auto_route_per_length_matches_the_full_path(rec, auto_decodes):
    """auto: dense SDPA where it is exact, else the kernel, for every length, in an order
    that moves across buckets and across the dense threshold."""
    power = get_pattern("power", block_size=16, window=2, sink=1)
    q, k, v = _qkv(sk=140)
    threshold = decode.full_causal_blocks(power) * 16
    lengths = list(range(1, 140))
    lengths = lengths[::7] + lengths[::-5] + lengths
    routes = set()
    for sk in lengths:
        ks, vs = k[:, :, :sk], v[:, :, :sk]
        got = sparse_attention(q, ks, vs, power)
        want, _ = _full_path(q, ks, vs, power, 0.25, False, True)
        assert torch.equal(got, want), sk
        routes.add(sk <= threshold)
    assert routes == {True, False}  # both routes were taken


def test_named_pattern_follows_the_registry(rec, monkeypatch):
    """A step cached for a name is not reused once the name means another class."""
    q, k, v = _qkv()
    sparse_attention(q, k, v, "power", backend="decode")
    sparse_attention(q, k, v, "power", backend="decode")
    assert decode.cached_step(q, k, v, "power", None, False, "decode") is not None
    monkeypatch.setitem(PATTERNS, "power", PATTERNS["sliding_window"])
    assert decode.cached_step(q, k, v, "power", None, False, "decode") is None
    rec.launches.clear()
    sparse_attention(q, k, v, "power", backend="decode")
    got = rec.launches[:]
    rec.launches.clear()
    _full_path(q, k, v, get_pattern("sliding_window"), 0.25, False, False)
    assert got == rec.launches


def test_gradients_and_tracing_skip_the_cache(rec, auto_decodes):
    q, k, v = _qkv()
    sparse_attention(q, k, v, "power")
    assert decode.cached_step(q, k, v, "power", None, False, "auto") is not None
    kg = k.clone().requires_grad_()
    assert decode.cached_step(q, kg, v, "power", None, False, "auto") is None
    with torch.no_grad():
        assert decode.cached_step(q, kg, v, "power", None, False, "auto") is not None
    with pytest.raises(ValueError, match="no backward"):
        sparse_attention(q, kg, v, "power", backend="decode")


def test_alternating_lengths_keep_their_steps(rec):
    """Layers alternating between a short and a long cache (one key, two length buckets)
    are both served from the cache; a key keeps at most _STEPS_PER_KEY ranges."""
    q, k, v = _qkv(sk=4096)
    for _ in range(2):
        for n in (40, 3000):
            sparse_attention(q, k[:, :, :n], v[:, :, :n], "power", backend="decode")
    (steps,) = decode._steps.values()
    assert len(steps) == 2
    for n in (40, 3000):
        hit = decode.cached_step(q, k[:, :, :n], v[:, :, :n], "power", None, False, "decode")
        assert hit is not None
    p16 = get_pattern("power", block_size=16)
    lengths = [16 << i for i in range(9)]  # 9 buckets: 16 .. 4096 keys
    for n in lengths:
        sparse_attention(q, k[:, :, :n], v[:, :, :n], p16, backend="decode")
    steps = [s for key, s in decode._steps.items() if key[0] is p16]
    assert [len(s) for s in steps] == [decode._STEPS_PER_KEY] == [8]
    last, first = lengths[-1], lengths[0]
    hit = decode.cached_step(q, k[:, :, :last], v[:, :, :last], p16, None, False, "decode")
    assert hit is not None  # the newest range is kept, the oldest dropped
    assert (
        decode.cached_step(q, k[:, :, :first], v[:, :, :first], p16, None, False, "decode") is None
    )


def test_clear_plans_forgets_steps(rec):
    q, k, v = _qkv()
    sparse_attention(q, k, v, "power", backend="decode")
    assert decode._steps
    decode.clear_plans()  # what the kernel benchmarks call after changing constants
    assert not decode._steps and decode._plan.cache_info().currsize == 0


# ------------------------------------------------------------------ refusals, warm cache
def _bad_calls():
    q, k, v = _qkv(sq=2, sk=40)
    return [
        ((q, k[..., :8], v[..., :8]), {}),
        ((q, k, v[:, :, :39]), {}),
        ((q, k, v.double()), {}),
        ((q, k.double(), v), {}),
        ((q, k, v.to("meta")), {}),
        ((q, k.to("meta"), v), {}),
        ((q, k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)), {}),
        ((q, k[:, :, :1], v[:, :, :1]), {}),  # Sq > Sk
        ((q, k.transpose(1, 2), v.transpose(1, 2)), {}),  # a (B, S, H, D) layout
        ((q, [1.0], v), {}),
        ((q, k, v), {"scale": True}),
        ((q, k, v), {"scale": float("nan")}),
        ((q, k, v), {"scale": "0.1"}),
        ((q, k, v), {"backend": "bogus"}),
        ((q.double(), k.double(), v.double()), {"backend": "decode"}),
        ((q.clone().requires_grad_(), k, v), {"backend": "decode"}),
        ((q[:, :, :1].expand(1, 4, 17, 16), k, v), {"backend": "decode"}),  # Sq > 16
    ]


def _message(args, kwargs, backend, pattern="power"):
    with pytest.raises(ValueError) as info:
        sparse_attention(*args, pattern, **{"backend": backend, **kwargs})
    return str(info.value)


@pytest.mark.parametrize("backend", ["decode", "auto"])
def test_refusals_are_the_same_with_a_warm_cache(rec, auto_decodes, backend):
    q, k, v = _qkv(sq=2, sk=40)
    cold = [_message(a, kw, backend) for a, kw in _bad_calls()]
    cold.append(_message((q, k, v), {}, backend, pattern="nonexistent"))
    for scale in (None, 1.0):  # steps for the bad calls' neighbours (True == 1.0)
        for b in ("auto", "decode"):
            sparse_attention(q, k, v, "power", scale=scale, backend=b)
    warm = [_message(a, kw, backend) for a, kw in _bad_calls()]
    warm.append(_message((q, k, v), {}, backend, pattern="nonexistent"))
    assert warm == cold
    assert "head dims differ" in warm[0] and "finite number" in warm[10]
    # The warm steps cover the bad calls' key (same q, pattern, scale, backend): the checks
    # above went through cached_step's comparisons, not around them.
    assert decode.cached_step(q, k, v, "power", None, False, backend) is not None


def test_power_attention_reuses_its_pattern_and_still_checks():
    q, k, v = _qkv(sk=40, d=16)
    a = power_attention(q, k, v, block_size=16)
    assert get_pattern("power", block_size=16) is get_pattern("power", block_size=16)
    assert torch.equal(a, power_attention(q, k, v, block_size=16))
    for bad in (16.0, True, [16]):
        with pytest.raises(ValueError, match="block_size"):
            power_attention(q, k, v, block_size=bad)


# ---------------------------------------------------------------- the direct launcher
class _FakeCompiled:
    def __init__(self, direct):
        self.direct = direct

    def __getitem__(self, grid):
        def run(*args, stream):
            self.direct.append((args, stream))

        return run


class _FakeKernel:
    def __init__(self):
        self.usual, self.direct = [], []

    def __getitem__(self, grid):
        def launch(*args, **consts):
            self.usual.append(args)
            return _FakeCompiled(self.direct)

        return launch


def test_cached_direct_launches(monkeypatch):
    """A CUDA step reuses a direct launcher only for the exact strides it was stored under
    with every pointer 16-byte aligned, and passes it what _launch_fast would."""
    fake = _FakeKernel()
    monkeypatch.setattr(decode, "_decode_kernel", fake)
    monkeypatch.setattr(decode, "FAST_LAUNCH", True)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda i: 7, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_isCurrentStreamCapturing", lambda: False, raising=False)
    decode.clear_plans()
    q, k, v = _qkv(sk=70)
    pattern = get_pattern("power", block_size=16)
    decode.remember_step(q, k, v, (pattern, None, "decode"), False, pattern, 0.25, False)
    ((step,),) = decode._steps.values()
    step = dataclasses.replace(step, cuda=True, index=0, runners={})
    for _ in range(3):  # compile, then the plan's launcher (stored), then the step's
        decode._run_step(step, q, k, v, 70)
    assert len(fake.usual) == 1 and len(fake.direct) == 2 and len(step.runners) == 1
    (a, _), (b, stream) = fake.direct
    assert a[:3] + a[4:] == b[:3] + b[4:] and stream == 7  # all but the fresh output
    plan = step.plan
    assert b[:3] == (q.data_ptr(), k.data_ptr(), v.data_ptr())
    assert b[8:10] == (plan.tbl.data_ptr(), plan.tcnt.data_ptr())
    assert b[-len(plan.const_values) :] == plan.const_values
    # A q pointer off the 16-byte grid: not the stored launcher (the usual launch compiles).
    q_off = torch.randn(1, 4, 1, 17)[..., 1:]
    decode._run_step(step, q_off, k, v, 70)
    assert len(fake.usual) == 2 and len(step.runners) == 1
    # Another stride class (17): another specialisation, the usual launch.
    k17 = torch.randn(1, 2, 70, 17)[..., :16]
    decode._run_step(step, q, k17, v, 70)
    assert len(fake.usual) == 3
    decode.clear_plans()
