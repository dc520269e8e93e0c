"""``powerattn bench kernel``: CLI wiring, table and plot (the timings themselves need CUDA and
live in results/kernel/, never in tests)."""

from __future__ import annotations

import json

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


def _usage_error(argv, capsys) -> str:
    """argparse refuses bad flags with exit code 2 and one line on stderr."""
    with pytest.raises(SystemExit) as exc:
        main(["bench", "kernel", *argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_bad_workload_is_rejected(capsys):
    assert "--workloads" in _usage_error(["--workloads", "fwd,prefill"], capsys)


@pytest.mark.parametrize(
    "argv, name",
    [
        (["--seq-lens", "8k"], "--seq-lens"),
        (["--seq-lens", "1024,0"], "--seq-lens"),
        (["--pattern", "powr"], "invalid choice"),
        (["--block-size", "0"], "--block-size"),
    ],
)
def test_bad_arguments_are_rejected_before_the_gpu(argv, name, capsys):
    err = _usage_error(argv, capsys)
    assert name in err and "CUDA" not in err


def test_list_flags_take_spaces_or_commas():
    from powerattn.cli import build_parser

    a = build_parser().parse_args(["bench", "kernel", "--seq-lens", "8192", "16384,32768"])
    assert a.seq_lens == [8192, 16384, 32768]


def test_table_summary_and_plot(tmp_path, capsys):
    rows = [
        {"case": "fwd", "seq_len": s, "method": "dense_cudnn", "backend": "cudnn", "ms": 1.0 * s}
        for s in (8, 16)
    ] + [
        {
            "case": "fwd",
            "seq_len": s,
            "method": "ours",
            "backend": "flash",
            "ms": 0.1 * s,
            "vs_dense": 10.0,
            "tflops": 3.0,
        }
        for s in (8, 16)
    ]
    result = {
        "config": vars(kernel.KernelBenchConfig()),
        "env": {"gpu": "X", "torch": "t", "triton": "tr", "flash_attn_4": None},
        "rows": rows,
        "notes": ["flex_flash not measured: no GPU"],
    }
    kernel.print_table(result)
    out = capsys.readouterr().out
    assert "10.00x" in out and "dense_cudnn" in out and "flex_flash not measured" in out
    summ = kernel.summary(result)
    assert summ["gpu"] == "X" and len(summ["rows"]) == 4
    assert set(summ["rows"][0]) == {"case", "seq_len", "method", "backend", "ms"}
    kernel.plot(result, str(tmp_path / "k.png"))
    assert (tmp_path / "k.png").stat().st_size > 1000
    # The summary is regenerated from a saved run by one command, without a GPU.
    (tmp_path / "k.json").write_text(json.dumps(result))
    argv = ["bench", "kernel", "--from-json", str(tmp_path / "k.json")]
    assert main([*argv, "--summary", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == summ
