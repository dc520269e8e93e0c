"""The Hugging Face integration under its first name (``import powerattn.transformers as pt``).

It lives in :mod:`powerattn.hf` (a package split by job, and a name that does not shadow the
``transformers`` package); this module re-exports its public names so that existing code keeps
working.
"""

from . import hf as _hf
from .hf import *  # noqa: F403 - the alias re-exports exactly powerattn.hf's public names

__all__ = list(_hf.__all__)
