"""``powerattn bench <what>``: benchmarks. Each module in ``_BENCH_MODULES`` exposes
``register(subparsers)`` adding one ``bench`` subcommand that prints a table and can write JSON.
Timings live here, never in pass/fail tests."""

from __future__ import annotations

import argparse
import importlib

_BENCH_MODULES: list[str] = [
    "powerattn.bench.layout",
    "powerattn.bench.e2e",
    "powerattn.bench.kernel",
]


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "bench",
        help="benchmarks (layout construction, kernels, end-to-end)",
        description="Benchmarks. Each prints a table to stdout; --json PATH writes the numbers.",
    )
    bench_sub = parser.add_subparsers(dest="bench", metavar="WHAT")
    for name in _BENCH_MODULES:
        importlib.import_module(name).register(bench_sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
