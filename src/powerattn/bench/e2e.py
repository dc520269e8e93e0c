"""``powerattn bench e2e``: end-to-end prefill and decode of a Qwen2-7B-shaped transformers model.

The model is built from the Qwen2-7B config in code (28 layers, hidden 3584, 28 query heads,
4 KV heads, MLP 18944, vocab 152064, RoPE theta 1e6) with random bf16 weights, directly on the
GPU (no download). For each prompt length and attention variant it measures, with the default
``DynamicCache``:

* time to first token: one forward over the prompt with ``logits_to_keep=1`` (only the last
  position's logits: 128K x 152K bf16 logits would be 39 GB), plus the argmax; timed on the
  second prompt of that length (``prefill_s``, the steady state of a server), the first one's
  time kept as ``prefill_first_s`` (a length not seen before may compile: FlexAttention and
  FlashAttention-4 specialise on the length);
* decode ms/token: a greedy loop of ``--decode-steps`` single-token forwards (what ``generate``
  does, minus its logits processors), synchronised once at the end;
* peak allocated GPU memory over prefill + decode.

Then, with transformers' ``StaticCache`` (:mod:`.e2e_static`): ms per decode step and tokens/s
at batch 1 and 8 (``--static-batches``), eager and as a CUDA-graph replay, for ``full`` and
``power``, with the context at each prompt length.

Variants: ``full`` (transformers' sdpa), ``power`` (PowerAttention, 256-token blocks, window 5,
sink 1), ``sliding_window`` (sink 1 + window at power's budget at the longest prompt) and
``hybrid`` (power, with 2 of every 7 layers full: layers 5, 6, 12, 13, 19, 20, 26, 27; a
model too shallow for the rule keeps at least one sparse layer: 2 layers -> layer 1 full,
and a 1-layer model has no hybrid row).

On the CPU (``--device cpu``, or no CUDA) the defaults shrink to a plumbing check of a few
seconds (:data:`CPU_DEFAULTS`: the tiny model, 512-2048 tokens, 64-token blocks so that the
patterns are sparse at those lengths); CPU timings say nothing about the GPU.

Compilation stays out of ``prefill_s`` and the decode numbers: each variant first runs a
prefill + a few decode steps at two short lengths (the decode kernel and the first compiles),
and each length's timed prefill is its second. Results are written to ``--json`` after every
measurement, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..validate import add_list_argument, positive_int
from . import runner
from .e2e_checks import smoke_check
from .e2e_model import (  # noqa: F401 - the benchmark's API in one import
    HYBRID_RULE,
    PRESETS,
    VARIANTS,
    ModelShape,
    _cache_kw,
    _forward,
    _sync,
    build_model,
    set_variant,
    variant_settings,
)
from .e2e_profile import _no_table, _profile_decode, _profile_prefill, _write_profiles
from .e2e_report import (
    COLUMNS,
    STATIC_COLUMNS,
    STATIC_VARIANTS,
    plot,
    print_table,
    summarize,
)

DEFAULT_SEQ_LENS = (16384, 32768, 65536, 131072)
# The flags whose default depends on the device (flag -> value): the GPU's are the paper's
# setting; the CPU's finish in seconds (the Qwen2-7B shape at 16K would take hours there).
GPU_DEFAULTS: dict[str, Any] = {
    "model": "qwen2-7b",
    "seq_lens": DEFAULT_SEQ_LENS,
    "warmup_lens": (2048, 4096),
    "decode_steps": 128,
    "block_size": 256,
}
CPU_DEFAULTS: dict[str, Any] = {
    "model": "tiny",
    "seq_lens": (512, 1024, 2048),
    "warmup_lens": (256,),
    "decode_steps": 8,
    "block_size": 64,  # 256-token blocks would leave power dense at 512-2048 tokens
}
PROFILED = ("full", "power")  # profiled at the longest prompt with --profile


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


def prefill_and_decode(
    model,
    seq_len: int,
    steps: int,
    device: torch.device,
    cache_kw: str,
    seed: int,
    after: Callable | None = None,
) -> dict[str, float]:
    """Two prefills of the same ``seq_len`` random tokens: the first (``prefill_first_s``: a
    prompt length this process has not seen, with whatever compiles that costs) and the
    timed one (``prefill_s``: the same length again, what a server pays per prompt); then
    ``steps`` timed decode steps. ``after(cache, token)`` runs once the timings are taken
    (profiling on the same cache)."""
    g = torch.Generator(device="cpu").manual_seed(seed + seq_len)
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), generator=g).to(device)
    first_s, _ = _timed_prefill(model, ids, cache_kw, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    prefill_s, (tok, cache) = _timed_prefill(model, ids, cache_kw, device)
    prefill_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    t1 = time.perf_counter()
    for _ in range(steps):
        tok = _forward(model, tok, cache, cache_kw)
    _sync(device)
    t2 = time.perf_counter()
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    res = {
        "prefill_s": prefill_s,
        "prefill_first_s": first_s,
        "decode_ms_per_token": 1e3 * (t2 - t1) / steps if steps else float("nan"),
        "decode_steps": steps,
        "peak_prefill_gib": prefill_peak / 2**30,
        "peak_gib": peak / 2**30,
    }
    if after is not None:
        after(cache, tok)
    return res


def _timed_prefill(model, ids: torch.Tensor, cache_kw: str, device: torch.device):
    """Seconds of one prefill (synchronised), and its (next token, cache)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    _sync(device)
    t0 = time.perf_counter()
    tok = _forward(model, ids, cache, cache_kw)
    _sync(device)
    return time.perf_counter() - t0, (tok, cache)


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
    "profiles"}`` (+ ``"static_decode"``, ``"summary"``) and rewrites ``json_path`` after
    each measurement.

    The smoke check and the per-variant warm-up (compiles) run first, once; then two
    benchmarks on :mod:`.runner`: lengths x variants with the DynamicCache
    (:func:`dynamic_benchmark`), then lengths x {full, power} with the StaticCache on CUDA
    (:func:`static_benchmark`). A failed or skipped cell is a row with an ``error``, so one
    failure does not lose the rest."""
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
        # The profile tables go to the --profile text file; keep the JSON small.
        slim = {**doc, "profiles": {k: _no_table(p) for k, p in doc["profiles"].items()}}
        runner.write_json(json_path, slim, indent=2, newline=True, default=str)

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
    built = f"built {cfg.model} ({shape.num_hidden_layers} layers)"
    _progress(f"{built} in {doc['meta']['build_s']:.1f} s")
    cache_kw = _cache_kw()
    budget_len = max(cfg.seq_lens)
    ok_variants = []
    with torch.no_grad():
        for name in cfg.variants:
            if name == "hybrid" and shape.num_hidden_layers < 2:
                # Power plus full layers needs two layers; with one it is power or full.
                doc["variants"][name] = "skipped: a 1-layer model has no hybrid (needs 2+)"
                _progress(f"{name}: {doc['variants'][name]}")
                continue
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
                _progress(_tb())
            _progress(f"{name}: {doc['variants'][name]}")
            save()

        def record(key: str, columns) -> Callable[[dict[str, Any]], None]:
            # Each row is saved as soon as measured and logged to stderr as progress, one
            # line without a header: the table itself is printed once, at the end.
            def on_row(row: dict[str, Any]) -> None:
                doc[key].append(row)
                _progress(_progress_line(row, columns))
                save()

            return on_row

        bench = dynamic_benchmark(cfg, model, device, cache_kw, ok_variants, doc, over_budget)
        runner.run(bench, log=None, on_row=record("results", bench.columns))
        if cfg.static_batches and device.type == "cuda":
            doc["static_decode"] = []
            bench = static_benchmark(cfg, model, device, ok_variants, over_budget)
            runner.run(bench, log=None, on_row=record("static_decode", bench.columns))
    summary = summarize(doc)
    doc["summary"] = summary
    save()
    return doc


def _progress(msg: str) -> None:
    """A progress line: stderr, so that stdout holds the results once."""
    print(msg, file=sys.stderr, flush=True)


def _progress_line(row: dict[str, Any], columns) -> str:
    """One measured row as a labelled line (``prompt 1024, variant power, TTFT s 0.031,
    ...``): the table's cells without its layout."""
    cells = []
    for c in columns:
        cell = c.text(row).strip()
        if cell:
            cells.append(f"{c.header} {cell}" if c.header else cell)
    return ", ".join(cells)


