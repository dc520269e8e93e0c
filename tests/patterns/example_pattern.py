"""A pattern defined outside the package (the test of "adding a pattern is one class and one
call"): a local window plus global blocks, the multiples of ``every``. Not registered on
import: tests register it and take it out again."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from powerattn.patterns import Pattern, largest_fitting, param


@dataclass(frozen=True)
class GlobalBlocksPattern(Pattern):
    name = "global_blocks_test"
    color = "#8c564b"
    small_params = {"window": 2, "every": 3}
    budget_rule = "tunes every (window 4 kept)"

    window: int = param(4, "local window W in blocks: distances 0..W-1", minimum=1)
    every: int = param(16, "attend the blocks whose index is a multiple of EVERY", minimum=1)

    def block_rule(self, qb: Any, kb: Any) -> Any:
        return (qb - kb < self.window) | (kb % self.every == 0)

    def _candidates(self, qb: np.ndarray) -> np.ndarray:
        local = qb[:, None] - np.arange(self.window)[None, :]
        top = int(qb.max()) if qb.size else 0
        glob = np.arange(0, top + 1, self.every)
        return np.concatenate([local, np.broadcast_to(glob, (qb.size, glob.size))], axis=1)

    @classmethod
    def at_budget(cls, budget: int, num_blocks: int, block_size: int) -> GlobalBlocksPattern:
        return largest_fitting(
            lambda e: cls(block_size=block_size, every=-e), -num_blocks, -1, budget, num_blocks
        )
