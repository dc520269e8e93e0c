"""``powerattn bench e2e``: end-to-end prefill and decode of a Qwen2-7B-shaped transformers model.

The model is built from the Qwen2-7B config in code (28 layers, hidden 3584, 28 query heads,
4 KV heads, MLP 18944, vocab 152064, RoPE theta 1e6) with random bf16 weights, directly on the
GPU (no download). For each prompt length and attention variant it measures, with the default
``DynamicCache``:

* time to first token: one forward over the prompt with ``logits_to_keep=1`` (only the last
  position's logits: 128K x 152K bf16 logits would be 39 GB), plus the argmax;
* decode ms/token: a greedy loop of ``--decode-steps`` single-token forwards (what ``generate``
  does, minus its logits processors), synchronised once at the end;
* peak allocated GPU memory over prefill + decode.

Then, with transformers' ``StaticCache`` (:mod:`.e2e_static`): ms per decode step and tokens/s
at batch 1 and 8 (``--static-batches``), eager and as a CUDA-graph replay, for ``full`` and
``power``, with the context at each prompt length.

Variants: ``full`` (transformers' sdpa), ``power`` (PowerAttention, 256-token blocks, window 5,
sink 1), ``sliding_window`` (sink 1 + window at power's budget at the longest prompt) and
``hybrid`` (power, with 2 of every 7 layers full: layers 5, 6, 12, 13, 19, 20, 26, 27).

Compilation stays out of the numbers: each variant first runs a prefill + a few decode steps at
two short lengths (FlexAttention compiles a static kernel, then a length-generic one). Results
are written to ``--json`` after every measurement, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import inspect
import json
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..validate import add_list_argument, positive_int

DEFAULT_SEQ_LENS = (16384, 32768, 65536, 131072)
VARIANTS = ("full", "power", "sliding_window", "hybrid")
HYBRID_RULE = "2 of every 7"
TARGET_PREFILL_SPEEDUP = 2.8  # prefill at 128K >= 2.8x faster than full attention
TARGET_DECODE_RATIO = 0.40  # static-cache decode at 128K, batch 8: <= 40% of full's ms/token
TARGET_FLAT = 1.15  # static-cache decode: ms/token at 128K within 15% of 16K's
STATIC_VARIANTS = ("full", "power")
PROFILED = ("full", "power")  # profiled at the longest prompt with --profile


@dataclass
class ModelShape:
    """A Qwen2 architecture (defaults: Qwen2-7B)."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    rope_theta: float = 1e6


PRESETS = {
    "qwen2-7b": ModelShape(),
    # For trying the benchmark on a CPU: same code path, toy sizes.
    "tiny": ModelShape(1000, 128, 256, 2, 4, 2, 1e6),
}


@dataclass
class E2EConfig:
    model: str = "qwen2-7b"
    layers: int | None = None  # override num_hidden_layers (quick runs)
    seq_lens: tuple[int, ...] = DEFAULT_SEQ_LENS
    variants: tuple[str, ...] = VARIANTS
    decode_steps: int = 128
    block_size: int = 256
    warmup_lens: tuple[int, ...] = (2048, 4096)
    device: str = "cuda"
    time_budget_s: float | None = None  # skip measurements that would start after this
    check: bool = False  # smoke-check the integration on the device first
    static_batches: tuple[int, ...] = (1, 8)  # StaticCache decode batches (empty: skip)
    static_steps: int = 50
    profile_path: str | None = None
    seed: int = 0


