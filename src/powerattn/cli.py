"""The ``powerattn`` console entry point: one parser, subcommands contributed by modules.

Each module in ``_COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its
subcommand(s) and sets ``func`` (taking the parsed namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

_COMMAND_MODULES = [
    "powerattn.commands.analysis",
    "powerattn.bench",
    "powerattn.commands.train",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="powerattn",
        description=(
            "PowerAttention and other static block-sparse attention patterns: analyse their "
            "receptive fields, compare them at equal cost, benchmark the kernels, train and "
            "evaluate small models.\n\n"
            "Start with:  powerattn compare --seq-len 32768 --layers 28 --plot compare.png"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:  # bad input: one clear line, not a traceback
        print(f"powerattn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
