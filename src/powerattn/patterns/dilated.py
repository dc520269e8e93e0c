"""Dilated sliding window (Longformer-style): every ``dilation``-th block within the last
``window`` blocks, no sink. Paper setting: a 20-block window with a gap of one block
(``dilation=2``), i.e. block distances 0, 2, ..., 18.

Only distances that are multiples of ``dilation`` exist in the DAG, so paths of any length
reach only multiples of it: about half of the sequence stays unreachable (``dilation=2``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Pattern, _check_positive_int
from .registry import register


@register
@dataclass(frozen=True)
class DilatedPattern(Pattern):
    name = "dilated"
    block_size: int = 256
    window: int = 20
    dilation: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive_int("window", self.window)
        _check_positive_int("dilation", self.dilation)

    def block_rule(self, qb: Any, kb: Any) -> Any:
        d = qb - kb
        return (d < self.window) & (d % self.dilation == 0)

    def _candidates(self, qb: np.ndarray) -> np.ndarray:
        d = np.arange(0, self.window, self.dilation, dtype=np.int64)
        return qb[:, None] - d[None, :]
