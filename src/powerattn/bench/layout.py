"""``powerattn bench layout``: how long the analytic layout and the receptive-field analysis
take on the CPU, for every pattern at an equal budget.

For each sequence length and pattern it times, separately and as a user calls them:
``pattern.block_layout(n)``, ``hops(pattern, seq_len)`` and ``coverage(pattern, seq_len,
layers)`` (each of the last two rebuilds the layout, so the total over-counts the layout
twice: an upper bound). The issue's target: total < 1 s at 1M tokens (4096 blocks of 256).
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Any

import numpy as np

from ..patterns import PATTERNS, equal_budget, pattern_names
from ..receptive import coverage, hops
from ..validate import add_list_argument, positive_int
from . import runner
from .runner import Benchmark, Column, Plot

DEFAULT_SEQ_LENS = (32768, 131072, 262144, 1048576)
TARGET_S = 1.0  # the goal for the whole analysis at 1M tokens


def _best_of(fn, repeats: int) -> float:
    """Fastest of ``repeats`` wall-clock runs of ``fn()``, in seconds (the least noisy
    estimate on a shared CPU)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _check_names(patterns: list[str] | None) -> list[str]:
    names = pattern_names() if not patterns else list(patterns)
    unknown = [p for p in names if p not in pattern_names()]
    if unknown:
        raise ValueError(f"--patterns: unknown {unknown}; valid: {', '.join(pattern_names())}")
    return names


COLUMNS = (
    Column("seq_len", "seq_len", 9, ",", align=">"),
    Column("num_blocks", "blocks", 7, "d", align=">"),
    Column("pattern", "pattern", 15),
    Column("max_degree", "degree", 6, "d", align=">"),
    Column("layout_ms", "layout ms", 10, ".1f", align=">"),
    Column("hops_ms", "hops ms", 9, ".1f", align=">"),
    Column("coverage_ms", "coverage ms", 11, ".1f", align=">"),
    Column("total_ms", "total ms", 9, ".1f", align=">"),
)


def _color(name: str) -> str:
    from ..plots import pattern_color

    return pattern_color(name)


PLOT = Plot(
    x="seq_len", y="total_ms", line="pattern", xlabel="sequence length (tokens)",
    ylabel="layout + hops + coverage, ms (log)", color=_color,
)  # fmt: skip


def benchmark(
    seq_lens: tuple[int, ...] = DEFAULT_SEQ_LENS,
    block_size: int = 256,
    layers: int = 28,
    repeats: int = 3,
    patterns: list[str] | None = None,
) -> Benchmark:
    """The benchmark as the runner sees it: one config per sequence length, one provider per
    pattern (at an equal budget there: :func:`powerattn.equal_budget`)."""
    names = _check_names(patterns)

    def measure(cfg, name, pats):
        p, seq_len = pats[name], cfg["seq_len"]
        n = p.num_blocks(seq_len)
        t_layout = _best_of(lambda: p.block_layout(n), repeats)
        t_hops = _best_of(lambda: hops(p, seq_len), repeats)
        t_cov = _best_of(lambda: coverage(p, seq_len, layers), repeats)
        return {
            "num_blocks": n,
            "pattern_desc": p.describe(),
            "max_degree": p.max_degree(n),
            "layout_ms": 1e3 * t_layout,
            "hops_ms": 1e3 * t_hops,
            "coverage_ms": 1e3 * t_cov,
            "total_ms": 1e3 * (t_layout + t_hops + t_cov),
        }

    return Benchmark(
        name="layout",
        configs=[{"seq_len": s} for s in seq_lens],
        providers=[n for n in PATTERNS if n in names],  # registration order
        setup=lambda cfg: equal_budget(cfg["seq_len"], block_size),
        measure=measure,
        provider_key="pattern",
        value_key="total_ms",
        columns=COLUMNS,
        plot=PLOT,
    )


def run(
    seq_lens: tuple[int, ...] = DEFAULT_SEQ_LENS,
    block_size: int = 256,
    layers: int = 28,
    repeats: int = 3,
    patterns: list[str] | None = None,
    log=print,
) -> list[dict[str, Any]]:
    """Time layout + analysis for every pattern (at equal budget) at each length.

    Returns one record per (seq_len, pattern) with the times in milliseconds; ``patterns``
    (default: every registered one) are timed in registration order. ``log`` gets each
    record as a table line as it is measured (``None``: quiet)."""
    bench = benchmark(seq_lens, block_size, layers, repeats, patterns)
    return runner.run(bench, log)["rows"]


def _main(args: argparse.Namespace) -> int:
    import torch

    _check_names(args.patterns)
    print(
        f"CPU: {cpu_model()}; numpy {np.__version__}, torch {torch.__version__}; "
        f"best of {args.repeats}; block size {args.block_size}, {args.layers} layers; "
        "patterns at equal budget"
    )
    print("  " + runner.table([], COLUMNS))
    rows = run(tuple(args.seq_lens), args.block_size, args.layers, args.repeats, args.patterns)
    big = max(r["seq_len"] for r in rows)
    slow = [r["pattern"] for r in rows if r["seq_len"] == big and r["total_ms"] > 1e3 * TARGET_S]
    verdict = "all under" if not slow else "over: " + ", ".join(slow) + " --"
    print(f"\nat {big:,} tokens: {verdict} the {TARGET_S:g} s target")
    if args.json:
        meta = {
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "repeats": args.repeats,
            "block_size": args.block_size,
            "layers": args.layers,
            "target_s": TARGET_S,
        }
        runner.write_json(args.json, {"meta": meta, "results": rows}, indent=2, newline=True)
        print(f"wrote {args.json}")
    if args.plot:
        runner.plot(
            rows, PLOT, args.plot,
            title=f"{cpu_model()}: block {args.block_size}, {args.layers} layers, best of "
            f"{args.repeats}",
        )  # fmt: skip
        print(f"wrote {args.plot}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "layout",
        help="CPU time of block_layout + hops + coverage for every pattern",
        description=(
            "Time the analytic block layout and the receptive-field analysis (hops, coverage) "
            "of every pattern at an equal budget, on the CPU. Each figure is the best of "
            "--repeats runs. Target: under 1 s in total at 1M tokens (4096 blocks of 256)."
        ),
    )
    add_list_argument(
        p,
        "--seq-lens",
        positive_int,
        default=list(DEFAULT_SEQ_LENS),
        metavar="N",
        help="sequence lengths in tokens, space- or comma-separated (default: 32K 128K 256K 1M)",
    )
    p.add_argument(
        "--block-size", type=positive_int, default=256, help="tokens per block (default 256)"
    )
    p.add_argument(
        "--layers", type=positive_int, default=28, help="layers for coverage (default 28)"
    )
    p.add_argument(
        "--repeats", type=positive_int, default=3, help="runs per measurement (default 3)"
    )
    add_list_argument(
        p,
        "--patterns",
        metavar="NAME",
        help="only these patterns, space- or comma-separated (default: all of "
        + ", ".join(pattern_names())
        + ")",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument(
        "--plot", metavar="PATH", help="also draw total ms against the length per pattern (PNG)"
    )
    p.set_defaults(func=_main)
