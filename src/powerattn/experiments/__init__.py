"""Experiments that train and evaluate models (``powerattn experiment ...``)."""
