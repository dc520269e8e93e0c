"""The Triton decode kernel against the float64 reference (cases in decode_cases.py), the dense
SDPA shortcut of ``auto``, the custom op's fake implementation and the public batched
operator's checks.

On CUDA the kernel cases run in-process. On the CPU they run in Triton's interpreter, in a
subprocess, because ``TRITON_INTERPRET=1`` must be set before triton is imported and must
not leak into the other tests of this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import decode_cases
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from powerattn import get_pattern, pattern_names, reference_attention
from powerattn.ops import decode
from powerattn.ops.kvcache import sparse_attention_with_kvcache

CASES = Path(__file__).with_name("decode_cases.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def _ids(case) -> str:
    return "-".join(map(str, case))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU: interpreter test)")
@pytest.mark.parametrize("case", decode_cases.cases(), ids=_ids)
def test_decode_kernel_cuda(case):
    msg = decode_cases.check(*case, device="cuda")
    assert msg is None, msg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU: interpreter test)")
@pytest.mark.parametrize("case", decode_cases.batched_cases(), ids=_ids)
def test_decode_batched_cuda(case):
    msg = decode_cases.check_batched(*case, device="cuda")
    assert msg is None, msg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU: interpreter test)")
@pytest.mark.parametrize("case", decode_cases.leftpad_cases(), ids=_ids)
def test_decode_leftpad_cuda(case):
    msg = decode_cases.check_leftpad(*case, device="cuda")
    assert msg is None, msg


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU: interpreter test)")
@pytest.mark.parametrize("fn", [decode_cases.check_public, decode_cases.check_compiled])
def test_decode_public_and_compiled_cuda(fn):
    msg = fn("cuda")
    assert msg is None, msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA runs the cases in-process")
@pytest.mark.parametrize("early_v", ["0", "1"])
def test_decode_kernel_interpreted(early_v):
    env = dict(os.environ, TRITON_INTERPRET="1", POWERATTN_DECODE_EARLY_V=early_v)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(CASES), "cpu"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "decode cases passed" in proc.stdout


# ------------------------------------------------------------------ the dense shortcut
@pytest.mark.parametrize("name", pattern_names())
def test_full_causal_blocks_matches_dense_mask(name):
    """The number of leading query blocks that attend every earlier block, by brute force."""
    bs, n = 4, 40
    pattern = get_pattern(name, block_size=bs, **get_pattern(name).small_params)
    full = [bool(pattern.dense_mask(1, (qb + 1) * bs).all()) for qb in range(n)]
    expected = full.index(False) if False in full else n
    got = decode.full_causal_blocks(pattern)
    assert got == expected if expected < n else got >= n


def test_dense_is_exact_rule():
    power = get_pattern("power", block_size=256, window=5, sink=1)
    assert decode.full_causal_blocks(power) == 6  # full causal up to 6 blocks (1536 keys)
    assert decode.dense_is_exact(power, 1, 1536)
    assert not decode.dense_is_exact(power, 1, 1537)
    assert not decode.dense_is_exact(power, 2, 1000)  # several queries: the kernel
    full = get_pattern("full")
    assert decode.dense_is_exact(full, 1, decode.DENSE_DECODE_MAX_KEYS)
    assert not decode.dense_is_exact(full, 1, decode.DENSE_DECODE_MAX_KEYS + 1)


@pytest.mark.parametrize(
    "shape_dtype",
    [
        ((1, 8, 1, 32), torch.bfloat16),
        ((1, 8, 16, 32), torch.float32),
        ((1, 8, 17, 32), torch.float16),  # too many queries
        ((1, 8, 1, 512), torch.float16),  # head dim above the kernel's
        ((1, 8, 1, 32), torch.float64),
    ],
)
@pytest.mark.parametrize("interpret", [False, True])
def test_supports_agrees_with_check_supported(monkeypatch, shape_dtype, interpret):
    """The exception-free check auto runs per decode step says what check_supported says."""
    monkeypatch.setattr(decode, "_INTERPRET", interpret)
    shape, dtype = shape_dtype
    q = torch.zeros(shape, dtype=dtype)
    k = torch.zeros(shape[0], 2, 64, shape[3], dtype=dtype)
    try:
        decode.check_supported(q, k)
        raised = False
    except ValueError:
        raised = True
    assert decode.supports(q, k) == (not raised)
    if interpret and shape == (1, 8, 1, 32) and dtype == torch.bfloat16:
        assert decode.supports(q, k) == (decode.triton is not None)


@pytest.mark.parametrize(
    ("sk", "kwargs", "dense"),
    [
        (1536, {}, True),
        (1537, {}, False),  # the pattern skips a block: not exact
        (1000, {"need_lse": True}, False),  # SDPA gives no lse
        (1000, {"allow_dense": False}, False),  # backend="decode": always the kernel
    ],
)
def test_decode_forward_routes(monkeypatch, sk, kwargs, dense):
    """Dense SDPA only where it is exact; it matches the reference there."""
    calls = []

    def fake_kernel(q, k, v, pattern, scale, **kw):
        calls.append(kw)
        return torch.zeros_like(q), torch.zeros(q.shape[:3])

    monkeypatch.setattr(decode, "decode_attention", fake_kernel)
    power = get_pattern("power", block_size=256, window=5, sink=1)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 8, 1, 32, generator=g)
    k, v = torch.randn(2, 1, 2, sk, 32, generator=g)
    out, _ = decode.decode_forward(q, k, v, power, 32**-0.5, **kwargs)
    assert (not calls) == dense
    if dense:
        ref = reference_attention(q, k, v, power, upcast=True)
        assert (out.double() - ref).abs().max() < 1e-5


def test_fake_impl_shapes():
    spec = get_pattern("power").spec
    with FakeTensorMode():
        q = torch.empty(3, 28, 2, 128, dtype=torch.bfloat16)
        k = torch.empty(3, 4, 4096, 128, dtype=torch.bfloat16)
        lens = torch.empty(3, dtype=torch.int32)
        out, lse = torch.ops.powerattn.decode(q, k, k, lens, spec, 0.1, True, True)
        assert out.shape == q.shape and out.dtype == q.dtype
        assert lse.shape == (3, 28, 2) and lse.dtype == torch.float32
        _, lse = torch.ops.powerattn.decode(q, k, k, None, spec, 0.1, False, True)
        assert lse.shape == (0,)


def test_pattern_spec_round_trip():
    for name in pattern_names():
        p = get_pattern(name, block_size=32, **get_pattern(name).small_params)
        assert decode._pattern_from_spec(p.spec) == p


# ----------------------------------------------------------- the public batched operator
def _inputs(dtype=torch.float32, lens=(40, 9, 0)):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(len(lens), 4, 2, 16, generator=g, dtype=dtype)
    k = torch.randn(len(lens), 2, 40, 16, generator=g, dtype=dtype)
    v = torch.randn(len(lens), 2, 40, 16, generator=g, dtype=dtype)
    return q, k, v, torch.tensor(lens)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kvcache_cpu_path(dtype):
    """Without the kernel (CPU, float64): per-sequence lengths with the kernel's semantics."""
    q, k, v, lens = _inputs(dtype, lens=(40, 9, 1, 0))
    pattern = get_pattern("power", block_size=4, window=2, sink=1)
    out, lse = sparse_attention_with_kvcache(q, k, v, pattern, cache_seqlens=lens, return_lse=True)
    for b, n in enumerate(lens.tolist()):
        first = max(2 - n, 0)
        assert out[b, :, :first].eq(0).all() and lse[b, :, :first].eq(float("-inf")).all()
        if first < 2:
            ref = reference_attention(q[b : b + 1, :, first:], k[b : b + 1, :, :n],
                                      v[b : b + 1, :, :n], pattern, upcast=True)  # fmt: skip
            assert (out[b : b + 1, :, first:].double() - ref).abs().max() < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kvcache_leftpad_cpu_path(dtype):
    """Left padding without the kernel: sequence b is slots start..end-1, at positions from
    its start (its blocks are the unpadded sequence's); int ends; a start at the end."""
    q, k, v, lens = _inputs(dtype, lens=(40, 38, 40, 21))
    starts = torch.tensor([0, 5, 39, 21], dtype=torch.int32)
    pattern = get_pattern("power", block_size=4, window=2, sink=1)
    out, lse = sparse_attention_with_kvcache(
        q, k, v, pattern, cache_seqlens=lens, cache_leftpad=starts, return_lse=True
    )
    for b, (s0, e) in enumerate(zip(starts.tolist(), lens.tolist(), strict=True)):
        first = max(2 - (e - s0), 0)
        assert out[b, :, :first].eq(0).all() and lse[b, :, :first].eq(float("-inf")).all()
        if first < 2:
            ref = reference_attention(q[b : b + 1, :, first:], k[b : b + 1, :, s0:e],
                                      v[b : b + 1, :, s0:e], pattern, upcast=True)  # fmt: skip
            assert (out[b : b + 1, :, first:].double() - ref).abs().max() < 1e-5
    # Every sequence ending at the cache's end: the int form (and None) give the same.
    same = [sparse_attention_with_kvcache(q, k, v, pattern, cache_seqlens=n, cache_leftpad=starts)
            for n in (40, None)]  # fmt: skip
    want = sparse_attention_with_kvcache(
        q, k, v, pattern, cache_seqlens=torch.full((4,), 40), cache_leftpad=starts
    )
    assert all(torch.equal(x, want) for x in same)


