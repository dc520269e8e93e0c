"""``bench e2e`` as a user meets it on a CPU: the hybrid of a shallow model keeps a sparse
layer, the defaults follow the device, and the result table is printed once (a toy model;
no timing checked)."""

from __future__ import annotations

import pytest
import torch

from powerattn.bench import e2e
from powerattn.bench.e2e_model import PRESETS, build_model, set_variant
from powerattn.bench.e2e_report import COLUMNS
from powerattn.bench.runner import header
from powerattn.cli import main


def test_hybrid_of_a_shallow_model_keeps_a_sparse_layer():
    pytest.importorskip("transformers")
    from powerattn.bench.e2e_model import hybrid_full_layers

    assert hybrid_full_layers(28) == [5, 6, 12, 13, 19, 20, 26, 27]  # the paper's rule
    assert hybrid_full_layers(3) == [1, 2]  # the rule already leaves layer 0 sparse
    assert hybrid_full_layers(2) == [1]  # the rule would make both full: hybrid == full
    with pytest.raises(ValueError, match="at least 2 layers"):
        hybrid_full_layers(1)
    from powerattn import transformers as pt

    model = build_model(PRESETS["tiny"], torch.device("cpu"), torch.bfloat16, 256)
    desc = set_variant(model, "hybrid", 16, 64)
    assert sorted(pt.get_settings(model.config).full_layers) == [1]
    assert "full layers [1] (2 of every 7 would make all 2 layers full)" in desc


def test_one_layer_model_has_no_hybrid_row():
    pytest.importorskip("transformers")
    cfg = e2e.E2EConfig(
        model="tiny",
        layers=1,
        seq_lens=(64,),
        variants=("full", "hybrid"),
        decode_steps=1,
        block_size=16,
        warmup_lens=(32,),
        device="cpu",
    )
    doc = e2e.run(cfg)
    assert doc["variants"]["hybrid"].startswith("skipped: a 1-layer model has no hybrid")
    assert [r["variant"] for r in doc["results"]] == ["full"]


class _Ran(Exception):
    """Stops ``bench e2e`` once its config is made."""


@pytest.fixture
def config_of(monkeypatch):
    """``argv`` -> the E2EConfig that ``bench e2e`` would run (nothing runs)."""

    def fake_run(cfg, json_path):
        raise _Ran(cfg)

    monkeypatch.setattr(e2e, "run", fake_run)

    def config(*argv: str, cuda: bool = False) -> e2e.E2EConfig:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        with pytest.raises(_Ran) as ran:
            main(["bench", "e2e", *argv])
        return ran.value.args[0]

    return config


def test_defaults_follow_the_device(config_of):
    for cfg in (config_of("--device", "cpu"), config_of()):  # asked for, or no CUDA
        assert cfg.device == "cpu" and cfg.model == "tiny"
        assert cfg.seq_lens == (512, 1024, 2048) and cfg.warmup_lens == (256,)
        assert (cfg.decode_steps, cfg.block_size) == (8, 64)
    cfg = config_of(cuda=True)
    assert cfg.device == "cuda" and cfg.model == "qwen2-7b"
    assert cfg.seq_lens == (16384, 32768, 65536, 131072) and cfg.warmup_lens == (2048, 4096)
    assert (cfg.decode_steps, cfg.block_size) == (128, 256)
    cfg = config_of("--device", "cpu", "--seq-lens", "96", "--block-size", "32")
    assert cfg.seq_lens == (96,) and cfg.block_size == 32 and cfg.decode_steps == 8


def test_help_names_both_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "e2e", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 16384 32768 65536 131072 on CUDA, 512 1024 2048 on the CPU)" in out
    assert "(default: qwen2-7b on CUDA, tiny on the CPU)" in out


def test_table_printed_once(capsys):
    pytest.importorskip("transformers")
    argv = ["bench", "e2e", "--device", "cpu", "--seq-lens", "64", "--warmup-lens", "32"]
    argv += ["--decode-steps", "1", "--block-size", "16", "--variants", "full", "power"]
    assert main(argv) == 0
    got = capsys.readouterr()
    both = got.out + got.err
    assert both.count(header(COLUMNS)) == 1
    assert got.out.count("power: power(block_size=16") == 1
    rows = [line.split()[:2] for line in got.out.splitlines() if line.strip().startswith("64 ")]
    assert rows == [["64", "full"], ["64", "power"]]
    assert "variant power" in got.err  # the progress line, labelled, on stderr
