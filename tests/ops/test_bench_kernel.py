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


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_dry_run_on_the_cpu(monkeypatch, tmp_path):
    """The whole live path of ``run`` on the CPU with the timers replaced by one call each:
    configs, providers, skips with notes (cuDNN, FLASH), the flex BlockMask shared by the
    prefill cases, decode rows, ratios, progress JSON and the summary schema."""
    from torch.nn.attention import flex_attention as fa

    from powerattn.bench import runner
    from powerattn.ops import flex as ops_flex

    calls = []

    def once(fn, *a, **kw):
        calls.append(fn)
        fn()
        return 2.0 if len(calls) % 2 else 1.0

    real_cbm = fa.create_block_mask
    monkeypatch.setattr(kernel, "DEVICE", "cpu")
    monkeypatch.setattr(kernel, "_bench", once)
    monkeypatch.setattr(kernel, "_host_ms", once)
    monkeypatch.setattr(kernel, "environment", lambda: {"gpu": "cpu", "torch": "t", "triton": "t"})
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(
        fa, "create_block_mask", lambda *a, **kw: real_cbm(*a, **{**kw, "_compile": False})
    )
    monkeypatch.setattr(ops_flex, "compiled_flex", lambda: fa.flex_attention)
    decode_row = {"case": "decode", "seq_len": 256, "method": "ours", "backend": "decode",
                  "ms": 0.5, "vs_dense": 2.0}  # fmt: skip
    monkeypatch.setattr(kernel, "_decode_rows", lambda cfg, p, s, b: [{**decode_row, "b": b}])
    cfg = kernel.KernelBenchConfig(
        seq_lens=[256], workloads=["fwd", "fwd_bwd", "decode"], q_heads=4, kv_heads=2, head_dim=16,
        dtype="float32", block_size=64,
    )  # fmt: skip
    progress = []
    res = kernel.run(cfg, log=lambda _m: None, on_progress=progress.append)
    got = [(r["case"], r["method"], r["backend"]) for r in res["rows"]]
    assert got == [
        ("mask", "ours", "analytic"), ("mask_first", "flex_static", None),
        ("mask", "flex_static", "create_block_mask"), ("fwd", "flex_static", "triton"),
        ("fwd", "ours", "dense"), ("fwd_bwd", "ours", "dense"), ("decode", "ours", "decode"),
    ]  # fmt: skip
    fwd_ours = res["rows"][4]
    assert fwd_ours["vs_flex_static"] == round(res["rows"][3]["ms"] / fwd_ours["ms"], 3)
    assert res["rows"][3]["vs_flex_static"] == 1.0 and "vs_dense" not in fwd_ours
    assert res["rows"][6]["b"] == [1, 8, 32] and res["rows"][6]["vs_dense"] == 2.0
    assert res["rows"][5]["tflops"] > 0 and "vs_flex_static" not in res["rows"][5]
    # Eager FlexAttention has no CPU backward: that method fails, noted; the others go on.
    assert any(n.startswith("fwd_bwd flex_static failed") for n in res["notes"])
    assert any("dense cuDNN unavailable" in n for n in res["notes"])
    assert any("flex_flash not measured" in n for n in res["notes"])
    assert set(res) == {"config", "env", "rows", "notes"} and res["config"]["head_dim"] == 16
    assert len(progress) == 4 and progress[-1] == res
    summ = kernel.summary(res)
    assert [set(r) for r in summ["rows"]] == [{"case", "seq_len", "method", "backend", "ms"}] * 6
    runner.write_json(tmp_path / "k.json", res)
    assert json.loads((tmp_path / "k.json").read_text()) == json.loads(json.dumps(res))