def test_kvcache_int_length():
    q, k, v, _ = _inputs()
    ref = reference_attention(q, k[:, :, :30], v[:, :, :30], "power", upcast=True)
    out = sparse_attention_with_kvcache(q, k, v, "power", cache_seqlens=30)
    assert (out.double() - ref).abs().max() < 1e-5


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda a: {**a, "cache_seqlens": a["cache_seqlens"].float()}, "int32 or int64"),
        (lambda a: {**a, "cache_seqlens": a["cache_seqlens"][:2]}, r"\(batch,\) = \(3,\)"),
        (lambda a: {**a, "cache_seqlens": [40, 9, 0]}, "must be a tensor"),
        (lambda a: {**a, "cache_seqlens": 41}, "must lie in Sq..S_max"),
        (lambda a: {**a, "cache_seqlens": torch.tensor([41, 9, 0])}, "must lie in 0..S_max"),
        (lambda a: {**a, "q": a["q"].requires_grad_()}, "no backward"),
        (lambda a: {**a, "cache_leftpad": torch.tensor([0, 10, 0])}, r"0..cache_seqlens"),
        (lambda a: {**a, "cache_leftpad": torch.tensor([0, 1])}, r"cache_leftpad must be a"),
        (lambda a: {**a, "cache_leftpad": [0, 1, 0]}, "cache_leftpad must be a tensor"),
    ],
)
def test_kvcache_refusals(change, match):
    q, k, v, lens = _inputs()
    args = change({"q": q, "k_cache": k, "v_cache": v, "cache_seqlens": lens})
    with pytest.raises(ValueError, match=match):
        sparse_attention_with_kvcache(pattern="power", **args)


