"""Full causal attention, as a pattern: every earlier block. The quality ceiling and the
cost baseline (degree = number of blocks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Pattern, _check_layout_size
from .registry import register


@register
@dataclass(frozen=True)
class FullPattern(Pattern):
    name = "full"
    color = "#7f7f7f"
    main = True
    ceiling = True
    budget_rule = "the ceiling: it attends every earlier block"

    def block_rule(self, qb: Any, kb: Any) -> Any:
        return kb == kb  # always true, in the argument's own type (bool, array, tensor)

    def _layout_arrays(
        self, num_q_blocks: int, num_kv_blocks: int, q_block_offset: int
    ) -> tuple[np.ndarray, np.ndarray]:
        # Written down directly: the generic path sorts an (n, n) candidate array, ~0.4 s at
        # 4096 blocks (1M tokens). Row q holds 0..q, then -1 padding.
        qb = np.arange(q_block_offset, q_block_offset + num_q_blocks, dtype=np.int64)
        _check_layout_size(self, num_q_blocks, min(int(qb[-1]) + 1, num_kv_blocks))
        kb = np.arange(min(int(qb[-1]) + 1, num_kv_blocks), dtype=np.int64)
        idx = np.where(kb[None, :] <= qb[:, None], kb[None, :], -1)
        return np.minimum(qb + 1, num_kv_blocks), idx

    @classmethod
    def random_params(cls, rng: np.random.Generator) -> dict[str, Any]:
        return {}

    def decode_closed_form(self) -> tuple[int, int | None, bool] | None:
        return 0, None, False
