"""powerattn: PowerAttention (Chen et al., 2025) and other static block-sparse patterns --
a pattern catalogue, the receptive-field theory as tools, and fast attention operators."""

from .ops.api import power_attention, sparse_attention
from .ops.kvcache import sparse_attention_with_kvcache
from .ops.reference import reference_attention
from .patterns import Pattern, equal_budget, get_pattern, pattern_names
from .receptive import coverage, hops, layers_for_full_coverage

__version__ = "0.1.0"

__all__ = [
    "Pattern",
    "coverage",
    "equal_budget",
    "get_pattern",
    "hops",
    "layers_for_full_coverage",
    "pattern_names",
    "power_attention",
    "reference_attention",
    "sparse_attention",
    "sparse_attention_with_kvcache",
]
