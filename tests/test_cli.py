"""The analysis commands and the layout benchmark, called in-process (plus one call of the
installed ``powerattn`` script)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from powerattn.cli import main
from powerattn.patterns import equal_budget, get_pattern, pattern_names
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
    """The one subprocess test: the installed ``powerattn`` entry point works."""
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
