"""The analysis commands and the layout benchmark, called in-process (plus one call of the
installed ``powerattn`` script)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import powerattn
from powerattn.cli import main
from powerattn.patterns import equal_budget, get_pattern, pattern_fields, pattern_names
from powerattn.receptive import coverage, layers_for_full_coverage


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_analyze_prints_and_writes_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "a.json", tmp_path / "sub" / "a.png"
    rc, out, _ = _run(
        capsys, "analyze", "--pattern", "power", "--seq-len", "32768", "--layers", "8",
        "--json", str(js), "--plot", str(png),
    )  # fmt: skip
    assert rc == 0
    assert "max degree" in out and "full coverage at  6 layers" in out
    data = json.loads(js.read_text())
    p = get_pattern("power")
    assert data["num_blocks"] == 128 and data["max_degree"] == p.max_degree(128)
    assert data["density"] == pytest.approx(p.density(32768))
    assert data["layers_for_full_coverage"] == layers_for_full_coverage(p, 32768)
    assert data["coverage"] == pytest.approx(coverage(p, 32768, 8).tolist())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, params",
    [
        (["--pattern", "sliding_window", "--window", "3", "--sink", "0"], {"window": 3, "sink": 0}),
        (["--pattern", "stride_slash", "--stride", "7"], {"stride": 7}),
        (
            ["--pattern", "dilated", "--dilation", "3", "--window", "9"],
            {"dilation": 3, "window": 9},
        ),
        (
            ["--pattern", "power", "--base", "3", "--block-size", "64"],
            {"base": 3, "block_size": 64},
        ),
        (["--pattern", "longnet", "--segments", "4:1,8:2"], {"segments": [[4, 1], [8, 2]]}),
        (["--pattern", "full"], {}),
    ],
)
def test_analyze_pattern_parameters(tmp_path, capsys, argv, params):
    js = tmp_path / "a.json"
    rc, out, _ = _run(
        capsys, "analyze", *argv, "--seq-len", "5000", "--layers", "4", "--json", str(js)
    )
    assert rc == 0
    data = json.loads(js.read_text())
    for k, v in params.items():
        assert data["params"][k] == v
    assert data["pattern"] == argv[1]


def test_analyze_reports_unreachable_blocks(capsys):
    rc, out, _ = _run(capsys, "analyze", "--pattern", "dilated", "--layers", "3")
    assert rc == 0 and "never (50%)" in out


def test_compare_table_json_and_figure(tmp_path, capsys):
    js, png = tmp_path / "c.json", tmp_path / "c.png"
    rc, out, _ = _run(
        capsys, "compare", "--seq-len", "32768", "--layers", "12", "--json", str(js),
        "--plot", str(png),
    )  # fmt: skip
    assert rc == 0
    for name in pattern_names():
        assert name in out
    data = json.loads(js.read_text())
    pats = equal_budget(32768)
    assert set(data["patterns"]) == set(pats)
    budget = pats["power"].max_degree(128)
    assert data["budget"] == budget
    for name, s in data["patterns"].items():
        if name not in ("longnet", "full"):
            assert s["max_degree"] == budget, name
        assert s["layers_for_full_coverage"] == layers_for_full_coverage(pats[name], 32768)
        assert len(s["coverage"]) == 12
    assert png.stat().st_size > 10_000


def test_compare_subset_and_budget(tmp_path, capsys):
    js = tmp_path / "c.json"
    rc, _, _ = _run(
        capsys, "compare", "--seq-len", "8192", "--layers", "3", "--budget", "6",
        "--block-size", "128", "--patterns", "power", "dilated", "--json", str(js),
    )  # fmt: skip
    assert rc == 0
    data = json.loads(js.read_text())
    assert list(data["patterns"]) == ["power", "dilated"]
    assert data["budget"] == 6 and data["block_size"] == 128
    assert data["patterns"]["dilated"]["max_degree"] <= 6


def test_show_text_json_and_plot(tmp_path, capsys):
    js, png = tmp_path / "s.json", tmp_path / "s.png"
    rc, out, _ = _run(
        capsys, "show", "--pattern", "power", "--seq-len", "4096", "--json", str(js),
        "--plot", str(png),
    )  # fmt: skip
    assert rc == 0
    p = get_pattern("power")
    rows = [line.split()[1] for line in out.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 16
    for qb, row in enumerate(rows):
        attended = [kb for kb, c in enumerate(row) if c != "."]
        assert attended == p.kv_blocks(qb)
        assert row[qb] == "+"  # the diagonal block is partial
    data = json.loads(js.read_text())
    assert data["kv_blocks"] == [p.kv_blocks(q) for q in range(16)]
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_show_large_sizes_skip_text(capsys):
    rc, out, _ = _run(capsys, "show", "--seq-len", "1048576")
    assert rc == 0 and "--plot" in out and "+" not in out
    rc, _, err = _run(capsys, "show", "--seq-len", "1048576", "--text")
    assert rc == 2 and "seq_len" in err


def test_help_texts_teach_the_vocabulary(capsys):
    for cmd in ("analyze", "compare", "show"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        for word in ("block", "window", "sink", "budget", "hop", "coverage"):
            assert word in out, (cmd, word)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["analyze", "--pattern", "full", "--window", "3"], "--window"),
        (["analyze", "--pattern", "dilated", "--sink", "1"], "--sink"),
        (["show", "--pattern", "power", "--segments", "8:1"], "--segments"),
        (["analyze", "--pattern", "longnet", "--segments", "8:3"], "multiple of its rate"),
        (["analyze", "--pattern", "power", "--base", "1"], "base"),
        (["compare", "--patterns", "power", "nope"], "--patterns"),
    ],
)
def test_bad_values_give_one_line_errors(capsys, argv, match):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2
    assert match in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["analyze", "--pattern", "nope"],
        ["analyze", "--seq-len", "0"],
        ["analyze", "--layers", "-2"],
        ["analyze", "--window", "-1"],
        ["show", "--block-size", "0"],
        ["compare", "--budget", "0"],
        ["analyze", "--segments", "8-1"],
        ["bench", "layout", "--seq-lens", "0"],
    ],
)
def test_argparse_rejects_bad_flags(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    flag = next(a for a in argv if a.startswith("--"))
    assert flag in capsys.readouterr().err


def test_bench_layout_small(tmp_path, capsys):
    js = tmp_path / "l.json"
    rc, out, _ = _run(
        capsys, "bench", "layout", "--seq-lens", "4096", "10000", "--repeats", "1",
        "--json", str(js),
    )  # fmt: skip
    assert rc == 0 and "total ms" in out
    data = json.loads(js.read_text())
    assert data["meta"]["cpu"] and data["meta"]["torch"]
    rows = data["results"]
    assert {(r["seq_len"], r["pattern"]) for r in rows} == {
        (s, n) for s in (4096, 10000) for n in equal_budget(4096)
    }
    assert all(r["total_ms"] > 0 for r in rows)


def test_installed_console_script(tmp_path):
    """The one subprocess test: the installed ``powerattn`` entry point and ``python -m
    powerattn`` work."""
    exe = shutil.which("powerattn") or str(Path(sys.executable).parent / "powerattn")
    assert Path(exe).exists(), "the powerattn console script is not installed (pip install -e .)"
    js = tmp_path / "s.json"
    res = subprocess.run(
        [exe, "show", "--pattern", "sliding_window", "--seq-len", "2048", "--json", str(js)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "sliding_window" in res.stdout
    assert json.loads(js.read_text())["num_blocks"] == 8
    # `python -m powerattn` is the same command (exit status included: bad input is 2).
    mod = subprocess.run(
        [sys.executable, "-m", "powerattn", "show", "--pattern", "nope", "--seq-len", "2048"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert mod.returncode == 2 and "nope" in mod.stderr, mod.stderr


# ------------------------------------------------------------ new-user errors and notes
def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"powerattn {powerattn.__version__}"


def test_compare_with_a_small_budget_says_who_exceeds_it(capsys):
    rc, out, _ = _run(capsys, "compare", "--seq-len", "32768", "--layers", "4", "--budget", "3")
    assert rc == 0 and "budget of 3 key blocks" in out and "(--budget)" in out
    note = out[out.index("note: over the budget of 3 blocks") :]
    pats = equal_budget(32768, budget=3)
    over = {n for n, p in pats.items() if p.max_degree(128) > 3}
    assert over == {"power", "stride_slash", "longnet", "full"}
    for name in over:
        assert f"  {name} ({pats[name].max_degree(128)}): " in note
    assert "  sliding_window (" not in note and "  dilated (" not in note


def test_default_compare_notes_only_longnet_and_full(capsys):
    rc, out, _ = _run(capsys, "compare", "--seq-len", "32768", "--layers", "3")
    assert rc == 0 and "budget of 10 key blocks" in out
    note = out[out.index("note:") :]
    assert "longnet (13)" in note and "full (128)" in note and "power (" not in note


@pytest.mark.parametrize(
    "argv, match",
    [
        (["compare", "--seq-len", "1000000000"], "at most 262,144 blocks"),
        (["analyze", "--seq-len", "1000000000"], "--block-size"),
        (["compare", "--seq-len", "16777216", "--patterns", "full"], "limit"),
        (["analyze", "--plot", "out.txt"], "suffix must be one of"),
        (["show", "--plot", "mask.doc"], "suffix must be one of"),
        (["analyze", "--pattern", "sliding_window", "--window", "0", "--sink", "0"],
         "attends no key block"),
    ],
)  # fmt: skip
def test_refused_up_front_in_one_line(capsys, argv, match):
    rc, out, err = _run(capsys, *argv)
    assert rc == 2 and match in err and "Traceback" not in err
    assert out == ""  # nothing computed or printed before the refusal


def test_an_unwritable_path_is_one_line(capsys):
    rc, _, err = _run(capsys, "show", "--seq-len", "4096", "--json", "/proc/no/such/dir/x.json")
    assert rc == 2 and err.startswith("powerattn show: error:") and "Traceback" not in err


def test_short_sequences_say_power_is_full_attention(capsys):
    for cmd in ("analyze", "show"):
        rc, out, _ = _run(capsys, cmd, "--seq-len", "1024")
        assert rc == 0 and "it IS full causal attention here" in out and "1,536 tokens" in out
    rc, out, _ = _run(capsys, "analyze", "--seq-len", "2048")
    assert rc == 0 and "IS full" not in out


def test_pattern_flags_come_from_the_declared_parameters(capsys):
    with pytest.raises(SystemExit):
        main(["show", "--help"])
    out = capsys.readouterr().out
    for name in pattern_names():
        for f in pattern_fields(name):
            if f.name != "block_size":
                assert "--" + f.name.replace("_", "-") in out


def test_bad_config_file_and_missing_paths_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\nbatch_size: 3\n")
    rc, _, err = _run(capsys, "train", "--config", str(bad), "--out", str(tmp_path / "o"))
    assert rc == 2 and err.startswith("powerattn train: error:") and "Traceback" not in err
    rc, _, err = _run(
        capsys, "experiment", "passkey", "--out", str(tmp_path / "m"), "--replot", "/nonexistent"
    )
    assert rc == 2 and "/nonexistent" in err and "Traceback" not in err


def test_lists_are_space_or_comma_separated(tmp_path, capsys):
    js = tmp_path / "l.json"
    rc, _, _ = _run(
        capsys, "bench", "layout", "--seq-lens", "4096,8192", "2048", "--repeats", "1",
        "--patterns", "power,full", "--json", str(js),
    )  # fmt: skip
    assert rc == 0
    rows = json.loads(js.read_text())["results"]
    assert [(r["seq_len"], r["pattern"]) for r in rows] == [
        (s, n) for s in (4096, 8192, 2048) for n in ("power", "full")
    ]
    rc, out, _ = _run(capsys, "compare", "--layers", "2", "--patterns", "power,dilated", "full")
    assert rc == 0 and [ln.split()[0] for ln in out.splitlines()[4:7]] == [
        "power", "dilated", "full"
    ]  # fmt: skip
    rc, out, err = _run(capsys, "bench", "layout", "--patterns", "nope", "--seq-lens", "4096")
    assert rc == 2 and "--patterns" in err and out == ""


def test_import_and_cli_stay_light():
    """``import powerattn`` and building the CLI parser load neither torch._dynamo (~2 s) nor
    transformers (~3 s): those load when a command that needs them runs."""
    code = (
        "import sys, powerattn, powerattn.cli; powerattn.cli.build_parser(); "
        "print([m for m in ('torch._dynamo', 'transformers') if m in sys.modules])"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]", res.stdout


def test_gpu_preset_on_cpu_says_so(capsys, monkeypatch):
    """A gpu* preset where no GPU will run it prints a note naming the CPU preset; the CPU
    presets and an explicit CUDA device print none."""
    import torch

    from powerattn.commands.train import warn_gpu_preset_on_cpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    warn_gpu_preset_on_cpu("train", "gpu-mix", None)
    assert "--preset cpu is the CPU preset" in capsys.readouterr().err
    warn_gpu_preset_on_cpu("experiment passkey", "gpu", "auto")
    assert "--preset smoke is the CPU preset" in capsys.readouterr().err
    for preset, device in (("cpu", None), ("smoke", "cpu"), ("gpu", "cuda"), (None, None)):
        warn_gpu_preset_on_cpu("train", preset, device)
        assert capsys.readouterr().err == ""
