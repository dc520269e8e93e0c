"""Stride slash (Sparse Transformer's strided pattern at block level): a local window, the
blocks at multiples of ``stride`` back ("slashes" in the mask picture), and sinks.

Paper setting: window 6, sink 1, "3 slash blocks" at 32K. The paper does not state the
stride; with 128 blocks of 256 tokens, ``stride=32`` gives slashes at distances 32, 64 and 96
and the paper's 10-block budget, so that is our default. Reaching distance ``N`` takes about
``N / stride + stride / window`` hops: O(sqrt N) when the stride is tuned to the length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Pattern, largest_fitting, param
from .power import _SINK_HELP, _WINDOW_HELP
from .registry import register


@register
@dataclass(frozen=True)
class StrideSlashPattern(Pattern):
    name = "stride_slash"
    color = "#2ca02c"
    main = True
    small_params = {"window": 2, "stride": 3, "sink": 1}
    budget_rule = "tunes its stride; window 6 and sink 1 are kept, 7 blocks before any slash"

    window: int = param(6, _WINDOW_HELP, minimum=0)
    sink: int = param(1, _SINK_HELP, minimum=0)
    stride: int = param(
        32, "also attend every distance that is a multiple of STRIDE blocks", minimum=1
    )

    def block_rule(self, qb: Any, kb: Any) -> Any:
        d = qb - kb
        return (d < self.window) | (d % self.stride == 0) | (kb < self.sink)

    def _candidates(self, qb: np.ndarray) -> np.ndarray:
        hi = int(qb.max()) if qb.size else 0
        local = qb[:, None] - np.arange(self.window, dtype=np.int64)[None, :]
        slashes = qb[:, None] - np.arange(0, hi + 1, self.stride, dtype=np.int64)[None, :]
        sinks = np.broadcast_to(np.arange(self.sink, dtype=np.int64), (qb.size, self.sink))
        return np.concatenate([local, slashes, sinks], axis=1)

    @classmethod
    def at_budget(cls, budget: int, num_blocks: int, block_size: int) -> StrideSlashPattern:
        """The smallest stride (window 6 and sink 1 kept). Degree falls as the stride grows:
        search on ``-stride``. The last block attends ``(n - 1) // stride + 1`` slashes, at
        most 7 of them shared with the window and sink: that bounds the search (a tiny
        stride makes each layout O(n^2))."""
        return largest_fitting(
            lambda s: cls(block_size=block_size, stride=-s),
            -num_blocks,
            -max(1, (num_blocks - 1) // (2 * budget + 16)),
            budget,
            num_blocks,
        )

    @classmethod
    def random_params(cls, rng: np.random.Generator) -> dict[str, Any]:
        return dict(
            window=int(rng.integers(0, 7)),
            sink=int(rng.integers(0, 3)),
            stride=int(rng.integers(1, 9)),
        )
