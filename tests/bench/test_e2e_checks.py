"""``bench e2e``'s operator check under the tolerance rule, on the CPU (small case)."""

from __future__ import annotations

import pytest
import torch

from powerattn.bench import e2e_checks

SMALL = ((16, 16, 4, 2, 96),)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_operator_check_passes(dtype):
    res = e2e_checks.operator_check(torch.device("cpu"), dtype, SMALL)
    assert res["ok"], res
    layouts = ("transposed", "contiguous")
    keys = {f"bs16_d16_{c}_{n}" for c in ("prefill", "decode") for n in layouts}
    assert set(res) == keys | {"ok"}
    assert all(res[k]["err"] <= res[k]["tol"] for k in keys)


def test_operator_check_catches_a_wrong_operator(monkeypatch):
    import powerattn.ops.api as api

    real = api.sparse_attention

    def off(q, k, v, pattern, *a, **kw):  # 1% off: far outside 2x SDPA's float32 error
        return real(q, k, v, pattern, *a, **kw) * 1.01

    monkeypatch.setattr(api, "sparse_attention", off)
    res = e2e_checks.operator_check(torch.device("cpu"), torch.float32, SMALL)
    assert not res["ok"]
