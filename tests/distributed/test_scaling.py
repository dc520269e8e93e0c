"""The scaling model's volumes (exact, from the plan) and the cp-plan / cp-scaling commands."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import pytest

from powerattn.commands import cp as cp_cmd
from powerattn.distributed import cp_plan
from powerattn.distributed.scaling import (
    Hardware,
    LayerShape,
    layer_costs,
    log2_bound,
    scaling_table,
)


def test_volumes_at_1m_tokens_qwen2_shape():
    shape = LayerShape()  # Hkv=4, D=128, bf16: 2048 bytes of K+V per token
    S = 1 << 20
    for row in scaling_table("power", S, (4, 16, 64)):
        P, L = row["world_size"], S // row["world_size"]
        assert row["allgather"]["fwd_bytes"] == shape.kv_bytes((P - 1) * L)
        assert row["ring"]["train_bytes"] == 3 * shape.kv_bytes((P - 1) * L)
        assert row["plan"]["fwd_bytes"] == shape.kv_bytes(max(cp_plan("power", S, P).recv_tokens))
        assert row["plan"]["fwd_bytes"] <= shape.kv_bytes(log2_bound(S, P))
    # The numbers: ~2 GB under all-gather, ~200 MB with the plan, at P = 64.
    last = row
    assert 2.0e9 < last["allgather"]["fwd_bytes"] < 2.2e9
    assert last["plan"]["fwd_bytes"] < 0.21e9


def test_full_attention_gains_nothing():
    row = layer_costs("full", 1 << 16, 8)
    assert row["plan"]["fwd_bytes"] == row["allgather"]["fwd_bytes"]


def _parser():
    p = argparse.ArgumentParser()
    cp_cmd.register(p.add_subparsers())
    return p


def test_commands(tmp_path, capsys):
    args = _parser().parse_args(
        ["cp-plan", "--seq-len", "65536", "--world-size", "8", "--json", str(tmp_path / "p.json")]
    )
    assert args.func(args) == 0
    assert json.loads((tmp_path / "p.json").read_text())["recv_tokens"][0] == 0
    out = ["--plot", str(tmp_path / "s.png"), "--json", str(tmp_path / "s.json")]
    args = _parser().parse_args(["cp-scaling", "--seq-len", "65536", "--worlds", "2,4,8", *out])
    assert args.func(args) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    rows = json.loads((tmp_path / "s.json").read_text())["rows"]
    assert rows[0]["hardware"] == asdict(Hardware())  # the flags' defaults are the model's
    args = _parser().parse_args(["cp-scaling", "--seq-len", "65536", "--net-gb-s", "25"])
    assert args.func(args) == 0
    assert "plan" in capsys.readouterr().out


def test_bad_world_list():
    with pytest.raises(SystemExit):
        _parser().parse_args(["cp-scaling", "--worlds", "2,x"])
