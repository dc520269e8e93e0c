"""``powerattn analyze | compare | show`` (placeholder registration; filled in by the analysis work)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    del sub