# ------------------------------------------------------------------ the direct launch
class _FakeKernel:
    """Stands in for the Triton kernel: records usual launches and direct-launcher calls."""

    def __init__(self, error):
        self.usual, self.direct, self.error = [], [], error

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, **consts):
        self.usual.append(args)
        return _FakeCompiled(self)


class _FakeCompiled:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        return self.run

    def run(self, *args, stream):
        if self.kernel.error:
            raise self.kernel.error
        self.kernel.direct.append((args, stream))


@pytest.mark.parametrize("error", [None, TypeError("takes 30 positional arguments")])
def test_launch_fast_reuses_only_identical_specialisations(monkeypatch, error):
    fake = _FakeKernel(error)
    monkeypatch.setattr(decode, "_decode_kernel", fake)
    monkeypatch.setattr(decode, "FAST_LAUNCH", True)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda i: 7, raising=False)
    plan = decode._plan(get_pattern("power"), 1, 4, 2, 1, 16, torch.float32, 8,
                        torch.device("cpu"), None, True, False, False)  # fmt: skip
    plan.runners.clear()
    q = torch.randn(1, 4, 1, 16)
    k = torch.randn(1, 2, 64, 16)
    cnt = torch.zeros(4, dtype=torch.int32)

    def args(q=q, k=k):
        return (q, k, k, q, q, q, cnt, cnt, cnt, cnt, *q.stride(), *k.stride(), *k.stride(),
                64, 64, 0.1, plan.n_slots, plan.splits)  # fmt: skip

    decode._launch_fast(plan, args(), 0)  # first: the usual launch (compiles)
    assert len(fake.usual) == 1 and not fake.direct
    if error is not None:
        with pytest.warns(UserWarning, match="direct kernel launch unavailable"):
            decode._launch_fast(plan, args(), 0)
        assert not decode.FAST_LAUNCH and len(fake.usual) == 2
        return
    decode._launch_fast(plan, args(), 0)  # same specialisation: the direct launcher
    assert len(fake.usual) == 1 and len(fake.direct) == 1
    sent, stream = fake.direct[0]
    # Pointers go as integers (the launcher then skips data_ptr() and the driver query).
    ptrs = tuple(t.data_ptr() for t in args()[:10])
    assert stream == 7 and sent == ptrs + args()[10:] + plan.const_values
    # Another stride class (17: not a multiple of 16): the usual launch again.
    decode._launch_fast(plan, args(k=torch.randn(1, 2, 64, 17)[..., :16]), 0)
    assert len(fake.usual) == 2
    # A q pointer off the 16-byte grid: the usual launch too.
    decode._launch_fast(plan, args(q=torch.randn(1, 4, 1, 17)[..., 1:]), 0)
    assert len(fake.usual) == 3
    decode._launch_fast(plan, args(), 0)
    assert len(fake.usual) == 3 and len(fake.direct) == 2


