"""check_qkv's one-expression fast path accepts exactly what its step-by-step checks accept."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from powerattn.ops import checks


def _cases():
    shapes_q = [(2, 4, 3, 8), (2, 4, 0, 8), (2, 3, 3, 8), (1, 4, 3, 8), (2, 4, 9, 8), (2, 4, 3, 0)]
    shapes_k = [(2, 2, 5, 8), (2, 0, 5, 8), (2, 2, 5, 4), (2, 2, 5, 0), (2, 2, 5)]
    for sq, sk in itertools.product(shapes_q, shapes_k):
        for dt in (torch.float32, torch.int64):
            q, k = torch.zeros(sq, dtype=dt), torch.zeros(sk, dtype=dt)
            yield q, k, k.clone()
            yield q, k, k[..., :1].clone() if k.dim() == 4 else k  # v of another shape
            yield q, k, k.to(torch.float64)  # another dtype
    good = torch.zeros(1, 2, 3, 4)
    yield good, good, np.zeros((1, 2, 3, 4))  # not a tensor
    yield good, good.to("meta"), good  # another device
    yield good.to(torch.bfloat16), good.to(torch.bfloat16), good.to(torch.bfloat16)


@pytest.mark.parametrize("case", list(_cases()))
def test_fast_path_accepts_what_the_checks_accept(case):
    def outcome(fn):
        try:
            fn(*case)
        except ValueError as exc:
            return str(exc)
        return None

    assert outcome(checks.check_qkv) == outcome(checks._explain_qkv)
