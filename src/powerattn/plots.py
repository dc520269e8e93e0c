"""Pictures of patterns and their receptive fields (matplotlib, Agg backend: files only).

* :func:`plot_mask` -- the block mask of one pattern (query blocks x key blocks);
* :func:`plot_reachability` -- which blocks reach the last token after 1..L layers, one panel
  per pattern (the paper's Fig. 1a);
* :func:`plot_coverage` -- the fraction of blocks reached vs layers, all patterns on one axis
  (the theoretical curve of the paper's Fig. 1b);
* :func:`plot_compare` -- coverage curves above reachability maps, the ``powerattn compare``
  figure.

Every function writes the figure to ``path`` (format from the suffix: .png, .pdf, .svg) and
returns ``path``. The ``draw_*`` helpers draw onto a given axis, for custom figures.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # never open a window: the CLI and CI run headless

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from .patterns import PATTERNS, Pattern, get_pattern  # noqa: E402
from .receptive import coverage, hop_image, hops  # noqa: E402
from .validate import check_int  # noqa: E402

# Refuse block images larger than this many blocks per side (an 8192^2 image is 64M pixels).
MAX_MASK_BLOCKS = 8192

PathLike = str | os.PathLike

_UNREGISTERED_COLOR = Pattern.color


def pattern_color(name: str) -> str:
    """The pattern's fixed colour (its class's ``color``), so every figure reads the same way."""
    cls = PATTERNS.get(name)
    return cls.color if cls is not None else _UNREGISTERED_COLOR


def check_plot_path(path: PathLike) -> None:
    """Refuse a path whose suffix matplotlib cannot write, before any work is done."""
    suffix = Path(path).suffix.lstrip(".").lower()
    formats = plt.figure().canvas.get_supported_filetypes()
    plt.close("all")
    if suffix not in formats:
        raise ValueError(
            f"cannot write a figure to {str(path)!r}: the suffix must be one of "
            + ", ".join("." + f for f in sorted(formats))
        )


def _as_dict(patterns: Mapping[str, Pattern] | Sequence[Pattern | str]) -> dict[str, Pattern]:
    if isinstance(patterns, Mapping):
        out = {str(k): get_pattern(v) for k, v in patterns.items()}
    else:
        out = {}
        for p in patterns:
            p = get_pattern(p)
            out[p.name] = p
    if not out:
        raise ValueError("patterns must name at least one pattern")
    return out


def save_figure(fig: plt.Figure, path: PathLike, dpi: int = 150) -> PathLike:
    """Write ``fig`` to ``path`` (its folder made), close it, return ``path``."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------- arrays
def block_image(pattern: Pattern | str, seq_len: int) -> np.ndarray:
    """``(n, n)`` int8 image of the block mask over ``n = ceil(seq_len / block_size)`` blocks:
    2 where the query block attends the whole key block, 1 where only part of it (the
    causally cut diagonal), 0 where not at all. Built from ``block_layout`` (no token mask)."""
    pattern = get_pattern(pattern)
    n = pattern.num_blocks(seq_len)
    if n > MAX_MASK_BLOCKS:
        raise ValueError(
            f"seq_len {seq_len} gives {n} blocks; the mask picture is limited to "
            f"{MAX_MASK_BLOCKS} blocks per side (use a larger block_size or a shorter seq_len)"
        )
    lay = pattern.block_layout(n)
    idx = lay.kv_indices.numpy().astype(np.int64)
    full = lay.is_full.numpy()
    rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)
    valid = idx >= 0
    img = np.zeros((n, n), dtype=np.int8)
    img[rows[valid], idx[valid]] = np.where(full[valid], 2, 1)
    return img


# ----------------------------------------------------------------------------- drawing
def draw_mask(ax: Axes, pattern: Pattern | str, seq_len: int) -> None:
    """Draw :func:`block_image` on ``ax`` (dark: full block, light: partial, white: skipped)."""
    pattern = get_pattern(pattern)
    img = block_image(pattern, seq_len)
    cmap = ListedColormap(["white", "#9ecae1", "#08306b"])
    ax.imshow(img, cmap=cmap, vmin=0, vmax=2, interpolation="nearest", aspect="equal")
    ax.legend(
        handles=[
            Patch(facecolor=cmap(2), label="whole block attended"),
            Patch(facecolor=cmap(1), label="diagonal block: causal inside"),
        ],
        loc="upper right",
        fontsize=7,
        framealpha=0.9,
    )
    n = img.shape[0]
    ax.set_xlabel("key block")
    ax.set_ylabel("query block")
    deg = int((img > 0).sum(axis=1).max())
    dens = pattern.density(seq_len)
    ax.set_title(
        f"{pattern.describe()}\n{n} blocks of {pattern.block_size} tokens, "
        f"max {deg} blocks/row, density {dens:.1%}",
        fontsize=8,
    )