def test_graph_counter_arena(monkeypatch):
    """Captured calls take their split counters from a zeroed arena, each call its own slice
    for good (the graph then has no memset node); a spent arena falls back to a fresh zeroed
    tensor, and calls outside a capture never take from it."""
    monkeypatch.setattr(decode, "_GRAPH_COUNTERS", 10)
    monkeypatch.setattr(decode, "_graph_arenas", {})
    dev = torch.device("cpu")
    assert decode._graph_counters(dev, 4) is None  # no arena yet: the caller zeroes
    decode._reserve_graph_counters(dev)
    arena = decode._graph_arenas[dev][0]
    decode._reserve_graph_counters(dev)  # made once
    assert decode._graph_arenas[dev][0] is arena
    a, b = decode._graph_counters(dev, 3), decode._graph_counters(dev, 4)
    assert a.numel() == 3 and b.numel() == 4 and not a.any() and not b.any()
    # Slices start 16 bytes apart at least, as fresh allocations would be aligned.
    assert a.data_ptr() == arena.data_ptr() and b.data_ptr() == arena.data_ptr() + 16
    assert decode._graph_counters(dev, 4) is None  # 8 of 10 given out
    plan = decode._plan(get_pattern("power"), 1, 4, 2, 1, 16, torch.float32, 8, dev, None,
                        True, False, False)  # fmt: skip
    monkeypatch.setattr(decode, "_graph_arenas", {})
    decode._reserve_graph_counters(dev)
    _, cnt = decode._fresh_workspace(dev, plan, capturing=True)
    assert cnt.data_ptr() == decode._graph_arenas[dev][0].data_ptr()
    assert cnt.numel() == plan.cnt_numel and decode._graph_arenas[dev][1] >= plan.cnt_numel
    taken = decode._graph_arenas[dev][1]
    _, other = decode._fresh_workspace(dev, plan)  # not capturing: its own zeroed tensor
    assert decode._graph_arenas[dev][1] == taken and not other.any()
    decode._graph_arenas[dev][1] = 10  # spent: a zeroed tensor of its own
    _, spent = decode._fresh_workspace(dev, plan, capturing=True)
    assert spent.numel() == plan.cnt_numel and not spent.any()
    assert spent.data_ptr() != decode._graph_arenas[dev][0].data_ptr()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA graphs")
