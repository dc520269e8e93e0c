"""Profiles for ``bench e2e``: device time split into matmul / attention / KV-cache copies /
other kernels, per prefill or decode steps."""

from __future__ import annotations

import json
import time
from typing import Any

import torch

from .e2e_model import _forward, _sync

_GEMM_KEYS = ("gemm", "cutlass", "nvjet", "xmma", "matmul", "cublas")
_ATTN_KEYS = ("flash", "fmha", "sdpa", "attention", "attn", "flex", "triton_tem", "decode")


def _device_time_us(evt) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, name):
            return float(getattr(evt, name))
    return 0.0


def profile_call(fn, device: torch.device) -> dict[str, Any]:
    """Run ``fn`` under torch.profiler; device time split into matmul / attention / other
    kernels, and the top kernels table."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        fn()
        _sync(device)
    wall = time.perf_counter() - t0
    cats = {"matmul": 0.0, "attention": 0.0, "kv_cache_cat": 0.0, "other": 0.0}
    kernels = []
    for evt in prof.key_averages():
        t = _device_time_us(evt)
        if t <= 0 or getattr(evt, "device_type", None) is None:
            continue
        if "DeviceType.CPU" in str(evt.device_type):
            continue
        name = evt.key.lower()
        if any(k in name for k in _ATTN_KEYS):  # first: cuDNN/flash names may hold "gemm"
            cat = "attention"
        elif any(k in name for k in _GEMM_KEYS):
            cat = "matmul"
        elif "catarray" in name:  # DynamicCache grows by torch.cat: copies the whole cache
            cat = "kv_cache_cat"
        else:
            cat = "other"
        cats[cat] += t
        kernels.append((t, cat, evt.key[:90], evt.count))
    kernels.sort(reverse=True)
    total = sum(cats.values())
    sort_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=sort_key, row_limit=25)
    except Exception:  # noqa: BLE001 - the table is a courtesy; the split above is the data
        table = ""
    return {
        "wall_ms": 1e3 * wall,
        "device_ms": total / 1e3,
        "device_ms_by_category": {k: v / 1e3 for k, v in cats.items()},
        "top_kernels": [
            {"ms": t / 1e3, "category": c, "name": n, "calls": k} for t, c, n, k in kernels[:15]
        ],
        "table": table,
    }


def _profile_decode(model, cache, tok, cache_kw: str, device: torch.device) -> dict[str, Any]:
    """Profile 8 more decode steps on a filled cache."""

    def steps():
        t = tok
        for _ in range(8):
            t = _forward(model, t, cache, cache_kw)

    try:
        return profile_call(steps, device)
    except Exception as exc:  # noqa: BLE001 - a profile is extra; keep the timings
        return {"error": f"{type(exc).__name__}: {exc}"}


def _profile_prefill(model, seq_len: int, cache_kw: str, device: torch.device) -> dict[str, Any]:
    """Profile one more prefill (sparse variants only: full's is dense SDPA, and long)."""
    from transformers import DynamicCache

    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), device=device)
    try:
        return profile_call(lambda: _forward(model, ids, DynamicCache(), cache_kw), device)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"}


def _no_table(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k != "table"}


def _write_profiles(doc: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        for key, p in doc["profiles"].items():
            f.write(f"===== {key}\n")
            f.write(json.dumps(_no_table(p), indent=1))
            f.write("\n" + p.get("table", "") + "\n\n")
