"""Figures of the passkey experiments, drawn from ``results.json`` (see :mod:`.passkey`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(ev: dict[str, Any]) -> tuple[np.ndarray, ...]:
    """``(distinct depth targets, exact match per depth, needle hops, depth target)``; the
    last two per document."""
    d = np.asarray(ev["depth_target"])
    c = np.asarray(ev["correct"], dtype=float)
    nh = np.asarray(ev["needle_hops"])
    return np.unique(d), np.array([c[d == x].mean() for x in np.unique(d)]), nh, d


def plot_heatmaps(results: dict[str, Any], path: Path, part: str = "main") -> None:
    """Exact match by needle depth (x) and length (y), one panel per pattern (Fig. 3).
    A dot marks the cells where the theory says some needles cannot reach the answer."""
    plt = _plt()
    runs = [r for r in results["runs"].values() if r["part"] == part]
    if not runs:
        return
    cols = min(3, len(runs))
    rows = (len(runs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 2.6 * rows), squeeze=False)
    for ax, r in zip(axes.ravel(), runs, strict=False):
        lengths = sorted(r["eval"], key=int)
        mat, unreach = [], []
        for s in lengths:
            ev = r["eval"][s]
            depths, acc, nh, d = _grid(ev)
            mat.append(acc)
            bad = (nh < 0) | (nh > r["layers"])
            unreach.append([bad[d == x].mean() for x in depths])
        mat, unreach = np.array(mat), np.array(unreach)
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
        yy, xx = np.nonzero(unreach > 0)
        ax.scatter(xx, yy, s=8 + 40 * unreach[yy, xx], c="k", marker="o")
        ax.set_xticks(range(len(depths)), [f"{x:.1f}" for x in depths], fontsize=7)
        ax.set_yticks(range(len(lengths)), lengths, fontsize=7)
        final = r["eval"][lengths[-1]]
        ax.set_title(
            f"{r['pattern']} (L={r['layers']}, deg {r['max_degree']})\n"
            f"acc@{lengths[-1]} {final['accuracy']:.2f}, "
            f"reachable {final['reachable_fraction']:.2f}",
            fontsize=8,
        )
        ax.set_xlabel("needle depth", fontsize=7)
        ax.set_ylabel("length (tokens)", fontsize=7)
    for ax in axes.ravel()[len(runs) :]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="exact match")
    fig.suptitle(
        "Passkey exact match by needle depth and length (dots: theory says unreachable)", y=1.04
    )
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def plot_reach(results: dict[str, Any], path: Path) -> None:
    """Left: accuracy vs the theoretically reachable fraction at the longest trained length,
    one point per run (patterns, and power with fewer layers; Fig. 1b). Right: accuracy by
    the needle's hop count, main runs."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot([0, 1], [0, 1], "k:", lw=1, label="accuracy = reachable fraction")
    for r in results["runs"].values():
        if r["part"] not in ("main", "layers"):
            continue
        s = max(r["eval"], key=int)
        e = r["eval"][s]
        marker = "o" if r["part"] == "main" else "s"
        a.scatter(e["reachable_fraction"], e["accuracy"], marker=marker)
        a.annotate(
            f"{r['pattern']} L={r['layers']}",
            (e["reachable_fraction"], e["accuracy"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    a.set_xlabel("theory: fraction of needles reachable in L layers")
    a.set_ylabel("passkey exact match")
    a.set_xlim(-0.03, 1.05)
    a.set_ylim(-0.03, 1.05)
    a.legend(fontsize=7)
    a.set_title("retrieval vs receptive field (longest length)")
    for r in results["runs"].values():
        if r["part"] != "main":
            continue
        s = max(r["eval"], key=int)
        nh = np.asarray(r["eval"][s]["needle_hops"])
        c = np.asarray(r["eval"][s]["correct"], dtype=float)
        nh = np.where(nh < 0, 99, nh)  # never reachable -> a bin on the right
        xs = np.unique(nh)
        b.plot(
            [min(x, 17) for x in xs],
            [c[nh == x].mean() for x in xs],
            "o-",
            label=r["pattern"],
            ms=3,
        )
        layers = r["layers"]
    b.axvline(layers + 0.5, color="k", ls=":", lw=1)
    b.set_xlabel("hops the needle needs (17 = never)")
    b.set_ylabel("exact match")
    b.set_title(f"accuracy by needle hops (model has {layers} layers)")
    b.legend(fontsize=7)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def plot_long(results: dict[str, Any], path: Path) -> None:
    """Accuracy by needle depth at the long length, with the theoretically reachable
    fraction per depth dashed."""
    plt = _plt()
    runs = [r for r in results["runs"].values() if r["part"] == "long"]
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for r in runs:
        s = max(r["eval"], key=int)
        depths, acc, nh, d = _grid(r["eval"][s])
        ok = (nh >= 0) & (nh <= r["layers"])
        line = ax.plot(depths, acc, "o-", label=f"{r['pattern']} acc ({r['pattern_desc']})")
        ax.plot(
            depths,
            [ok[d == x].mean() for x in depths],
            "--",
            color=line[0].get_color(),
            label=f"{r['pattern']} theory: reachable in {r['layers']} layers",
        )
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("needle depth")
    ax.set_ylabel("exact match / reachable fraction")
    ax.set_title(f"long context: {s} tokens")
    ax.legend(fontsize=6)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Training loss (answer tokens) and batch exact match against step, every run."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, r in results["runs"].items():
        c = np.asarray(r["curve"])
        if c.size == 0:
            continue
        a.plot(c[:, 0], c[:, 1], label=name, lw=1)
        b.plot(c[:, 0], c[:, 2], label=name, lw=1)
    a.set_yscale("log")
    a.set_xlabel("step")
    a.set_ylabel("loss")
    b.set_xlabel("step")
    b.set_ylabel("train exact match")
    b.legend(fontsize=6, ncol=2)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def plot_all(results: dict[str, Any], out: str | Path) -> list[Path]:
    """Draw every figure that the runs in ``results`` allow; returns the paths written."""
    out = Path(out)
    paths = []
    for name, fn in [
        ("heatmaps.png", plot_heatmaps),
        ("reach.png", plot_reach),
        ("long.png", plot_long),
        ("curves.png", plot_curves),
    ]:
        fn(results, out / name)
        if (out / name).exists():
            paths.append(out / name)
    return paths
