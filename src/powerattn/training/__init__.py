"""Training small models from scratch on the passkey curriculum (``powerattn train``).

Names are imported lazily, so that ``import powerattn.training`` stays cheap (the trainer
pulls in transformers).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ByteTokenizer": "tokenizer",
    "ModelConfig": "config",
    "OptimConfig": "config",
    "PatternConfig": "config",
    "Stage": "config",
    "TaskConfig": "config",
    "TrainConfig": "config",
    "load_config": "config",
    "Trainer": "trainer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
