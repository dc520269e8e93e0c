"""Synthetic tasks generated offline, deterministic from a seed."""

from .passkey import PasskeyBatch, exact_match, make_document, min_length, passkey_batch

__all__ = ["PasskeyBatch", "exact_match", "make_document", "min_length", "passkey_batch"]
