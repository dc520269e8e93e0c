"""Context parallelism: the sequence split over ranks, with a communication plan derived
from the pattern's block layout (log P messages for PowerAttention instead of P - 1)."""

from .attention import context_parallel_attention
from .plan import CPPlan, cp_plan

__all__ = ["CPPlan", "context_parallel_attention", "cp_plan"]
