"""Host time of the public prefill/training call, measured on a CPU-only machine (issue 9).

At 8K tokens on the H200, ``sparse_attention(q, k, v, "power")`` forward + backward through
FlashAttention-4 took 1.85 ms against 1.58 ms for plain FlexAttention + FA4. This times our
Python path around the compiled ``flex_attention`` call, with that call replaced by a stub,
so that it runs without a GPU:

* the package is copied to a temporary folder where the device-type tests of ``ops/api.py``
  and ``ops/flex.py`` see CPU tensors as CUDA ones (auto picks ``flash``, static-shape
  signatures, tile padding, the recompile guard: the GPU's code path);
* the GPU capability reads SM90 and FlashAttention-4 reads as importable;
* the compiled functions (``ops.flex._compiled``) are a stub that returns correctly shaped
  tensors through a trivial ``autograd.Function`` (so that ``backward`` runs), and the
  FlashAttention-4 lse factor is 1.

* since session 20 an eager ``flash`` prefill calls FlashAttention-4 directly (``ops.fa4``):
  its ``flash_attn_func`` is stubbed the same way; the ``FLASH_DIRECT off`` rows take the
  FlexAttention path as before.

Our wrapper has no ``autograd.Function`` of its own on this path: the backward is
FlexAttention's compiled one. The fwd+bwd case therefore adds only the autograd engine's
work on the stub, the same for every tree; the "stub alone" rows are what the plain
compiled ``flex_attention`` call would cost here, so ``ours - stub`` is our overhead.

Qwen2-7B attention heads and lengths (B=1, Hq=28, Hkv=4, bf16, pattern ``power``), head dim
8 (``--head-dim``; see there why). Per case: the median over ``--rounds`` rounds of the mean
host time of ``--calls`` calls, every round running every case in turn. CPU numbers: compare
before/after on one machine, not with GPU-host numbers.

    .venv/bin/python scripts/prefill_host_cpu.py                     # this tree
    git archive <commit> src | tar -x -C /tmp/before && \\
        .venv/bin/python scripts/prefill_host_cpu.py --src /tmp/before/src   # another tree
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# (old, new) rewrites of the ops' device tests, applied in order through placeholders so that
# "cuda" and "cpu" swap: CPU tensors take the CUDA path, and the CPU-only branches none.
_SWAPS = (
    ('.type == "cuda"', "@CUDA_EQ@"),
    ('.type != "cuda"', "@CUDA_NE@"),
    ('.type == "cpu"', '.type == "cuda"'),
    ('.type != "cpu"', '.type != "cuda"'),
    ('device_type != "cuda"', 'device_type != "cpu"'),
    ("@CUDA_EQ@", '.type == "cpu"'),
    ("@CUDA_NE@", '.type != "cpu"'),
)


def _patched_package(src: Path, dest: Path) -> int:
    """Copy ``src/powerattn`` to ``dest`` with the ops' device tests swapped; return the number
    of tests rewritten."""
    shutil.copytree(src / "powerattn", dest / "powerattn")
    n = 0
    for rel in ("ops/api.py", "ops/flex.py"):
        path = dest / "powerattn" / rel
        text = path.read_text()
        for old, new in _SWAPS:
            if "@" not in old:
                n += text.count(old)
            text = text.replace(old, new)
        path.write_text(text)
    return n


class _StubAttention(torch.autograd.Function):
    """What the compiled ``flex_attention`` returns, with none of its work: an output of q's
    shape that autograd can differentiate (gradients of the inputs' shapes)."""

    @staticmethod
    def forward(ctx, q, k, v):
        ctx.shapes = q, k, v
        return torch.empty_like(q)

    @staticmethod
    def backward(ctx, dout):
        q, k, v = ctx.shapes
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class _Aux:
    def __init__(self, lse):
        self.lse = lse


def _stub(q, k, v, block_mask, scale, enable_gqa, kernel_options, return_aux):
    out = _StubAttention.apply(q, k, v)
    if not return_aux:
        return out
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    return (out, _Aux(lse)) if "return_aux" in return_aux else (out, lse)


def _stub_fa4(q, k, v, *, return_lse=False, **kw):
    """``flash_attn_func`` stubbed: FlashAttention-4's ``(B, S, H, D)`` views in, an output of
    that shape out (and an lse when asked for)."""
    out = _StubAttention.apply(q, k, v)
    lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)
    return out, lse if return_lse else None


class _Tensors(tuple):
    def __new__(cls, *args, block_size=None):
        return super().__new__(cls, (*args, block_size))


