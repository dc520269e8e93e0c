"""Hugging Face transformers integration: PowerAttention as a one-line switch.

::

    import powerattn.hf as pt          # or the older name: import powerattn.transformers as pt

    model = AutoModelForCausalLM.from_pretrained(...)
    pt.apply(model, "power", full_layers="2 of every 7")   # or any registered pattern
    model.generate(...)                                    # training works too
    model.save_pretrained(path)

    pt.register()                                          # before loading it back
    model = AutoModelForCausalLM.from_pretrained(path)     # config.json names "powerattn"

:func:`register` adds an attention implementation named ``"powerattn"`` to transformers'
``AttentionInterface`` and a mask function of the same name to ``AttentionMaskInterface``.
Transformers then builds no ``S x S`` mask: the mask function returns ``None`` or the 2-D
``(batch, used)`` mask of real key slots, and the attention function calls
:func:`powerattn.sparse_attention` (decoder layers) or dense causal attention (layers kept full).

The package, by job: :mod:`.settings` (``config.powerattn``, parsed once and attached to each
attention module), :mod:`.masks` (the mask function and the padding / static-cache analysis),
:mod:`.attention` (the attention function), :mod:`.integration` (``register``, ``apply``).
docs/huggingface.md lists what is supported and what is refused.
"""

from .attention import attention_forward, attention_weights, dense_causal_attention
from .integration import MIN_TRANSFORMERS, apply, register
from .masks import mask_forward
from .settings import (
    ATTN_IMPLEMENTATION,
    CONFIG_KEY,
    SUPPORTED_MODEL_TYPES,
    Settings,
    full_layers_from_rule,
    get_settings,
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
