"""``powerattn bench kernel``: CLI wiring, table and plot (the timings themselves need CUDA and
live in results/kernel/, never in tests)."""

from __future__ import annotations

import pytest
import torch

from powerattn.bench import kernel
from powerattn.cli import main


def test_registered_in_cli(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "kernel", "--help"])
    assert exc.value.code == 0
    assert "--seq-lens" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU-only refusal")
def test_refuses_without_cuda(capsys):
    assert main(["bench", "kernel", "--seq-lens", "1024"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def test_bad_workload_is_rejected(capsys):
    assert main(["bench", "kernel", "--workloads", "fwd,prefill"]) == 2
    assert "--workloads" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, name",
    [
        (["--seq-lens", "8k"], "--seq-lens"),
        (["--seq-lens", "1024,0"], "--seq-lens"),
        (["--pattern", "powr"], "unknown pattern"),
        (["--block-size", "0"], "block_size"),
    ],
)
def test_bad_arguments_are_rejected_before_the_gpu(argv, name, capsys):
    assert main(["bench", "kernel", *argv]) == 2
    err = capsys.readouterr().err
    assert name in err and "CUDA" not in err


def test_table_and_plot(tmp_path, capsys):
    rows = [
        {"workload": "fwd", "method": "dense SDPA cuDNN", "seq_len": s, "ms": 1.0 * s, "tflops": 5}
        for s in (8, 16)
    ] + [
        {"workload": "fwd", "method": "ours", "seq_len": s, "ms": 0.1 * s, "speedup": 10.0}
        for s in (8, 16)
    ]
    result = {
        "config": vars(kernel.KernelBenchConfig()),
        "env": {"gpu": "X", "torch": "t", "triton": "tr"},
        "rows": rows,
    }
    kernel.print_table(result)
    out = capsys.readouterr().out
    assert "10.00x" in out and "dense SDPA cuDNN" in out
    kernel.plot(result, str(tmp_path / "k.png"))
    assert (tmp_path / "k.png").stat().st_size > 1000