def draw_reachability(
    ax: Axes, pattern: Pattern | str, seq_len: int, layers: int, vmax: int | None = None
) -> AxesImage:
    """Draw :func:`hop_image` on ``ax``: layers downwards, blocks rightwards, the last block
    (the reading token) on the right; colour = the layer at which a block was first reached
    (scale 1..``vmax``, default the deepest hop drawn). Returns the image, for a colorbar."""
    pattern = get_pattern(pattern)
    img = hop_image(pattern, seq_len, layers).astype(float)
    if vmax is None:
        vmax = int(img.max())
    img[img == 0] = np.nan  # unreached: background
    cmap = plt.get_cmap("viridis").with_extremes(bad="#f0f0f0")
    n = img.shape[1]
    im = ax.imshow(
        img,
        cmap=cmap,
        vmin=1,
        vmax=max(vmax, 2),
        interpolation="nearest",
        aspect="auto",
        extent=(-0.5, n - 0.5, layers + 0.5, 0.5),
    )
    ax.set_xlabel("key block (last block = the query)")
    ax.set_ylabel("layers")
    ax.set_title(pattern.name, color=pattern_color(pattern.name), fontsize=10)
    return im


def _deepest_hop(pats: Mapping[str, Pattern], seq_len: int, layers: int) -> int:
    return max(min(int(hops(p, seq_len).max()), layers) for p in pats.values())


def draw_coverage(
    ax: Axes, patterns: Mapping[str, Pattern] | Sequence[Pattern | str], seq_len: int, layers: int
) -> None:
    """Coverage (fraction of blocks reaching the last token) vs number of layers."""
    check_int("layers", layers)
    x = np.arange(1, layers + 1)
    for label, p in _as_dict(patterns).items():
        ax.plot(
            x,
            coverage(p, seq_len, layers),
            marker="o",
            markersize=3,
            color=pattern_color(p.name),
            label=label,
            linewidth=2.5 if type(p).defines_budget else 1.5,
        )
    ax.set_xlabel("layers")
    ax.set_ylabel("fraction of blocks reaching the last token")
    ax.set_xlim(0.5, layers + 0.5)
    ax.set_ylim(0, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


# ----------------------------------------------------------------------------- figures
def plot_mask(pattern: Pattern | str, seq_len: int, path: PathLike) -> PathLike:
    """Write the block mask of ``pattern`` at ``seq_len`` tokens to ``path``; returns ``path``."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    draw_mask(ax, pattern, seq_len)
    return save_figure(fig, path)


def plot_reachability(
    patterns: Mapping[str, Pattern] | Sequence[Pattern | str],
    seq_len: int,
    layers: int,
    path: PathLike,
) -> PathLike:
    """Reachability maps (layers x blocks) of one or more patterns side by side."""
    pats = _as_dict(patterns)
    check_int("layers", layers)
    fig, axes = plt.subplots(
        1, len(pats), figsize=(3.4 * len(pats) + 1, 3.4), squeeze=False, layout="constrained"
    )
    vmax = _deepest_hop(pats, seq_len, layers)
    for ax, p in zip(axes[0], pats.values(), strict=True):
        im = draw_reachability(ax, p, seq_len, layers, vmax=vmax)
    fig.colorbar(im, ax=axes[0].tolist(), label="layer first reached", shrink=0.9)
    fig.suptitle(f"blocks reaching the last token after L layers ({seq_len:,} tokens)")
    return save_figure(fig, path)


def plot_coverage(
    patterns: Mapping[str, Pattern] | Sequence[Pattern | str],
    seq_len: int,
    layers: int,
    path: PathLike,
) -> PathLike:
    """Coverage vs layers for all ``patterns`` on one axis."""
    fig, ax = plt.subplots(figsize=(6, 4))
    draw_coverage(ax, patterns, seq_len, layers)
    ax.set_title(f"receptive field of the last token, {seq_len:,} tokens")
    return save_figure(fig, path)


def plot_compare(
    patterns: Mapping[str, Pattern] | Sequence[Pattern | str],
    seq_len: int,
    layers: int,
    path: PathLike,
) -> PathLike:
    """The ``powerattn compare`` figure: coverage curves on top, one reachability map per
    pattern below (full attention, when given, is drawn in the curves only)."""
    pats = _as_dict(patterns)
    check_int("layers", layers)
    maps = {k: p for k, p in pats.items() if not type(p).ceiling} or pats
    ncol = min(len(maps), 3)
    nrow = -(-len(maps) // ncol)
    fig = plt.figure(figsize=(4.4 * ncol, 4.2 + 3.0 * nrow), layout="constrained")
    grid = fig.add_gridspec(1 + nrow, ncol, height_ratios=[1.4] + [1.0] * nrow)
    ax = fig.add_subplot(grid[0, :])
    draw_coverage(ax, pats, seq_len, layers)
    ax.set_title(
        f"receptive field of the last token at equal budget, {seq_len:,} tokens "
        f"({get_pattern(next(iter(pats.values()))).num_blocks(seq_len)} blocks)"
    )
    vmax = _deepest_hop(maps, seq_len, layers)
    map_axes = []
    for i, p in enumerate(maps.values()):
        map_axes.append(fig.add_subplot(grid[1 + i // ncol, i % ncol]))
        im = draw_reachability(map_axes[-1], p, seq_len, layers, vmax=vmax)
    fig.colorbar(im, ax=map_axes, label="layer first reached (grey: not reached)", shrink=0.8)
    return save_figure(fig, path)
