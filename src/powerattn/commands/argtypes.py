"""argparse ``type=`` converters of the subcommands. They live in :mod:`powerattn.validate`
(a bottom-layer module, so ``bench/`` and ``commands/`` share them without an upward import);
this module keeps the old import path working."""

from __future__ import annotations

from ..validate import nonnegative_int, positive_int

__all__ = ["nonnegative_int", "positive_int"]
