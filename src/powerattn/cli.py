"""The ``powerattn`` console entry point: one parser, subcommands contributed by modules.

Each module in :data:`COMMAND_MODULES` exposes ``register(subparsers)``, which adds its
subcommand(s) and sets ``func`` (taking the parsed namespace, returning an exit code). A new
command: import its module below and list it there. None of these imports may pull in
torch._dynamo or transformers at import time (``powerattn --help`` must stay quick).
"""

from __future__ import annotations

import argparse
import sys

from . import __version__, bench
from .commands import analysis, cp, train
from .commands import eval as eval_cmd

COMMAND_MODULES = [analysis, bench, train, eval_cmd, cp]


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
    parser.add_argument("--version", action="version", version=f"powerattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (a value, a path, a config file), reported in one line
    rather than as a traceback. YAML's errors count when a command has loaded it."""
    errors: tuple[type[BaseException], ...] = (ValueError, OSError)
    yaml = sys.modules.get("yaml")
    if yaml is not None:
        errors += (yaml.YAMLError,)
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Exception as exc:  # bad input: one clear line, not a traceback
        if not isinstance(exc, _user_errors()):
            raise
        print(f"powerattn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
