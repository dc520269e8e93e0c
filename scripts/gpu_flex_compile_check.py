"""Does a user's torch.compile around the FlexAttention path survive changes of length?

Session 7 found that every `experiment passkey --speed compile` run on FlexAttention died at
the first change of sequence length on the H200 (Dynamo guarded on the BlockMask cache:
"Guard failed on the same frame it was created"). Commit 68b81c6 looks the mask up outside
the trace. This checks the fix on CUDA with Inductor, the way the trainer compiles: a small
attention stack, forward + backward, lengths alternating with eager calls in between (an
evaluation); every compiled loss and gradient against the eager one (bf16: within 2x the
eager bf16 run's distance from float32). Prints one line per step and the graph count.

    OUT=$OUT PYTHONPATH=src python3 scripts/gpu_flex_compile_check.py   # ~1-2 min, nvidia-h200
    DEV=cpu LENGTHS=64,128 OUT=/tmp/x .venv/bin/python scripts/gpu_flex_compile_check.py  # plumbing

(On the CPU, ``auto`` takes the dense path: the plumbing runs, the FlexAttention path does not.)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from powerattn import get_pattern, sparse_attention

torch.manual_seed(0)
DEV = os.environ.get("DEV", "cuda")
PATTERN = get_pattern("power", block_size=32)
LENGTHS = [int(x) for x in os.environ.get("LENGTHS", "512,1024,2048").split(",")]
H, D, LAYERS = 4, 64, 2
W = [torch.randn(H * D, 3 * H * D, device=DEV) * (H * D) ** -0.5 for _ in range(LAYERS)]


def loss_fn(x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    B, S, _ = x.shape
    for w in weights:
        q, k, v = (x @ w.to(x.dtype)).view(B, S, 3, H, D).permute(2, 0, 3, 1, 4)
        x = x + sparse_attention(q, k, v, PATTERN).transpose(1, 2).reshape(B, S, H * D)
    return x.float().square().mean()


def grads(fn, x, dtype):
    ws = [w.detach().clone().requires_grad_(True) for w in W]
    loss = fn(x.to(dtype), ws)
    loss.backward()
    return loss.item(), [w.grad.float() for w in ws]


def main() -> None:
    out = Path(os.environ.get("OUT", "out"))
    out.mkdir(parents=True, exist_ok=True)
    compiled = torch.compile(loss_fn, dynamic=False)
    graphs0 = counters["stats"]["unique_graphs"]
    rows, ok = [], True
    for i, S in enumerate(LENGTHS * 2):
        x = torch.randn(2, S, H * D, device=DEV)
        grads(loss_fn, torch.randn(1, 64 * (1 + i % 3), H * D, device=DEV), torch.bfloat16)
        t = time.perf_counter()
        try:
            lc, gc = grads(compiled, x, torch.bfloat16)
        except Exception as e:  # the failure this checks for
            rows.append({"step": i, "S": S, "error": f"{type(e).__name__}: {e}"[:500]})
            print(rows[-1], flush=True)
            ok = False
            break
        dt = time.perf_counter() - t
        le, ge = grads(loss_fn, x, torch.bfloat16)
        l32, g32 = grads(loss_fn, x, torch.float32)
        err_c = max((a - b).abs().max().item() for a, b in zip(gc, g32, strict=True))
        err_e = max((a - b).abs().max().item() for a, b in zip(ge, g32, strict=True))
        # The eager bf16 run's own error is the yardstick; the loss, one number, can land near
        # float32 by chance, so its bound also allows one bf16 rounding of the loss.
        good = err_c <= 2 * err_e + 1e-6 and abs(lc - l32) <= 2 * abs(le - l32) + 2**-8 * abs(l32)
        ok &= good
        rows.append({"step": i, "S": S, "seconds": round(dt, 2), "grad_err_compiled": err_c,
                     "grad_err_eager_bf16": err_e, "loss": lc, "ok": good})  # fmt: skip
        print(rows[-1], flush=True)
    device = torch.cuda.get_device_name() if DEV == "cuda" else DEV
    graphs = counters["stats"]["unique_graphs"] - graphs0
    res = {"ok": ok, "graphs": graphs, "rows": rows, "torch": torch.__version__, "device": device}
    (out / "flex_compile_check.json").write_text(json.dumps(res, indent=1))
    print("PASSED" if ok else "FAILED", "graphs", res["graphs"])


if __name__ == "__main__":
    main()
