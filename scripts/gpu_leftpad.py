"""The decode step of a left-padded batch through the Hugging Face attention: one
``sparse_attention_with_kvcache(..., cache_leftpad=)`` call per layer (``KeyPlan.leftpad``)
against the row-by-row path it replaced (the same plan without ``leftpad``).

Correctness first (float32 one call against the float64 row-by-row reference, within the
tolerance of the float32 row-by-row path), then, on CUDA, ms per layer call for Qwen2-7B
attention shapes (28 query heads, 4 KV heads, head dim 128, bfloat16), batch 8, each row
left-padded by a different amount, at several cache lengths.

    OUT=$OUT PYTHONPATH=src python3 scripts/gpu_leftpad.py            # CUDA, ~1 min
    PYTHONPATH=src python3 scripts/gpu_leftpad.py --smoke             # CPU, tiny sizes

Writes ``$OUT/leftpad.json`` (rows ``{"context", "batch", "one_call_ms", "row_by_row_ms"}``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import torch

from powerattn import get_pattern
from powerattn.hf import attention as A
from powerattn.hf.masks import KeyPlan
from powerattn.hf.settings import LayerRoute
from powerattn.testing import FORWARD_FACTOR, check_close


def _batch(B, used, hq, hkv, d, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, used // 2, (B,), generator=g)
    starts[0] = 0  # one unpadded row
    valid = torch.arange(used)[None, :] >= starts[:, None]
    q = torch.randn(B, hq, 1, d, generator=g, dtype=torch.float64)
    k = torch.randn(B, hkv, used, d, generator=g, dtype=torch.float64)
    v = torch.randn(B, hkv, used, d, generator=g, dtype=torch.float64)
    cast = [x.to(device, dtype) for x in (q, k, v)]
    return valid.to(device), (q.to(device), k.to(device), v.to(device)), cast


def check(device, pattern, used, B=6) -> dict:
    route = LayerRoute(pattern, "auto", None)
    valid, exact, xs = _batch(B, used, 8, 2, 64, torch.float32, device, seed=1)
    plan = KeyPlan.from_mask(valid, 1)
    assert plan.leftpad is not None, "the left-padded mask did not give a leftpad plan"
    rows = dataclasses.replace(plan, leftpad=None)
    with torch.no_grad():
        out, _ = A._run(route, *xs, plan, 0.125, False)
        base, _ = A._run(route, *xs, rows, 0.125, False)
        ref, _ = A._run(LayerRoute(pattern, "dense", None), *exact, rows, 0.125, False)
    return check_close(out.cpu(), ref.cpu(), base.cpu(), FORWARD_FACTOR, used)


def _ms(fn, device, reps):
    with torch.no_grad():
        for _ in range(3):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - t) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (plumbing only)")
    args = ap.parse_args()
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    out_dir = Path(os.environ.get("OUT", "/tmp/leftpad"))
    out_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": str(device), "checks": [], "rows": []}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    report["torch"] = torch.__version__
    small = get_pattern("power", block_size=16, window=2, sink=1)
    for used in (37, 203) if args.smoke else (203, 3000):
        r = check(device, small if args.smoke else get_pattern("power", block_size=128), used)
        report["checks"].append({"used": used, **r})
        print(f"check used={used}: err {r['err']:.3g} <= tol {r['tol']:.3g}: {r['ok']}")
        if not r["ok"]:
            raise SystemExit("correctness check failed: no timings")
    pattern = small if args.smoke else get_pattern("power")
    contexts = (64, 256) if args.smoke else (8192, 32768, 131072)
    hq, hkv, d = (8, 2, 64) if args.smoke else (28, 4, 128)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    route = LayerRoute(pattern, "auto", None)
    for context in contexts:
        B = 8
        valid, _, xs = _batch(B, context, hq, hkv, d, dtype, device)
        plan = KeyPlan.from_mask(valid, 1)
        rows = dataclasses.replace(plan, leftpad=None)
        reps = 3 if args.smoke else 50
        one = _ms(lambda plan=plan, xs=xs: A._run(route, *xs, plan, d**-0.5, False), device, reps)
        per_row = _ms(
            lambda rows=rows, xs=xs: A._run(route, *xs, rows, d**-0.5, False), device, reps
        )
        row = {"context": context, "batch": B, "one_call_ms": one, "row_by_row_ms": per_row}
        report["rows"].append(row)
        print(f"context {context:>6} batch {B}: one call {one:.3f} ms, row by row "
              f"{per_row:.3f} ms ({per_row / one:.1f}x)")  # fmt: skip
        del xs
    (out_dir / "leftpad.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out_dir / 'leftpad.json'}")


if __name__ == "__main__":
    main()