# ----------------------------------------------------------------------------- helpers
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cache_kw() -> str:
    """transformers 5.2x renamed ``past_key_values`` to ``cache`` in model forwards."""
    from transformers import Qwen2ForCausalLM

    params = inspect.signature(Qwen2ForCausalLM.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def build_model(shape: ModelShape, device: torch.device, dtype: torch.dtype, max_len: int):
    """A randomly initialised Qwen2ForCausalLM, allocated and initialised on ``device``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=max_len,
        rope_theta=shape.rope_theta,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        use_sliding_window=False,
    )
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(config, dtype=dtype, attn_implementation="sdpa")
    return model.eval()


def variant_settings(name: str, block_size: int, budget_len: int) -> dict[str, Any] | None:
    """``apply`` keyword arguments of a variant (``None``: transformers' sdpa)."""
    from ..patterns import equal_budget, get_pattern

    if name == "full":
        return None
    power = get_pattern("power", block_size=block_size)
    if name == "power":
        return {"pattern": power}
    if name == "hybrid":
        return {"pattern": power, "full_layers": HYBRID_RULE}
    if name == "sliding_window":
        return {"pattern": equal_budget(budget_len, block_size)["sliding_window"]}
    raise ValueError(f"variant must be one of {VARIANTS}, got {name!r}")


def set_variant(model, name: str, block_size: int, budget_len: int) -> str:
    from .. import transformers as pt

    kw = variant_settings(name, block_size, budget_len)
    if kw is None:
        model.set_attn_implementation("sdpa")
        return "sdpa (dense causal)"
    pt.apply(model, **kw)
    s = pt.get_settings(model.config)
    full = sorted(s.full_layers)
    return s.pattern.describe() + (f", full layers {full}" if full else "")


def _forward(model, ids: torch.Tensor, cache, cache_kw: str) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kw: cache})
    return out.logits[:, -1:].argmax(-1)  # (B, 1)


def prefill_and_decode(
    model,
    seq_len: int,
    steps: int,
    device: torch.device,
    cache_kw: str,
    seed: int,
    after: Callable | None = None,
) -> dict[str, float]:
    """One timed prefill of ``seq_len`` random tokens, then ``steps`` timed decode steps;
    ``after(cache, token)`` runs once the timings are taken (profiling on the same cache)."""
    from transformers import DynamicCache

    g = torch.Generator(device="cpu").manual_seed(seed + seq_len)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=g).to(device)
    cache = DynamicCache()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    tok = _forward(model, ids, cache, cache_kw)
    _sync(device)
    t1 = time.perf_counter()
    prefill_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    for _ in range(steps):
        tok = _forward(model, tok, cache, cache_kw)
    _sync(device)
    t2 = time.perf_counter()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    res = {
        "prefill_s": t1 - t0,
        "decode_ms_per_token": 1e3 * (t2 - t1) / steps if steps else float("nan"),
        "decode_steps": steps,
        "peak_prefill_gib": prefill_peak / 2**30,
        "peak_gib": peak / 2**30,
    }
    if after is not None:
        after(cache, tok)
    return res


# ----------------------------------------------------------------------------- profiling
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


