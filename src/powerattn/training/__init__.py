"""Training small models from scratch on the passkey curriculum (``powerattn train``)."""

from .config import (
    ModelConfig,
    OptimConfig,
    PatternConfig,
    Stage,
    TaskConfig,
    TrainConfig,
    load_config,
)
from .tokenizer import ByteTokenizer
from .trainer import Trainer

__all__ = [
    "ByteTokenizer",
    "ModelConfig",
    "OptimConfig",
    "PatternConfig",
    "Stage",
    "TaskConfig",
    "TrainConfig",
    "Trainer",
    "load_config",
]
