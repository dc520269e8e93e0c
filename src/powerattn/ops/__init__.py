"""Attention operators: the public op, the reference (oracle) and the fast backends."""

from .api import BACKENDS, power_attention, sparse_attention
from .reference import reference_attention

__all__ = ["BACKENDS", "power_attention", "reference_attention", "sparse_attention"]
