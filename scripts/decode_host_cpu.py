"""Host time of the public decode call, measured on a CPU-only machine (issue 9, decode).

An eager decode call is host-bound on the H200 (results/kernel/README.md, "Decode, session
5"). This times the Python path from ``sparse_attention(...)`` down to the Triton launch, with
the launch itself replaced by a no-op, so that it runs without a GPU:

* the package is copied to a temporary folder where the device-type tests of ``ops/api.py``
  and ``ops/decode.py`` (``.type == "cuda"``) read ``"cpu"``: CPU tensors take the CUDA code
  path (auto picks the decode kernel, the direct launcher is used);
* ``torch.cuda``'s stream/capture/property queries are stubbed (constant answers, 132 SMs as
  on an H200), and the kernel is a fake whose compiled launcher does nothing (it still takes
  every argument, as Triton's launcher does).

Qwen2-7B attention shapes (B=1, Hq=28, Hkv=4, D=128, bf16, pattern ``power``), 8K..128K
keys. Per case: the median over ``--rounds`` rounds of the mean host time of ``--calls``
calls. CPU numbers: compare before/after on one machine, not with GPU-host numbers.

    .venv/bin/python scripts/decode_host_cpu.py                     # this tree
    git archive HEAD src | tar -x -C /tmp/before && \\
        .venv/bin/python scripts/decode_host_cpu.py --src /tmp/before/src   # another tree
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
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]


def _patched_package(src: Path, dest: Path) -> int:
    """Copy ``src/powerattn`` to ``dest`` with the ops' CUDA device tests pointed at the CPU;
    return the number of tests rewritten."""
    shutil.copytree(src / "powerattn", dest / "powerattn")
    n = 0
    for rel in ("ops/api.py", "ops/decode.py"):
        path = dest / "powerattn" / rel
        text = path.read_text()
        n += text.count('.type == "cuda"')
        path.write_text(text.replace('.type == "cuda"', '.type == "cpu"'))
    return n


def _stub_cuda() -> None:
    torch._C._cuda_getCurrentRawStream = lambda index: 0
    torch._C._cuda_isCurrentStreamCapturing = lambda: False
    torch.cuda.is_current_stream_capturing = lambda: False
    torch.cuda.get_device_properties = lambda device=None: SimpleNamespace(
        multi_processor_count=132
    )


class _FakeCompiled:
    def __getitem__(self, grid):
        def runner(*args, stream=None):  # Triton's launcher takes every argument
            return None

        return runner


class _FakeKernel:
    """``kernel[grid](*args, **consts)`` returns a compiled kernel whose launcher is a no-op;
    counts these (Triton's slow path: compiling or binding arguments)."""

    usual = 0

    def __getitem__(self, grid):
        def launch(*args, **consts):
            _FakeKernel.usual += 1
            return _FakeCompiled()

        return launch


def _cases(powerattn, q, k, v, p) -> dict:
    sa = powerattn.sparse_attention
    # A dynamic cache: each step a contiguous K/V one token longer (strides change per call),
    # as views of one buffer: 256 lengths in one bucket (more than a step keeps launchers for).
    s = k.shape[2] - 256
    buf = torch.empty(4 * k.shape[2] * 128, dtype=k.dtype)
    grow = [
        buf.as_strided((1, 4, n, 128), (4 * n * 128, n * 128, 128, 1)) for n in range(s, s + 256)
    ]
    it = iter(range(1 << 62))
    dec = sys.modules["powerattn.ops.decode"]
    cases = {
        "sparse_attention(q, k, v, pattern)": lambda: sa(q, k, v, p),
        'sparse_attention(q, k, v, "power")': lambda: sa(q, k, v, "power"),
        "sparse_attention(..., backend='decode')": lambda: sa(q, k, v, p, backend="decode"),
        "sparse_attention(..., return_lse=True)": lambda: sa(q, k, v, p, return_lse=True),
        "power_attention(q, k, v)": lambda: powerattn.power_attention(q, k, v),
        "growing Sk (new strides each call)": lambda: (lambda kv: sa(q, kv, kv, p))(
            grow[next(it) % 256]
        ),
    }
    if hasattr(dec, "_steps"):  # a first call (or a miss): the full path and the caching

        def miss():
            dec._steps.clear()
            return sa(q, k, v, p)

        cases["first call (steps cleared before each)"] = miss
    return cases


def host_us(fn, calls: int, rounds: int) -> float:
    for _ in range(50):
        fn()
    per = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        per.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(per)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the tree to measure")
    ap.add_argument("--lengths", default="8192,16384,32768,65536,131072")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="decode-host-"))
    rewritten = _patched_package(args.src.resolve(), tmp)
    sys.path.insert(0, str(tmp))
    _stub_cuda()
    powerattn = importlib.import_module("powerattn")
    dec = importlib.import_module("powerattn.ops.decode")
    assert Path(powerattn.__file__).is_relative_to(tmp), powerattn.__file__
    dec._decode_kernel = _FakeKernel()
    dec.FAST_LAUNCH = True

    sparse_attention = powerattn.sparse_attention
    p = powerattn.get_pattern("power", block_size=256)
    q = torch.randn(1, 28, 1, 128, dtype=torch.bfloat16)
    runner = _FakeCompiled()[None]
    noop_args = tuple(range(47))
    rows: dict[str, dict[str, float]] = {}
    lines = [
        f"torch {torch.__version__}, python {sys.version.split()[0]}, tree {args.src} "
        f"({rewritten} device tests pointed at the CPU); us per call, median of "
        f"{args.rounds} rounds x {args.calls} calls"
    ]
    base = host_us(lambda: runner(*noop_args, stream=0), args.calls, args.rounds)
    lines.append(f"no-op launcher alone (47 args): {base:.2f} us")
    for s in map(int, args.lengths.split(",")):
        k = torch.empty(1, 4, s, 128, dtype=torch.bfloat16)
        v = torch.empty_like(k)
        out = sparse_attention(q, k, v, p)  # plan, compile (fake), launcher cached
        assert out.shape == q.shape
        cases = _cases(powerattn, q, k, v, p)
        rows[str(s)] = {}
        for name, fn in cases.items():
            fn()  # the direct launcher is cached by the second call
            usual = _FakeKernel.usual
            rows[str(s)][name] = round(host_us(fn, args.calls, args.rounds), 2)
            assert _FakeKernel.usual == usual, f"{name}: Triton's slow launch while timing"
        lines.append(f"Sk={s:>6}: " + ", ".join(f"{n} {t:.2f}" for n, t in rows[str(s)].items()))
        print(lines[-1], flush=True)
    print("\n".join(lines[:2]))
    if args.json:
        args.json.write_text(json.dumps({"noop_launcher_us": base, "host_us": rows}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
