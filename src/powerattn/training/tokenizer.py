"""The byte tokenizer's former home; it lives in :mod:`powerattn.tasks.tokenizer` (the tasks
generate token ids, and training sits above them)."""

from ..tasks.tokenizer import ByteTokenizer

__all__ = ["ByteTokenizer"]