# ----------------------------------------------------------------------------- smoke check
def smoke_check(device: torch.device, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """Correctness of the integration on ``device`` with a small random Qwen2 (4 layers, 1024
    tokens, 64-token blocks, so the pattern drops keys): prefill logits against a float64 eager
    forward given the dense mask (relative to the same eager forward in ``dtype``), the decode
    step's logits against a full recompute, and the hybrid routing."""
    import copy

    from transformers import DynamicCache

    from .. import transformers as pt
    from ..patterns import get_pattern

    shape = ModelShape(1024, 512, 1024, 4, 8, 2, 1e6)
    torch.manual_seed(0)
    model = build_model(shape, device, dtype, 4096)
    pattern = get_pattern("power", block_size=64)
    S = 1024
    ids = torch.randint(0, shape.vocab_size, (1, S), device=device)
    dense = pattern.dense_mask(S).to(device)

    def eager(dt):
        ref = copy.deepcopy(model).to(dt)
        ref.set_attn_implementation("eager")
        add = torch.zeros(dense.shape, dtype=dt, device=device).masked_fill(~dense, float("-inf"))
        with torch.no_grad():
            return ref(ids, attention_mask=add[None, None]).logits.double()

    ref64, same = eager(torch.float64), eager(dtype)
    with torch.no_grad():
        full = model(ids).logits.double()
        pt.apply(model, pattern)
        out = model(ids).logits.double()
        # Decode: prefill S-1 tokens into a cache, then one step; against the recompute's last row.
        cache = DynamicCache()
        model(ids[:, :-1], use_cache=True, **{_cache_kw(): cache})
        step = model(ids[:, -1:], use_cache=True, **{_cache_kw(): cache}).logits.double()
        pt.apply(model, pattern, full_layers=list(range(shape.num_hidden_layers)))
        all_full = model(ids).logits.double()

    def err(a, b):
        return (a - b).abs().max().item()

    res = {
        "prefill_err": err(out, ref64),
        "prefill_err_same_precision_eager": err(same, ref64),
        "power_vs_full_diff": err(out, full),
        "decode_step_err_vs_ref": err(step[:, -1], ref64[:, -1]),
        "hybrid_all_full_vs_sdpa": err(all_full, full),
    }
    res["prefill_ok"] = res["prefill_err"] <= 2 * res["prefill_err_same_precision_eager"]
    res["decode_ok"] = res["decode_step_err_vs_ref"] <= 2 * res["prefill_err_same_precision_eager"]
    res["pattern_matters"] = res["power_vs_full_diff"] > 4 * res["prefill_err_same_precision_eager"]
    res["operator"] = operator_check(device, dtype)
    model.to("meta")  # free the weights before the big model is built
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def operator_check(device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """``sparse_attention`` ("auto") against the float64 reference, on q in transformers'
    memory layout (a transposed view of ``(B, S, H, D)``) and on contiguous q, for prefill and
    a single decode query; ``*_base`` is the same-precision dense reference's error."""
    from ..ops.api import sparse_attention
    from ..ops.reference import reference_attention
    from ..patterns import get_pattern

    out: dict[str, float] = {}
    g = torch.Generator(device="cpu").manual_seed(1)
    for bs, d, hq, hkv, s in ((64, 64, 8, 2, 1024), (256, 128, 28, 4, 4096)):
        p = get_pattern("power", block_size=bs)
        q = torch.randn(1, s, hq, d, generator=g).to(device, dtype).transpose(1, 2)
        k = torch.randn(1, hkv, s, d, generator=g).to(device, dtype)
        v = torch.randn(1, hkv, s, d, generator=g).to(device, dtype)
        ref = reference_attention(q, k, v, p, upcast=True)
        base = reference_attention(q, k, v, p)
        tag = f"bs{bs}_d{d}"
        out[f"{tag}_prefill_base"] = (base.double() - ref).abs().max().item()
        out[f"{tag}_decode_base"] = (base[:, :, -1:].double() - ref[:, :, -1:]).abs().max().item()
        for name, qq in (("transposed", q), ("contiguous", q.contiguous())):
            o = sparse_attention(qq, k, v, p)
            out[f"{tag}_prefill_{name}"] = (o.double() - ref).abs().max().item()
            o = sparse_attention(qq[:, :, -1:], k, v, p)
            out[f"{tag}_decode_{name}"] = (o.double() - ref[:, :, -1:]).abs().max().item()
        del ref, base
    return out


# ----------------------------------------------------------------------------- the run
def _meta(cfg: E2EConfig, device: torch.device, shape: ModelShape) -> dict[str, Any]:
    import transformers

    meta = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "model_shape": asdict(shape),
        "config": asdict(cfg),
        "dtype": "bfloat16",
        "batch": 1,
        "cache": "transformers DynamicCache",
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        pass
    return meta


def run(cfg: E2EConfig, json_path: str | None = None) -> dict[str, Any]:
    """Measure every (length, variant); returns ``{"meta", "smoke", "variants", "results",
    "profiles"}`` and rewrites ``json_path`` after each measurement."""
    start = time.perf_counter()
    device = torch.device(cfg.device)
    shape = PRESETS[cfg.model]
    if cfg.layers:
        shape = ModelShape(**{**asdict(shape), "num_hidden_layers": cfg.layers})
    doc: dict[str, Any] = {
        "meta": _meta(cfg, device, shape),
        "smoke": None,
        "variants": {},
        "results": [],
        "profiles": {},
    }

    def save() -> None:
        doc["meta"]["elapsed_s"] = time.perf_counter() - start
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            # The profile tables go to the --profile text file; keep the JSON small.
            slim = {**doc, "profiles": {k: _no_table(p) for k, p in doc["profiles"].items()}}
            with open(json_path, "w") as f:
                json.dump(slim, f, indent=2, default=str)
                f.write("\n")

    def over_budget() -> bool:
        return cfg.time_budget_s is not None and time.perf_counter() - start > cfg.time_budget_s

    if cfg.check:
        try:
            doc["smoke"] = smoke_check(device)
        except Exception as exc:  # noqa: BLE001 - record and go on to the timings
            doc["smoke"] = {"error": f"{type(exc).__name__}: {exc}", "trace": _tb()}
        print("smoke check:", json.dumps(doc["smoke"], default=str), flush=True)
        save()

    t0 = time.perf_counter()
    model = build_model(shape, device, torch.bfloat16, max(cfg.seq_lens) + cfg.decode_steps + 64)
    doc["meta"]["build_s"] = time.perf_counter() - t0
    print(f"built {cfg.model} ({shape.num_hidden_layers} layers) in {doc['meta']['build_s']:.1f} s")
    cache_kw = _cache_kw()
    budget_len = max(cfg.seq_lens)
    ok_variants = []
    with torch.no_grad():
        for name in cfg.variants:
            try:
                desc = set_variant(model, name, cfg.block_size, budget_len)
                doc["variants"][name] = desc
                t0 = time.perf_counter()
                for n in cfg.warmup_lens:
                    prefill_and_decode(model, n, 3, device, cache_kw, cfg.seed)
                doc["variants"][name] += f" [warm-up {time.perf_counter() - t0:.1f} s]"
                ok_variants.append(name)
            except Exception as exc:  # noqa: BLE001
                doc["variants"][name] = f"warm-up failed: {type(exc).__name__}: {exc}"
                print(doc["variants"][name], _tb(), flush=True)
            print(f"{name}: {doc['variants'][name]}", flush=True)
            save()

        print(_header(), flush=True)
        for seq_len in sorted(cfg.seq_lens, reverse=True):  # the headline length first
            for name in ok_variants:
                row: dict[str, Any] = {"variant": name, "seq_len": seq_len}
                if over_budget():
                    row["error"] = "skipped: time budget spent"
                else:
                    profiled = (
                        cfg.profile_path is not None and seq_len == budget_len and name in PROFILED
                    )

                    def after(cache, tok, name=name, seq_len=seq_len):
                        key = f"{name}_decode8_{seq_len}"
                        doc["profiles"][key] = _profile_decode(model, cache, tok, cache_kw, device)

                    try:
                        set_variant(model, name, cfg.block_size, budget_len)
                        row.update(
                            prefill_and_decode(
                                model,
                                seq_len,
                                cfg.decode_steps,
                                device,
                                cache_kw,
                                cfg.seed,
                                after if profiled else None,
                            )
                        )
                        if profiled and name != "full":
                            key = f"{name}_prefill_{seq_len}"
                            doc["profiles"][key] = _profile_prefill(
                                model, seq_len, cache_kw, device
                            )
                    except Exception as exc:  # noqa: BLE001 - one failure must not lose the rest
                        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                        print(_tb(), flush=True)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    if profiled:
                        _write_profiles(doc, cfg.profile_path)
                doc["results"].append(row)
                print(_row(row), flush=True)
                save()
        if cfg.static_batches and device.type == "cuda":
            _run_static(cfg, model, doc, ok_variants, budget_len, device, save, over_budget)
    summary = summarize(doc)
    doc["summary"] = summary
    save()
    return doc


def _run_static(cfg, model, doc, ok_variants, budget_len, device, save, over_budget) -> None:
    """StaticCache decode steps for full and power at every length and batch."""
    from .e2e_static import static_decode_step_ms

    doc["static_decode"] = []
    print(_static_header(), flush=True)
    for seq_len in sorted(cfg.seq_lens):
        for name in [v for v in ok_variants if v in STATIC_VARIANTS]:
            set_variant(model, name, cfg.block_size, budget_len)
            for batch in cfg.static_batches:
                row: dict[str, Any] = {"variant": name, "seq_len": seq_len, "batch": batch}
                if over_budget():
                    row["error"] = "skipped: time budget spent"
                else:
                    try:
                        row.update(
                            static_decode_step_ms(model, seq_len, batch, cfg.static_steps, device)
                        )
                    except Exception as exc:  # noqa: BLE001 - keep the other points
                        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                        print(_tb(), flush=True)
                    torch.cuda.empty_cache()
                doc["static_decode"].append(row)
                print(_static_row(row), flush=True)
                save()


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


def _tb() -> str:
    return traceback.format_exc(limit=6)


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Speed-ups against ``full`` at each length, and the targets at the longest one."""
    by = {(r["variant"], r["seq_len"]): r for r in doc["results"] if "prefill_s" in r}
    out: dict[str, Any] = {"prefill_speedup_vs_full": {}, "decode_ratio_vs_full": {}}
    lens = sorted({r["seq_len"] for r in doc["results"]})
    for (v, n), r in by.items():
        f = by.get(("full", n))
        if f is None or v == "full":
            continue
        out["prefill_speedup_vs_full"][f"{v}@{n}"] = f["prefill_s"] / r["prefill_s"]
        out["decode_ratio_vs_full"][f"{v}@{n}"] = (
            r["decode_ms_per_token"] / f["decode_ms_per_token"]
        )
    static = {
        (r["variant"], r["seq_len"], r["batch"]): r.get("graph_ms", r.get("eager_ms"))
        for r in doc.get("static_decode", [])
        if "eager_ms" in r
    }
    if static:
        top = max(n for _, n, _ in static)
        low = min(n for _, n, _ in static)
        ratio = {}
        for (v, n, b), ms in static.items():
            f = static.get(("full", n, b))
            if v != "full" and f:
                ratio[f"{v}@{n}/b{b}"] = ms / f
        out["static_decode_ratio_vs_full"] = ratio
        flat = {
            f"{v}/b{b}": static[(v, top, b)] / static[(v, low, b)]
            for (v, n, b) in static
            if n == top and (v, low, b) in static
        }
        out["static_decode_growth"] = {"from": low, "to": top, **flat}
        d = ratio.get(f"power@{top}/b8")
        g = flat.get("power/b8")
        out["static_targets"] = {
            "seq_len": top,
            "decode_ratio_b8": d,
            "decode_target": TARGET_DECODE_RATIO,
            "decode_met": None if d is None else d <= TARGET_DECODE_RATIO,
            "growth_b8": g,
            "growth_target": TARGET_FLAT,
            "growth_met": None if g is None else g <= TARGET_FLAT,
        }
    if lens:
        top = max(lens)
        s = out["prefill_speedup_vs_full"].get(f"power@{top}")
        d = out["decode_ratio_vs_full"].get(f"power@{top}")
        out["targets"] = {
            "seq_len": top,
            "prefill_speedup": s,
            "prefill_target": TARGET_PREFILL_SPEEDUP,
            "prefill_met": None if s is None else s >= TARGET_PREFILL_SPEEDUP,
            "decode_ratio_dynamic_cache": d,
        }
    return out


# ----------------------------------------------------------------------------- output
def _static_header() -> str:
    return (
        f"{'context':>8}  {'variant':<8} {'batch':>5} {'eager ms':>9} {'graph ms':>9} "
        f"{'tokens/s':>9}"
    )


def _static_row(r: dict[str, Any]) -> str:
    head = f"{r['seq_len']:>8}  {r['variant']:<8} {r['batch']:>5}"
    if "eager_ms" not in r:
        return f"{head} {r.get('error', '')}"
    graph = f"{r['graph_ms']:>9.2f}" if "graph_ms" in r else f"{'failed':>9}"
    tail = f"  ({r['graph_error']})" if "graph_error" in r else ""
    return f"{head} {r['eager_ms']:>9.2f} {graph} {r['tokens_per_s']:>9.0f}{tail}"


def _header() -> str:
    return (
        f"{'prompt':>8}  {'variant':<15} {'TTFT s':>8} {'x full':>7} {'decode ms/tok':>13} "
        f"{'% full':>7} {'peak GiB':>9}"
    )


def _row(r: dict[str, Any], full: dict[str, Any] | None = None) -> str:
    if "prefill_s" not in r:
        return f"{r['seq_len']:>8}  {r['variant']:<15} {r.get('error', '')}"
    sp = dr = ""
    if full and "prefill_s" in full:
        sp = f"{full['prefill_s'] / r['prefill_s']:.2f}x"
        dr = f"{r['decode_ms_per_token'] / full['decode_ms_per_token']:.0%}"
    return (
        f"{r['seq_len']:>8}  {r['variant']:<15} {r['prefill_s']:>8.3f} {sp:>7} "
        f"{r['decode_ms_per_token']:>13.2f} {dr:>7} {r['peak_gib']:>9.1f}"
    )


def print_table(doc: dict[str, Any]) -> None:
    m = doc["meta"]
    print(
        f"\n{m['device']}; torch {m['torch']}, transformers {m['transformers']}; "
        f"{m['model_shape']['num_hidden_layers']}-layer Qwen2 shape, bf16, batch 1, "
        f"decode over {m['config']['decode_steps']} steps"
    )
    for v, desc in doc["variants"].items():
        print(f"  {v}: {desc}")
    print(_header())
    full = {r["seq_len"]: r for r in doc["results"] if r["variant"] == "full"}
    for r in sorted(doc["results"], key=lambda r: (r["seq_len"], VARIANTS.index(r["variant"]))):
        print(_row(r, full.get(r["seq_len"])))
    t = doc.get("summary", {}).get("targets")
    if t and t.get("prefill_speedup") is not None:
        print(
            f"\nat {t['seq_len']:,} tokens, power vs full: prefill {t['prefill_speedup']:.2f}x "
            f"(target >= {t['prefill_target']}x: {'met' if t['prefill_met'] else 'missed'})"
        )
    if doc.get("static_decode"):
        print("\nStaticCache decode step (random context of the given length):")
        print(_static_header())
        for r in doc["static_decode"]:
            print(_static_row(r))
    st = doc.get("summary", {}).get("static_targets")
    if st and st.get("decode_ratio_b8") is not None:
        growth = st.get("growth_b8")
        grown = "n/a" if growth is None else f"{growth:.2f}x"
        print(
            f"at {st['seq_len']:,} tokens, batch 8: power decode {st['decode_ratio_b8']:.0%} of "
            f"full's (target <= {st['decode_target']:.0%}: "
            f"{'met' if st['decode_met'] else 'missed'}); power's step time grows {grown} "
            f"over the lengths (target <= {st['growth_target']}x)"
        )


def plot(doc: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    rows = [r for r in doc["results"] if "prefill_s" in r]
    full = {r["seq_len"]: r for r in rows if r["variant"] == "full"}
    for v in VARIANTS:
        rs = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["seq_len"])
        if not rs:
            continue
        x = [r["seq_len"] for r in rs]
        axes[0].plot(x, [r["prefill_s"] for r in rs], "o-", label=v)
        axes[1].plot(x, [r["decode_ms_per_token"] for r in rs], "o-", label=v)
        if v != "full":
            xs = [r["seq_len"] for r in rs if r["seq_len"] in full]
            pairs = [(full[n], r) for n, r in zip(x, rs, strict=True) if n in full]
            axes[2].plot(
                xs,
                [f["prefill_s"] / r["prefill_s"] for f, r in pairs],
                "o-",
                label=f"{v}: prefill speed-up",
            )
            axes[2].plot(
                xs,
                [f["decode_ms_per_token"] / r["decode_ms_per_token"] for f, r in pairs],
                "s--",
                label=f"{v}: decode speed-up",
            )
    axes[2].axhline(
        TARGET_PREFILL_SPEEDUP,
        color="k",
        lw=0.8,
        ls=":",
        label=f"prefill target {TARGET_PREFILL_SPEEDUP}x",
    )
    for v in STATIC_VARIANTS:
        for b in sorted({r["batch"] for r in doc.get("static_decode", [])}):
            rs = [
                r
                for r in doc.get("static_decode", [])
                if r["variant"] == v and r["batch"] == b and "eager_ms" in r
            ]
            if rs:
                axes[3].plot(
                    [r["seq_len"] for r in rs],
                    [r.get("graph_ms", r["eager_ms"]) for r in rs],
                    "o-" if v == "power" else "s--",
                    label=f"{v}, batch {b}",
                )
    titles = (
        "time to first token (s)",
        "decode ms / token (DynamicCache, eager)",
        "speed-up vs full (x)",
        "decode ms / step (StaticCache, CUDA graph)",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[3].set_xlabel("context tokens")
    m = doc["meta"]
    fig.suptitle(
        f"{m['config']['model']} shape ({m['model_shape']['num_hidden_layers']} layers), random "
        f"bf16 weights, batch 1 -- {m['device']}, torch {m['torch']}, "
        f"transformers {m['transformers']}",
        fontsize=10,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- CLI
def _main(args: argparse.Namespace) -> int:
    if args.from_json:
        if args.json:
            raise ValueError("--json writes a new run; --from-json runs nothing (drop one)")
        with open(args.from_json) as f:
            doc = json.load(f)
        doc.setdefault("summary", summarize(doc))
    else:
        if args.device is None:  # the GPU when there is one; the tiny model runs anywhere
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device here (use --device cpu --model tiny)")
        if args.device == "cpu" and args.model != "tiny":
            raise ValueError(
                f"--model {args.model} on the CPU would take hours: use --model tiny there"
            )
        cfg = E2EConfig(
            model=args.model,
            layers=args.layers,
            seq_lens=tuple(args.seq_lens),
            variants=tuple(args.variants),
            decode_steps=args.decode_steps,
            block_size=args.block_size,
            warmup_lens=tuple(args.warmup_lens),
            device=args.device,
            time_budget_s=args.time_budget,
            check=args.check,
            profile_path=args.profile,
            static_batches=tuple(args.static_batches),
            static_steps=args.static_steps,
        )
        doc = run(cfg, args.json)
    print_table(doc)
    if args.plot:
        plot(doc, args.plot)
        print(f"wrote {args.plot}")
    if args.json and not args.from_json:
        print(f"wrote {args.json}")
    return 0


def _variant(text: str) -> str:
    if text not in VARIANTS:
        raise argparse.ArgumentTypeError(f"unknown {text!r}; valid: {', '.join(VARIANTS)}")
    return text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "e2e",
        help="prefill / decode of a Qwen2-7B-shaped transformers model, per attention variant",
        description=(
            "End to end through transformers: time to first token, decode ms/token and peak "
            "memory of a randomly initialised Qwen2-7B-shaped model (bf16, batch 1) with full "
            "attention (sdpa), power, sliding window at power's budget, and hybrid power (2 of "
            "every 7 layers full). Needs a GPU for the real shape (--model tiny runs on a CPU)."
        ),
    )
    p.add_argument(
        "--model",
        choices=sorted(PRESETS),
        default="qwen2-7b",
        help="model shape: qwen2-7b (default) or tiny (a toy for CPU runs)",
    )
    p.add_argument("--layers", type=positive_int, help="override the number of layers")
    add_list_argument(
        p,
        "--seq-lens",
        positive_int,
        default=list(DEFAULT_SEQ_LENS),
        metavar="N",
        help="prompt lengths in tokens (default: 16384 32768 65536 131072)",
    )
    add_list_argument(
        p,
        "--variants",
        _variant,
        default=list(VARIANTS),
        metavar="V",
        help=f"attention variants among {', '.join(VARIANTS)} (default: all)",
    )
    p.add_argument(
        "--decode-steps", type=positive_int, default=128, help="decode steps timed (default 128)"
    )
    p.add_argument(
        "--block-size", type=positive_int, default=256, help="pattern block size (default 256)"
    )
    add_list_argument(
        p,
        "--warmup-lens",
        positive_int,
        default=[2048, 4096],
        metavar="N",
        help="untimed warm-up prompt lengths per variant (compile; default 2048 4096)",
    )
    p.add_argument(
        "--device", default=None, help="cuda (default when present) or cpu (with --model tiny)"
    )
    p.add_argument(
        "--time-budget",
        type=float,
        metavar="S",
        help="skip measurements that would start more than S seconds into the run",
    )
    p.add_argument("--check", action="store_true", help="smoke-check correctness on the device")
    add_list_argument(
        p,
        "--static-batches",
        positive_int,
        default=[1, 8],
        metavar="B",
        help="StaticCache decode batch sizes, full vs power (default: 1 8; skipped on a CPU)",
    )
    p.add_argument(
        "--static-steps",
        type=positive_int,
        default=50,
        help="StaticCache decode steps timed per point (default 50)",
    )
    p.add_argument("--profile", metavar="PATH", help="profile power and full at the top length")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON (incrementally)")
    p.add_argument("--plot", metavar="PATH", help="write a PNG")
    p.add_argument("--from-json", metavar="PATH", help="print/plot a saved JSON, run nothing")
    p.set_defaults(func=_main)
