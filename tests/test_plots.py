"""Plots: the arrays behind each picture are right, and every figure function writes a file."""

from __future__ import annotations

import numpy as np
import pytest

from powerattn import plots
from powerattn.patterns import equal_budget, get_pattern, pattern_names
from powerattn.receptive import hops, reachability

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", pattern_names())
def test_block_image_is_the_block_reduced_mask(name):
    p = get_pattern(name, block_size=4)
    seq_len = 90  # 23 blocks, the last one partial
    img = plots.block_image(p, seq_len)
    n = p.num_blocks(seq_len)
    assert img.shape == (n, n)
    dense = np.zeros((n * 4, n * 4), dtype=bool)
    dense[:seq_len, :seq_len] = p.dense_mask(seq_len).numpy()
    blocks = dense.reshape(n, 4, n, 4)
    np.testing.assert_array_equal(img > 0, blocks.any(axis=(1, 3)))
    # 1 (partial) exactly on the diagonal, where attended.
    diag = np.eye(n, dtype=bool)
    np.testing.assert_array_equal(img == 1, diag & (img > 0))


def test_hop_image_matches_reachability():
    p = get_pattern("power")
    img = plots.hop_image(p, 32768, 8)
    reach = reachability(p, 32768, 8)
    np.testing.assert_array_equal(img > 0, reach)
    h = hops(p, 32768)
    first = np.maximum(h, 1)
    np.testing.assert_array_equal(img[-1][reach[-1]], first[reach[-1]])


def test_figures_are_written(tmp_path):
    pats = equal_budget(16384)
    out = [
        plots.plot_mask("power", 8192, tmp_path / "m.png"),
        plots.plot_reachability(["power", "dilated"], 16384, 6, tmp_path / "r.png"),
        plots.plot_coverage(pats, 16384, 6, tmp_path / "c.png"),
        plots.plot_compare(pats, 16384, 6, tmp_path / "deep" / "x.png"),
    ]
    for path in out:
        assert path.read_bytes()[:8] == PNG
    assert plots.plot_mask("power", 8192, str(tmp_path / "m.svg")).endswith(".svg")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: plots.plot_coverage([], 1024, 3, p), "patterns"),
        (lambda p: plots.plot_coverage(["nope"], 1024, 3, p), "unknown pattern"),
        (lambda p: plots.plot_reachability(["power"], 1024, 0, p), "layers"),
        (lambda p: plots.plot_compare(["power"], 0, 3, p), "seq_len"),
        (lambda p: plots.plot_mask("power", 256 * (plots.MAX_MASK_BLOCKS + 1), p), "seq_len"),
    ],
)
def test_bad_input(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path / "x.png")


def test_mask_picture_has_a_legend_for_both_colours():
    fig, ax = plots.plt.subplots()
    plots.draw_mask(ax, "power", 8192)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    plots.plt.close(fig)
    assert labels == ["whole block attended", "diagonal block: causal inside"]


def test_colours_come_from_the_pattern_classes():
    from powerattn.patterns import PATTERNS

    colours = {name: plots.pattern_color(name) for name in pattern_names()}
    assert colours == {name: PATTERNS[name].color for name in pattern_names()}
    assert len(set(colours.values())) == len(colours)  # one colour per pattern
