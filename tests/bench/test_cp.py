"""``bench cp`` on the runner, as one gloo process on the CPU (the --device cpu dry run): the
check under the tolerance rule, the JSON's per-length measurements regrouped from the
runner's rows, the scaling points, and the budget skipping whole lengths (no timing
checked; the multi-rank numerics are tests/distributed/test_attention.py's)."""

from __future__ import annotations

import argparse
import json
import socket

import pytest
import torch.distributed as dist

from powerattn.bench import cp
from powerattn.ops import flex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def one_rank(monkeypatch):
    # cp.run sets both (module settings of the benchmark process): restored after the test.
    monkeypatch.setattr(flex, "STATIC_VARIANTS", flex.STATIC_VARIANTS)
    monkeypatch.setitem(cp._DEV, "type", cp._DEV["type"])
    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
                 "RANK": "0", "WORLD_SIZE": "1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def _args(tmp_path, **kw):
    p = argparse.ArgumentParser()
    cp.add_args(p)
    argv = ["--device", "cpu", "--check-len", "256", "--seq-lens", "256,512", "--iters", "1"]
    argv += ["--json", str(tmp_path / "cp.json")]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return p.parse_args(argv)


def test_cp_dry_run_rows(tmp_path, one_rank):
    assert cp.run(_args(tmp_path)) == 0
    out = json.loads((tmp_path / "cp.json").read_text())
    assert out["world_size"] == 1 and out["skipped"] == []
    check = out["check"]
    assert check["plan"]["pass"] and check["allgather"]["pass"]
    assert set(check["tol"]) == {"out", "dq", "dk", "dv"}
    assert [m["seq_len"] for m in out["measurements"]] == [256, 512]
    m = out["measurements"][1]
    assert list(m) == ["seq_len", "local_len", "plan", "allgather", "transfer_ms"]
    assert m["local_len"] == 512 and set(m["transfer_ms"]) == {"plan", "allgather"}
    assert set(m["plan"]) == {"fwd_ms", "train_ms", "peak_gb", "recv_bytes_fwd"}
    assert m["plan"]["recv_bytes_fwd"] == 0  # one rank receives nothing
    assert [(p["seq_len"], p["scheme"]) for p in out["scaling_points"]] == [
        (256, "plan"), (256, "allgather"), (512, "plan"), (512, "allgather")
    ]  # fmt: skip


def test_cp_budget_skips_lengths(tmp_path, one_rank):
    assert cp.run(_args(tmp_path, budget_s=0)) == 0
    out = json.loads((tmp_path / "cp.json").read_text())
    assert out["measurements"] == [] and "scaling_points" not in out
    assert out["skipped"] == [{"seq_len": 256, "why": "time budget"},
                              {"seq_len": 512, "why": "time budget"}]  # fmt: skip


@pytest.fixture
def spied(monkeypatch):
    """``bench cp`` with the check stubbed (records its length) and the timings' arguments
    recorded; ``--budget-s 0`` then skips every length, so nothing slow runs."""
    monkeypatch.setattr(flex, "STATIC_VARIANTS", flex.STATIC_VARIANTS)
    monkeypatch.setitem(cp._DEV, "type", cp._DEV["type"])
    seen: dict = {}

    def check(S, pattern, methods):
        seen["check_len"] = S
        return {m: {"pass": True} for m in methods}

    def timing(seq_lens, pattern, methods, iters, *rest):
        seen["seq_lens"], seen["iters"] = list(seq_lens), iters
        return real_timing(seq_lens, pattern, methods, iters, *rest)

    real_timing = cp.timing_benchmark
    monkeypatch.setattr(cp, "check", check)
    monkeypatch.setattr(cp, "timing_benchmark", timing)
    yield seen
    if dist.is_initialized():
        dist.destroy_process_group()


def test_cp_cpu_defaults_are_small(one_rank, spied, monkeypatch):
    from powerattn.cli import main

    monkeypatch.setattr(cp.torch.cuda, "is_available", lambda: False)
    for argv in (["--device", "cpu"], []):  # asked for, or no CUDA
        assert main(["bench", "cp", *argv, "--budget-s", "0"]) == 0
        assert spied == {"check_len": 512, "seq_lens": [1024], "iters": 2}
        spied.clear()
    argv = [
        "bench",
        "cp",
        "--device",
        "cpu",
        "--budget-s",
        "0",
        "--seq-lens",
        "256",
        "--iters",
        "3",
    ]
    assert main(argv) == 0
    assert spied == {"check_len": 512, "seq_lens": [256], "iters": 3}


def test_cp_without_torchrun_runs_as_one_process(tmp_path, spied, monkeypatch, capsys):
    from powerattn.cli import main

    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    argv = ["bench", "cp", "--device", "cpu", "--budget-s", "0", "--json", str(tmp_path / "c.json")]
    assert main(argv) == 0
    assert "not under torchrun, running as one process" in capsys.readouterr().err
    out = json.loads((tmp_path / "c.json").read_text())
    assert out["world_size"] == 1 and out["skipped"] == [{"seq_len": 1024, "why": "time budget"}]
