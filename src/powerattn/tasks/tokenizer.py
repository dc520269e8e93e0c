"""Byte-level tokenizer: no vocabulary file, nothing to download.

Token ids 0..255 are the UTF-8 bytes; a few special ids follow them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as tokens, plus ``pad``, ``bos`` and ``eos`` specials (ids 256, 257, 258)."""

    pad_id: int = 256
    bos_id: int = 257
    eos_id: int = 258

    @property
    def vocab_size(self) -> int:
        return 259

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """Token ids of ``text`` (one per UTF-8 byte), optionally after ``bos``."""
        ids = list(text.encode("utf-8"))
        return [self.bos_id, *ids] if bos else ids

    def decode(self, ids) -> str:
        """Text of ``ids``; special ids are dropped, invalid UTF-8 is replaced."""
        data = bytes(int(i) for i in ids if 0 <= int(i) < 256)
        return data.decode("utf-8", errors="replace")
