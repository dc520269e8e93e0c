"""A pattern defined outside the package and registered with one call is served by every
tool with no other edit: equal budget, the receptive-field analysis, the CLI (flags from its
declared parameters), the figures, the layout benchmark and the operator's backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from example_pattern import GlobalBlocksPattern

import powerattn
from powerattn import plots
from powerattn.bench.layout import run as bench_layout
from powerattn.cli import main
from powerattn.ops.dense import sdpa_attention
from powerattn.patterns import PATTERNS, equal_budget, get_pattern, main_pattern_names, register
from powerattn.receptive import coverage, dense_prefix_tokens, hops, layers_for_full_coverage
from powerattn.testing import compare_attention

NAME = GlobalBlocksPattern.name


@pytest.fixture
def registered():
    register(GlobalBlocksPattern)
    yield GlobalBlocksPattern
    PATTERNS.pop(NAME)


def _bfs(p, seq_len):
    n = p.num_blocks(seq_len)
    dist, frontier = [-1] * n, [n - 1]
    dist[n - 1] = 0
    while frontier:
        nxt = []
        for q in frontier:
            for k in p.kv_blocks(q):
                if dist[k] < 0:
                    dist[k] = dist[q] + 1
                    nxt.append(k)
        frontier = nxt
    return np.array(dist)


def test_registry_budget_and_analysis(registered):
    assert NAME in powerattn.pattern_names() and NAME not in main_pattern_names()
    assert get_pattern(NAME) == GlobalBlocksPattern()
    assert register(GlobalBlocksPattern) is GlobalBlocksPattern  # again: a no-op
    pats = equal_budget(32768)
    assert list(pats)[-1] == NAME  # after the built-ins, in registration order
    p, n = pats[NAME], 128
    budget = pats["power"].max_degree(n)
    assert p.max_degree(n) <= budget < get_pattern(p, every=p.every - 1).max_degree(n)
    np.testing.assert_array_equal(hops(p, 32768), _bfs(p, 32768))
    assert layers_for_full_coverage(p, 32768) is not None
    assert coverage(p, 32768, 30)[-1] == 1.0
    # Window 4 plus the global block 0: query blocks 0..4 attend everything before them.
    assert dense_prefix_tokens(get_pattern(NAME, block_size=1)) == 5
    # The declared bounds are checked at construction.
    with pytest.raises(ValueError, match="every must be a positive integer"):
        get_pattern(NAME, every=0)


def test_layout_and_masks_agree(registered):
    rng = np.random.default_rng(0)
    for _ in range(5):
        p = get_pattern(NAME, block_size=int(rng.integers(1, 6)), **registered.random_params(rng))
        q_len, kv_len = 23, 61
        dense = p.dense_mask(q_len, kv_len)
        q_abs = torch.arange(kv_len - q_len, kv_len)[:, None]
        assert torch.equal(p.mask_mod(0, 0, q_abs, torch.arange(kv_len)[None, :]), dense)
        n = p.num_blocks(kv_len)
        lay = p.block_layout(n)
        for qb in range(n):
            want = sorted({kb for kb in range(qb + 1) if p.block_rule(qb, kb)})
            assert lay.kv_indices[qb, : lay.kv_count[qb]].tolist() == want


def test_cli_figures_and_layout_benchmark(registered, tmp_path, capsys):
    js = tmp_path / "a.json"
    assert main(["analyze", "--pattern", NAME, "--every", "5", "--seq-len", "8192",
                 "--layers", "4", "--json", str(js)]) == 0  # fmt: skip
    assert json.loads(js.read_text())["params"] == {"block_size": 256, "window": 4, "every": 5}
    assert main(["compare", "--seq-len", "32768", "--layers", "6", "--patterns", "power", NAME,
                 "--plot", str(tmp_path / "c.png")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert NAME in out and "every=" in out
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    assert "multiple of EVERY" in capsys.readouterr().out
    assert plots.pattern_color(NAME) == "#8c564b"
    plots.plot_mask(NAME, 8192, tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 1000
    rows = bench_layout(seq_lens=(4096,), patterns=[NAME], repeats=1)
    assert [r["pattern"] for r in rows] == [NAME]
    assert main(["bench", "layout", "--seq-lens", "4096", "--repeats", "1",
                 "--patterns", NAME]) == 0  # fmt: skip
    assert NAME in capsys.readouterr().out


def test_cpu_backends_within_the_tolerance_rule(registered):
    p = get_pattern(NAME, block_size=8, **registered.small_params)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 70, 16, generator=g) for _ in range(3))
    for backend in ("auto", "dense"):
        fn = lambda a, b, c, be=backend: powerattn.sparse_attention(a, b, c, p, backend=be)  # noqa: E731
        report = compare_attention(fn, q, k, v, p)
        assert report["ok"], (backend, report)
    ref = powerattn.sparse_attention(q.double(), k.double(), v.double(), p, backend="reference")
    assert (sdpa_attention(q.double(), k.double(), v.double(), p) - ref).abs().max() < 1e-12


def test_flex_and_decode_kernels_serve_it():
    """FlexAttention's compiled CPU kernel and the Triton decode kernel (interpreted on the
    CPU) in a subprocess: TRITON_INTERPRET must be set before triton is imported."""
    code = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from example_pattern import GlobalBlocksPattern
import powerattn
from powerattn.patterns import register
register(GlobalBlocksPattern)
p = powerattn.get_pattern({NAME!r}, block_size=16, window=2, every=5)
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, 4, 200, 16, generator=g) for _ in range(3))
ref = powerattn.reference_attention(q, k, v, p, upcast=True)
for backend, sq in (("flex", 200), ("decode", 8)):
    out = powerattn.sparse_attention(q[:, :, -sq:], k, v, p, backend=backend)
    err = (out.double() - ref[:, :, -sq:]).abs().max().item()
    print(backend, err)
    assert err < 1e-5, (backend, err)
"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "flex" in res.stdout and "decode" in res.stdout


def test_register_refuses_what_would_break_the_tools():
    from dataclasses import dataclass

    from powerattn.patterns import param

    @dataclass(frozen=True)
    class Clashing(GlobalBlocksPattern):
        name = "clashing_test"
        layers: int = param(2, "a name the CLI already uses", minimum=1)

    with pytest.raises(ValueError, match="layers.*clash"):
        register(Clashing)
    with pytest.raises(ValueError, match="already registered"):
        register(type("Other", (GlobalBlocksPattern,), {"name": "power"}))
    assert "clashing_test" not in PATTERNS
