"""Short caches inside a CUDA graph: which decode route is fastest at 1K-32K keys?

Session 7 (results/kernel/README.md, "Decode, session 7"): inside a CUDA graph, ours took
~0.0145 ms per call at 2K-8K keys against dense SDPA's 0.008-0.013 (power reads 14-75 % of
the keys there). This times, per call of 32 calls captured in one graph (keys from HBM,
rotating over KV copies; bench.decode's helpers), one query, Qwen2-7B shapes, bf16, power:

* dense SDPA (no mask: the floor, not the pattern) and dense SDPA with the pattern's exact
  mask row (a candidate route);
* the decode kernel with ``splits`` in 1, 2, 4, 8, 16 and the default plan, fused (one launch,
  in-kernel combine) and unfused (a second combine kernel).

Correctness first: every candidate's output against a float32 reference with the pattern's
mask (max abs error; bf16 rounding is ~4e-3 here).

    PYTHONPATH=src OUT=$OUT python3 scripts/gpu_decode_short.py      # ~1 minute

Writes $OUT/decode_short_routes.json and prints one table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from powerattn import get_pattern
from powerattn.bench.decode import _copies, _in_graph_ms, _read_frac
from powerattn.ops import decode as ops_decode

SPLITS = (1, 2, 4, 8, 16, None)


def main() -> None:
    out_dir = Path(os.environ.get("OUT", "/tmp/decode_short"))
    out_dir.mkdir(parents=True, exist_ok=True)
    pattern = get_pattern("power")
    Hq, Hkv, D, dt = 28, 4, 128, torch.bfloat16
    sdpa = torch.nn.functional.scaled_dot_product_attention
    rows = []
    with torch.no_grad():
        for s in (1024, 2048, 4096, 8192, 16384, 32768):
            g = torch.Generator(device="cuda").manual_seed(s)
            n = _copies(_read_frac(pattern, s) * 2 * Hkv * s * D * 2, 2 * Hkv * s * D * 2)
            q = torch.randn(1, Hq, 1, D, device="cuda", dtype=dt, generator=g)
            kvs = [
                (
                    torch.randn(1, Hkv, s, D, device="cuda", dtype=dt, generator=g),
                    torch.randn(1, Hkv, s, D, device="cuda", dtype=dt, generator=g),
                )
                for _ in range(n)
            ]
            mask = pattern.dense_mask(1, s).to("cuda")
            k0, v0 = kvs[0]
            ref = sdpa(
                q.float(),
                k0.float().repeat_interleave(Hq // Hkv, 1),
                v0.float().repeat_interleave(Hq // Hkv, 1),
                attn_mask=mask,
            )
            cands = {
                "dense_sdpa (no mask)": lambda k, v, q=q: sdpa(q, k, v, enable_gqa=True),
                "dense_sdpa + mask row": lambda k, v, q=q, mask=mask: sdpa(
                    q, k, v, attn_mask=mask, enable_gqa=True
                ),
            }
            for fused in (True, False):
                for sp in SPLITS:
                    name = f"kernel splits={sp or 'default'} {'fused' if fused else 'unfused'}"
                    cands[name] = lambda k, v, sp=sp, fused=fused, q=q: ops_decode.decode_attention(
                        q, k, v, pattern, D**-0.5, splits=sp, fused=fused, need_lse=False
                    )[0]
            for name, fn in cands.items():
                try:
                    out = fn(k0, v0)
                    out = fn(k0, v0)  # the second call takes the direct launch
                    err = (out.float() - ref).abs().max().item()
                    ms = _in_graph_ms([lambda k=k, v=v, fn=fn: fn(k, v) for k, v in kvs])
                except Exception as exc:  # noqa: BLE001 - a sweep: keep the other rows
                    err, ms = float("nan"), float("nan")
                    print(f"  {name} at {s}: {exc!r}")
                rows.append({"seq_len": s, "route": name, "in_graph_ms": ms, "max_err": err})
                print(f"{s:6d}  {name:36s} {ms:8.5f} ms  err {err:.2e}")
            (out_dir / "decode_short_routes.json").write_text(
                json.dumps(
                    {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows},
                    indent=1,
                )  # fmt: skip
            )
            del kvs
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
