"""The Hugging Face integration under its first name (``import powerattn.transformers as pt``).

It lives in :mod:`powerattn.hf` (a package split by job, and a name that does not shadow the
``transformers`` package); this module re-exports its public names so that existing code keeps
working.
"""

from .hf import (
    ATTN_IMPLEMENTATION,
    CONFIG_KEY,
    MIN_TRANSFORMERS,
    SUPPORTED_MODEL_TYPES,
    Settings,
    apply,
    attention_forward,
    attention_weights,
    dense_causal_attention,
    full_layers_from_rule,
    get_settings,
    mask_forward,
    register,
)

__all__ = [
    "ATTN_IMPLEMENTATION",
    "CONFIG_KEY",
    "MIN_TRANSFORMERS",
    "SUPPORTED_MODEL_TYPES",
    "Settings",
    "apply",
    "attention_forward",
    "attention_weights",
    "dense_causal_attention",
    "full_layers_from_rule",
    "get_settings",
    "mask_forward",
    "register",
]