def test_decode_graph_replays_cuda():
    """Two CUDA graphs of the public decode call, replayed in turn with new queries: each
    replay equals the eager call bit for bit (the split counters reset themselves; the
    graphs share none)."""
    from powerattn import sparse_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    q0 = torch.randn(2, 8, 1, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(2, 2, 5000, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(2, 2, 5000, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    pattern = get_pattern("power", block_size=64)
    qs = [q0.clone(), q0.clone()]
    outs = [sparse_attention(q, k, v, pattern) for q in qs]  # eager first: plan and arena
    torch.cuda.synchronize()
    graphs = []
    for i in range(2):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs[i] = sparse_attention(qs[i], k, v, pattern)
        graphs.append(graph)
    for _ in range(3):
        for i in (1, 0):
            qs[i].copy_(torch.randn(q0.shape, device="cuda", dtype=q0.dtype, generator=g))
            graphs[i].replay()
            torch.cuda.synchronize()
            torch.testing.assert_close(outs[i], sparse_attention(qs[i], k, v, pattern),
                                       rtol=0, atol=0)  # fmt: skip


_REDUCE_OVERHEAD_CASE = """
import torch
from powerattn import get_pattern, sparse_attention
g = torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(2, 8, 1, 64, device="cuda", dtype=torch.bfloat16, generator=g)
k, v = (torch.randn(2, 2, 3000, 64, device="cuda", dtype=torch.bfloat16, generator=g)
        for _ in range(2))
pattern = get_pattern("power", block_size=64)
step = torch.compile(lambda q: sparse_attention(q, k, v, pattern) * 2, mode="reduce-overhead")
outs = [step(q).clone() for _ in range(4)]  # warm-up, recording, replays
ref = sparse_attention(q, k, v, pattern) * 2
for out in outs:
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
print("ok")
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA graphs")
def test_decode_first_call_under_cudagraph_trees_cuda():
    """The first decode call of a process inside Inductor's CUDA-graph trees (what
    transformers' compiled static-cache step is): its warm-up run allocates from the graph's
    pool, so nothing the process keeps may be allocated there (session 19 on the H200: the
    graph-counter arena was, and the trees refused it). A fresh process, so that no earlier
    call has made the arena; the replays equal the eager call bit for bit."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", _REDUCE_OVERHEAD_CASE], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]


def test_arena_is_made_outside_the_calling_thread_on_cuda(monkeypatch):
    """On CUDA the arena comes from a thread of its own (a CUDA-graph tree routes the calling
    thread's allocations into its pool); on the CPU it is made in place."""
    import threading

    seen = []

    def make():
        seen.append(threading.get_ident())
        return torch.zeros(3)

    assert decode._outside_graph_pools(torch.device("cpu"), make).numel() == 3
    assert seen == [threading.get_ident()]
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: SimpleNamespace(
        synchronize=lambda: seen.append("synchronised")))  # fmt: skip
    assert decode._outside_graph_pools(torch.device("cuda", 0), make).numel() == 3
    assert seen[1] != threading.get_ident() and seen[2] == "synchronised"


# ------------------------------------------------------------------------- the benchmark
def test_bench_crossover_reading():
    from powerattn.bench.decode import crossover

    def row(s, method, ms):
        return {"case": "decode", "seq_len": s, "method": method, "backend": "x", "ms": ms}

    rows = [row(1024, "ours", 0.02), row(1024, "dense_sdpa", 0.01),
            row(8192, "ours", 0.02), row(8192, "dense_sdpa", 0.03),
            row(32768, "ours", 0.02), row(32768, "dense_sdpa", 0.04)]  # fmt: skip
    assert crossover(rows) == {"case": "decode", "slower_at": [1024], "never_slower_from": 8192}
    assert crossover(rows[:2])["never_slower_from"] is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only refusal")
def test_bench_decode_needs_cuda():
    from powerattn.bench.decode import bench_decode

    with pytest.raises(ValueError, match="CUDA"):
        bench_decode([1024], [1])
