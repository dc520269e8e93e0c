"""Decode kernel launch settings for short caches, inside a CUDA graph (B=1, Qwen2-7B, power).

A B=1 sweep with a correctness check per config (`bench.decode.bench_kernel_configs`,
which set session 5's constants, times without one).
scripts/gpu_decode_short.py (session 8) found a ~0.014 ms floor per call at 1K-8K keys for
every split count, against dense SDPA's 0.007-0.013. This sweeps the module's tile and launch
constants (BLOCK_N_MAX, NUM_WARPS, NUM_STAGES, EARLY_V_LOAD) at 2K, 8K and 32K keys; every
config is checked against a float32 masked reference before it is timed.

    PYTHONPATH=src OUT=$OUT python3 scripts/gpu_decode_tune.py      # ~1-2 minutes

``--sweep splits`` (session 15, for the 0.012-ms graph-replay target at 128K, where the kernel
is latency-bound: a split-K pass, then the combine by the last program): the module's
constants as they are, the number of splits per (batch, KV head) over 4..64 at 32K and 128K
keys (the default picks 24 there on an H200), each checked, then timed in a graph; writes
``decode_splits.json``.

    PYTHONPATH=src OUT=$OUT python3 scripts/gpu_decode_tune.py --sweep splits   # ~30 s
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import torch

from powerattn import get_pattern
from powerattn.bench.decode import _copies, _in_graph_ms, _read_frac
from powerattn.ops import decode as ops_decode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", choices=("tiles", "splits"), default="tiles")
    sweep = ap.parse_args().sweep
    out_dir = Path(os.environ.get("OUT", "/tmp/decode_tune"))
    out_dir.mkdir(parents=True, exist_ok=True)
    pattern = get_pattern("power")
    Hq, Hkv, D, dt = 28, 4, 128, torch.bfloat16
    sdpa = torch.nn.functional.scaled_dot_product_attention
    data = {}
    for s in (32768, 131072) if sweep == "splits" else (2048, 8192, 32768):
        g = torch.Generator(device="cuda").manual_seed(s)
        n = _copies(_read_frac(pattern, s) * 4 * Hkv * s * D, 4 * Hkv * s * D)
        q = torch.randn(1, Hq, 1, D, device="cuda", dtype=dt, generator=g)
        kvs = [tuple(torch.randn(1, Hkv, s, D, device="cuda", dtype=dt, generator=g)
                     for _ in range(2)) for _ in range(n)]  # fmt: skip
        k0, v0 = kvs[0]
        ref = sdpa(q.float(), k0.float().repeat_interleave(Hq // Hkv, 1),
                   v0.float().repeat_interleave(Hq // Hkv, 1),
                   attn_mask=pattern.dense_mask(1, s).to("cuda"))  # fmt: skip
        data[s] = (q, kvs, ref)
    if sweep == "splits":
        _sweep_splits(data, pattern, D, out_dir)
        return
    rows = []
    grid = itertools.product((32, 64, 128), (2, 4, 8), (1, 2, 3), (False, True))
    with torch.no_grad():
        for bn, warps, stages, early in grid:
            ops_decode.BLOCK_N_MAX, ops_decode.NUM_WARPS = bn, warps
            ops_decode.NUM_STAGES, ops_decode.EARLY_V_LOAD = stages, early
            ops_decode.clear_plans()
            for s, (q, kvs, ref) in data.items():
                err, ms = _check_and_time(q, kvs, ref, pattern, D)
                row = {"block_n": bn, "num_warps": warps, "num_stages": stages, "early_v": early,
                       "seq_len": s, "in_graph_ms": ms, "max_err": err}  # fmt: skip
                rows.append(row)
                print(f"BN={bn:3d} w={warps} st={stages} earlyV={early:d} S={s:6d} "
                      f"{ms:8.5f} ms err {err:.1e}")  # fmt: skip
            (out_dir / "decode_tune.json").write_text(
                json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1)
            )


def _check_and_time(q, kvs, ref, pattern, D, splits=None) -> tuple[float, float]:
    """(max error against the float32 reference, in-graph ms per call) of one setting; NaNs
    when it fails (a sweep keeps the other rows)."""

    def call(k, v):
        return ops_decode.decode_attention(
            q, k, v, pattern, D**-0.5, splits=splits, need_lse=False
        )[0]

    try:
        call(*kvs[0])
        err = (call(*kvs[0]).float() - ref).abs().max().item()
        return err, _in_graph_ms([lambda k=k, v=v: call(k, v) for k, v in kvs])
    except Exception as exc:  # noqa: BLE001 - a sweep: keep the other rows
        print(f"  failed: {exc!r}"[:300])
        return float("nan"), float("nan")


def _sweep_splits(data, pattern, D, out_dir: Path) -> None:
    """In-graph ms per call against the number of splits (None: the module's choice)."""
    rows = []
    with torch.no_grad():
        for s, (q, kvs, ref) in data.items():
            for splits in (None, 4, 8, 12, 16, 24, 32, 48, 64):
                err, ms = _check_and_time(q, kvs, ref, pattern, D, splits)
                rows.append({"seq_len": s, "splits": splits, "in_graph_ms": ms, "max_err": err})
                print(f"S={s:6d} splits={splits!s:>4} {ms:8.5f} ms err {err:.1e}")
            (out_dir / "decode_splits.json").write_text(
                json.dumps({"gpu": torch.cuda.get_device_name(), "rows": rows}, indent=1)
            )


if __name__ == "__main__":
    main()