def _failed(exc: Exception) -> dict[str, str]:
    _progress(_tb())
    return {"error": f"{type(exc).__name__}: {exc}"[:500]}


def dynamic_benchmark(
    cfg: E2EConfig,
    model,
    device: torch.device,
    cache_kw: str,
    variants: list[str],
    doc: dict[str, Any],
    over_budget: Callable[[], bool],
) -> runner.Benchmark:
    """Prefill + decode with the DynamicCache: one config per prompt length (the headline,
    longest, first), one provider per warmed-up variant; with ``cfg.profile_path``, full and
    power are also profiled at the longest length (into ``doc["profiles"]``, the text file
    rewritten as each arrives)."""
    budget_len = max(cfg.seq_lens)

    def measure(config: dict[str, Any], name: str, state: None) -> dict[str, Any]:
        seq_len = config["seq_len"]
        if over_budget():
            return {"error": "skipped: time budget spent"}
        profiled = cfg.profile_path is not None and seq_len == budget_len and name in PROFILED

        def after(cache, tok):
            key = f"{name}_decode8_{seq_len}"
            doc["profiles"][key] = _profile_decode(model, cache, tok, cache_kw, device)

        row: dict[str, Any] = {}
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
            if profiled:  # full too: what both variants share is the bound on the speed-up
                key = f"{name}_prefill_{seq_len}"
                doc["profiles"][key] = _profile_prefill(model, seq_len, cache_kw, device)
        except Exception as exc:  # noqa: BLE001 - one failure must not lose the rest
            row.update(_failed(exc))
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if profiled:
            _write_profiles(doc, cfg.profile_path)
        return row

    return runner.Benchmark(
        name="e2e",
        configs=[{"seq_len": n} for n in sorted(cfg.seq_lens, reverse=True)],
        providers=variants,
        measure=measure,
        provider_key="variant",
        value_key="prefill_s",
        columns=COLUMNS,
    )


