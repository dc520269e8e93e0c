"""Attention operators: the reference (oracle) and the fast backends."""

from .reference import reference_attention

__all__ = ["reference_attention"]
