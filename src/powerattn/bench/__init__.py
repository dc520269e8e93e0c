"""``powerattn bench <what>``: benchmarks. Each module in ``register``'s list exposes
``register(subparsers)`` adding one ``bench`` subcommand that prints a table and can write JSON.
Timings live here, never in pass/fail tests."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    # Imported here, not at the top: importing one benchmark module should not load the others.
    from . import cp, e2e, kernel, layout

    parser = sub.add_parser(
        "bench",
        help="benchmarks (layout construction, kernels, end-to-end, context parallel)",
        description="Benchmarks. Each prints a table to stdout; --json PATH writes the numbers.",
    )
    bench_sub = parser.add_subparsers(dest="bench", metavar="WHAT")
    for module in (layout, kernel, e2e, cp):
        module.register(bench_sub)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