def static_benchmark(
    cfg: E2EConfig,
    model,
    device: torch.device,
    variants: list[str],
    over_budget: Callable[[], bool],
) -> runner.Benchmark:
    """StaticCache decode steps (CUDA): one config per context length (shortest first), one
    provider per variant of :data:`STATIC_VARIANTS`, each cell a row per batch size."""
    from .e2e_static import static_decode_step_ms

    budget_len = max(cfg.seq_lens)

    def measure(config: dict[str, Any], name: str, state: None) -> list[dict[str, Any]]:
        seq_len = config["seq_len"]
        set_variant(model, name, cfg.block_size, budget_len)
        rows = []
        for batch in cfg.static_batches:
            row: dict[str, Any] = {"batch": batch}
            if over_budget():
                row["error"] = "skipped: time budget spent"
            else:
                try:
                    row.update(
                        static_decode_step_ms(model, seq_len, batch, cfg.static_steps, device)
                    )
                except Exception as exc:  # noqa: BLE001 - keep the other points
                    row.update(_failed(exc))
                torch.cuda.empty_cache()
            rows.append(row)
        return rows

    return runner.Benchmark(
        name="e2e_static",
        configs=[{"seq_len": n} for n in sorted(cfg.seq_lens)],
        providers=[v for v in variants if v in STATIC_VARIANTS],
        measure=measure,
        provider_key="variant",
        value_key="eager_ms",
        columns=STATIC_COLUMNS,
    )


def _tb() -> str:
    return traceback.format_exc(limit=6)


# ----------------------------------------------------------------------------- CLI
def _main(args: argparse.Namespace) -> int:
    if args.from_json:
        if args.json:
            raise ValueError("--json writes a new run; --from-json runs nothing (drop one)")
        with open(args.from_json) as f:
            doc = json.load(f)
        doc.setdefault("summary", summarize(doc))
    else:
        resolve_defaults(args)
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


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the device (CUDA when present, else the CPU) and the flags left unset with
    :data:`GPU_DEFAULTS` or, on the CPU, :data:`CPU_DEFAULTS` (in place; returned)."""
    return runner.resolve_device_defaults(args, GPU_DEFAULTS, CPU_DEFAULTS)


def _both(flag: str) -> str:
    return runner.device_defaults_help(flag, GPU_DEFAULTS, CPU_DEFAULTS)


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
            "every 7 layers full; a model shallower than that keeps at least one sparse layer: "
            "with 2 layers only layer 1 is full, with 1 there is no hybrid row). "
            "The real shape needs a GPU. "
            "Defaults depend on the device: on CUDA the Qwen2-7B shape at 16K-128K tokens; on "
            "the CPU (--device cpu, or no CUDA) the tiny model at 512-2048 tokens with "
            "64-token blocks, a plumbing check of a few seconds whose timings mean nothing "
            "for the GPU. Progress goes to stderr; the tables, once, to stdout."
        ),
    )
    p.add_argument(
        "--model",
        choices=sorted(PRESETS),
        default=None,
        help=f"model shape: qwen2-7b or tiny, a toy for CPU runs ({_both('model')})",
    )
    p.add_argument("--layers", type=positive_int, help="override the number of layers")
    add_list_argument(
        p,
        "--seq-lens",
        positive_int,
        default=None,
        metavar="N",
        help=f"prompt lengths in tokens ({_both('seq_lens')})",
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
        "--decode-steps",
        type=positive_int,
        default=None,
        help=f"decode steps timed ({_both('decode_steps')})",
    )
    p.add_argument(
        "--block-size",
        type=positive_int,
        default=None,
        help=f"pattern block size in tokens ({_both('block_size')})",
    )
    add_list_argument(
        p,
        "--warmup-lens",
        positive_int,
        default=None,
        metavar="N",
        help=f"untimed warm-up prompt lengths per variant, compiling ({_both('warmup_lens')})",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cuda (default when present) or cpu (default without CUDA; only --model tiny)",
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