def _cases(sa, p, s: int, d: int, flex=None) -> dict:
    """The calls to time at ``s`` tokens (Qwen2-7B heads), each a no-argument function."""
    q = torch.empty(1, 28, s, d, dtype=torch.bfloat16, requires_grad=True)
    k = torch.empty(1, 4, s, d, dtype=torch.bfloat16, requires_grad=True)
    v = torch.empty(1, 4, s, d, dtype=torch.bfloat16, requires_grad=True)
    qn, kn, vn = (t.detach() for t in (q, k, v))
    dout = torch.empty(1, 28, s, d, dtype=torch.bfloat16)

    def fwd_bwd(fn):
        def step():
            fn().backward(dout)
            q.grad = k.grad = v.grad = None

        return step

    def stub():
        return _stub(q, k, v, None, 0.1, True, None, {})

    def via_flex(fn):  # FlashAttention-4 reached through FlexAttention (the pre-session-20 path)
        def call():
            flex.FLASH_DIRECT = False
            try:
                return fn()
            finally:
                flex.FLASH_DIRECT = True

        return call

    return {
        "stub alone (fwd, grad)": stub,
        'sparse_attention(q, k, v, "power") fwd, grad': lambda: sa(q, k, v, "power"),
        "sparse_attention(q, k, v, pattern) fwd, grad": lambda: sa(q, k, v, p),
        "... backend='flash' fwd, grad": lambda: sa(q, k, v, p, backend="flash"),
        "... backend='flex' fwd, grad": lambda: sa(q, k, v, p, backend="flex"),
        "... no grad (inference prefill)": lambda: sa(qn, kn, vn, p),
        "... no grad, return_lse=True": lambda: sa(qn, kn, vn, p, return_lse=True),
        "stub alone fwd+bwd": fwd_bwd(stub),
        'sparse_attention(q, k, v, "power") fwd+bwd': fwd_bwd(lambda: sa(q, k, v, "power")),
        "... FLASH_DIRECT off: fwd, grad": via_flex(lambda: sa(q, k, v, "power")),
        "... FLASH_DIRECT off: no grad": via_flex(lambda: sa(qn, kn, vn, p)),
    }


def host_us(cases: dict, calls: int, rounds: int) -> dict[str, float]:
    """Median over rounds of the mean time per call (us) of each case; every round runs every
    case in turn, so that the machine's drift (other processes) falls on all of them alike."""
    for fn in cases.values():
        for _ in range(20):
            fn()
    per: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            per[name].append((time.perf_counter() - t) / calls * 1e6)
    return {name: round(statistics.median(ts), 2) for name, ts in per.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the tree to measure")
    ap.add_argument("--lengths", default="8192,32768")
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=15)
    # The host path never reads the head dim; at 128 the stub's (1, 28, S, 128) buffers go
    # through mmap/munmap on every call (glibc: above 32 MB), whose cost drifted by 4 us
    # between processes and hid the wrapper's; at 8 they come from the heap.
    ap.add_argument("--head-dim", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--profile", action="store_true", help="cProfile the first case instead")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="prefill-host-"))
    rewritten = _patched_package(args.src.resolve(), tmp)
    sys.path.insert(0, str(tmp))
    powerattn = importlib.import_module("powerattn")
    flex = importlib.import_module("powerattn.ops.flex")
    assert Path(powerattn.__file__).is_relative_to(tmp), powerattn.__file__
    flex._capability = lambda index: (9, 0)
    flex._flash_importable = True
    flex._flash_lse_scale = lambda index: 1.0
    flex._compiled.update(static=_stub, dynamic=_stub)
    try:  # trees since session 20: FlashAttention-4 called directly for Sq == Sk
        fa4 = importlib.import_module("powerattn.ops.fa4")
        fa4._fa4.update(func=_stub_fa4, tensors=_Tensors, causal=None)
    except ImportError:
        pass
    torch.compile  # noqa: B018 - the stub replaces what _compiled_fn would build

    sa = powerattn.sparse_attention
    p = powerattn.get_pattern("power", block_size=256)
    rows: dict[str, dict[str, float]] = {}
    lines = [
        f"torch {torch.__version__}, python {sys.version.split()[0]}, tree {args.src} "
        f"({rewritten} device tests swapped); us per call, median of {args.rounds} rounds x "
        f"{args.calls} calls; compiled flex_attention stubbed"
    ]
    for s in map(int, args.lengths.split(",")):
        cases = _cases(sa, p, s, args.head_dim, flex)
        for fn in cases.values():  # builds and caches the BlockMasks, checks the stub path
            fn()
        if args.profile:
            import cProfile
            import pstats

            fn = cases['sparse_attention(q, k, v, "power") fwd, grad']
            with cProfile.Profile() as prof:
                for _ in range(args.calls):
                    fn()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return 0
        rows[str(s)] = host_us(cases, args.calls, args.rounds)
        r = rows[str(s)]
        r["ours - stub, fwd (by name)"] = round(
            r['sparse_attention(q, k, v, "power") fwd, grad'] - r["stub alone (fwd, grad)"], 2
        )
        r["ours - stub, fwd+bwd (by name)"] = round(
            r['sparse_attention(q, k, v, "power") fwd+bwd'] - r["stub alone fwd+bwd"], 2
        )
        lines.append(f"S={s}:")
        lines += [f"  {t:8.2f}  {n}" for n, t in r.items()]
        print("\n".join(lines[-len(r) - 1 :]), flush=True)
    print(lines[0])
    if args.json:
        args.json.write_text(json.dumps({"header": lines[0], "host_us": rows}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
