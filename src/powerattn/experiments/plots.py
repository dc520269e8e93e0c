"""Figures of the passkey experiments, drawn from ``results.json`` (see :mod:`.passkey`)."""

from __future__ import annotations

import json
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


def _heatmap_evals(r: dict[str, Any]) -> tuple[dict[str, Any], set[str] | None]:
    """``({length: eval}, starred)``: the evaluations a heat map shows for one run. Runs with
    hard stages: each length on the model at the end of its stage where the run has it, else
    on the final model (those lengths are ``starred``). Runs whose stages mix lengths every
    step: the final model everywhere (a stage end is not the end of training at a length;
    ``starred`` is None)."""
    if any(st.get("mix") for st in r["config"]["stages"]):
        return dict(r["eval"]), None
    stage = r.get("stage_eval", {})
    lengths = set(stage) | set(r["eval"])
    return {n: stage.get(n) or r["eval"][n] for n in lengths}, lengths - set(stage)


def plot_heatmaps(results: dict[str, Any], path: Path, part: str = "main") -> None:
    """Exact match by needle depth (x) and length (y), one panel per pattern (Fig. 3): the
    mean over the seeds of runs that differ only in seed. A dot marks the cells where the
    theory says some needles cannot reach the answer.

    Runs with hard stages score each length on the model at the end of that length's stage
    when they have it (``stage_eval``), else on the final model (length marked ``*``: older
    results, or a stage the run did not finish); runs that mix lengths every step, on the
    final model."""
    plt = _plt()
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results["runs"].values():
        if r["part"] == part:
            cfg = {k: v for k, v in r["config"].items() if k not in ("seed", "backend")}
            key = (r["pattern"], r["layers"], json.dumps(cfg, sort_keys=True))
            groups.setdefault(key, []).append(r)
    runs = list(groups.values())
    if not runs:
        return
    cols = min(3, len(runs))
    rows = (len(runs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.3 * rows), squeeze=False)
    starred, staged = False, False
    for ax, group in zip(axes.ravel(), runs, strict=False):
        r = group[0]
        scored = [_heatmap_evals(g) for g in group]
        lengths = sorted(set.intersection(*(set(e) for e, _ in scored)), key=int)
        stars = set().union(*(st for _, st in scored if st is not None))
        staged |= any(st is not None for _, st in scored)
        starred |= bool(stars & set(lengths))
        labels = [n + ("*" if n in stars else "") for n in lengths]
        mat, unreach = [], []
        for n in lengths:
            accs = []
            for evals, _ in scored:
                depths, acc, nh, d = _grid(evals[n])
                accs.append(acc)
            mat.append(np.mean(accs, axis=0))
            bad = (nh < 0) | (nh > r["layers"])  # the same documents in every seed
            unreach.append([bad[d == x].mean() for x in depths])
        mat, unreach = np.array(mat), np.array(unreach)
        im = ax.imshow(mat, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
        yy, xx = np.nonzero(unreach > 0)
        ax.scatter(xx, yy, s=8 + 40 * unreach[yy, xx], c="k", marker="o")
        ax.set_xticks(range(len(depths)), [f"{x:.2f}" for x in depths], fontsize=6)
        ax.set_yticks(range(len(lengths)), labels, fontsize=7)
        final = scored[0][0][lengths[-1]]
        seeds = ",".join(str(g["config"]["seed"]) for g in group)
        ax.set_title(
            f"{r['pattern']} (L={r['layers']}, deg {r['max_degree']}), seeds {seeds}\n"
            f"acc@{labels[-1]} {mat[-1].mean():.2f}, "
            f"reachable {final['reachable_fraction']:.2f}",
            fontsize=8,
        )
        ax.set_xlabel("needle depth", fontsize=7)
        ax.set_ylabel("length (tokens)", fontsize=7)
    for ax in axes.ravel()[len(runs) :]:
        ax.axis("off")
    fig.subplots_adjust(hspace=0.6, wspace=0.3)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="exact match")
    which = "model at the end of each length's stage" if staged else "final models"
    which += "; *: final model" if starred else ""
    fig.suptitle(
        f"Passkey exact match by needle depth and length ({which}; dots: theory says unreachable)",
        y=1.04,
    )
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


# Figure 1b's patterns (the paper's), in this order and colour everywhere in reach.png.
_FIG1B = ("power", "stride_slash", "sliding_window")


def plot_reach(results: dict[str, Any], path: Path) -> None:
    """Figure 1b: retrieval against the receptive-field theory at the training length (see
    :func:`~powerattn.experiments.verdicts.training_length`), complete runs only.

    Top left: one point set per (pattern, L), means over seeds, against the fraction of needles
    reachable within L layers: exact match on the reachable needles (filled), on the
    unreachable ones (x) and over all (hollow; a model that finds exactly the reachable
    needles sits on the dotted diagonal). Top right: power, stride slash and sliding window by
    number of layers: exact match (mean over seeds; small dots: seeds) with the theory's
    reachable fraction dashed. Bottom left: exact match by the number of hops the needle
    needs (main runs). Bottom right: every run of Figure 1b's patterns, its needles split
    into within L - 1 hops, exactly L hops and beyond L (one dot per run and class)."""
    from .verdicts import incomplete_runs, training_length

    cut = set(incomplete_runs(results))
    runs = [r for n, r in results["runs"].items()
            if n not in cut and r["part"] in ("main", "layers")]  # fmt: skip
    n = str(training_length(runs))
    runs = [r for r in runs if n in r["eval"]]
    if not runs:
        return
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["pattern"], r["layers"]), []).append(r)
    patterns = list(dict.fromkeys([*(p for p in _FIG1B if any(p == q for q, _ in groups)),
                                   *(q for q, _ in groups)]))  # fmt: skip

    def stats(r: dict[str, Any]) -> tuple[float, float, float, float]:
        """(reachable fraction, accuracy on reachable, on unreachable (nan: none), overall)"""
        ev = r["eval"][n]
        nh, ok = np.asarray(ev["needle_hops"]), np.asarray(ev["correct"], dtype=float)
        reach = (nh >= 0) & (nh <= r["layers"])
        acc_r = ok[reach].mean() if reach.any() else np.nan
        acc_u = ok[~reach].mean() if (~reach).any() else np.nan
        return reach.mean(), acc_r, acc_u, ok.mean()

    plt = _plt()
    fig, ((a, m), (b, h)) = plt.subplots(2, 2, figsize=(15, 10))
    a.plot([0, 1], [0, 1], "k:", lw=1)
    for (pat, layers), group in sorted(groups.items()):
        s = np.asarray([stats(r) for r in group])
        x, acc_r, acc, acc_u = s[:, 0].mean(), s[:, 1].mean(), s[:, 3].mean(), np.nan
        if not np.isnan(s[:, 2]).all():  # some seed has unreachable needles
            acc_u = np.nanmean(s[:, 2])
        color = f"C{patterns.index(pat)}"
        a.scatter([x], [acc_r], color=color, s=30)
        a.scatter([x], [acc], facecolors="none", edgecolors=color, s=30)
        if not np.isnan(acc_u):
            a.scatter([x], [acc_u], color=color, marker="x", s=30)
        a.annotate(f"{pat} L={layers}", (x, acc_r), fontsize=7, xytext=(3, 3),
                   textcoords="offset points")  # fmt: skip
    for marker, label in (("o", "reachable needles"), ("x", "unreachable needles")):
        a.scatter([], [], color="0.4", marker=marker, label=f"exact match on {label}")
    a.scatter([], [], facecolors="none", edgecolors="0.4", label="exact match, all needles")
    a.legend(fontsize=7, loc="upper left")
    a.set_xlabel(f"theory: fraction of needles reachable in L layers ({n} tokens)")
    a.set_ylabel(f"exact match at {n} (mean over seeds)")
    a.set_xlim(-0.03, 1.05)
    a.set_ylim(-0.03, 1.05)
    a.set_title("retrieval vs receptive field")

    drawn = False
    for pat in _FIG1B:
        mine = sorted(((layers, g) for (q, layers), g in groups.items() if q == pat),
                      key=lambda t: t[0])  # fmt: skip
        if not mine:
            continue
        drawn, color = True, f"C{patterns.index(pat)}"
        within = mine[-1][1][0]["eval"][n].get("reachable_within", [])
        m.plot(np.arange(1, len(within) + 1), within, "--", color=color, lw=1,
               label=f"{pat}: reachable in L layers (theory)")  # fmt: skip
        xs = [layers for layers, _ in mine]
        ys = [np.mean([stats(r)[3] for r in g]) for _, g in mine]
        m.plot(xs, ys, "o-", color=color, label=f"{pat}: exact match (mean over seeds)")
        for layers, g in mine:
            m.scatter([layers] * len(g), [stats(r)[3] for r in g], s=10, color=color, alpha=0.5)
    if drawn:
        m.set_xlabel("layers L")
        m.set_ylabel(f"exact match / reachable fraction at {n}")
        m.set_ylim(-0.03, 1.05)
        m.legend(fontsize=6)
        m.set_title("by number of layers (the paper's Figure 1b)")
    else:
        m.axis("off")

    layers = None
    for r in runs:
        if r["part"] != "main":
            continue
        ev = r["eval"][n]
        nh = np.asarray(ev["needle_hops"])
        c = np.asarray(ev["correct"], dtype=float)
        nh = np.where(nh < 0, 99, nh)  # never reachable -> a bin on the right
        xs = np.unique(nh)
        b.plot([min(x, 17) for x in xs], [c[nh == x].mean() for x in xs], "o-",
               label=r["name"], ms=3)  # fmt: skip
        layers = r["layers"]
    if layers is not None:
        b.axvline(layers + 0.5, color="k", ls=":", lw=1)
        b.set_title(f"main runs at {n}: by needle hops (models have {layers} layers)")
        b.legend(fontsize=6, ncol=2)
    b.set_xlabel("hops the needle needs (17 = never)")
    b.set_ylabel("exact match")
    _plot_hop_classes(h, [r for r in runs if r["pattern"] in _FIG1B], n, patterns)
    fig.tight_layout()
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def _plot_hop_classes(ax, runs: list[dict[str, Any]], n: str, patterns: list[str]) -> None:
    """Per run, exact match on needles within L - 1 hops, at exactly L hops and beyond L:
    whether a model uses all L layers for the hop is a per-seed matter (results/passkey)."""
    classes = ("within L - 1 hops", "exactly L hops", "beyond L (unreachable)")
    rng = np.random.default_rng(0)  # jitter only
    drawn = set()
    for r in sorted(runs, key=lambda r: (r["pattern"], r["layers"])):
        ev, L = r["eval"][n], r["layers"]
        nh = np.asarray(ev["needle_hops"])
        ok = np.asarray(ev["correct"], dtype=float)
        masks = ((nh >= 0) & (nh < L), nh == L, (nh < 0) | (nh > L))
        pat = r["pattern"]
        for i, sel in enumerate(masks):
            if sel.sum() < 8:  # too few needles of this class to show a rate
                continue
            x = i + (_FIG1B.index(pat) - 1) * 0.25 + rng.uniform(-0.06, 0.06)
            ax.scatter([x], [ok[sel].mean()], s=18 + 4 * L, color=f"C{patterns.index(pat)}",
                       alpha=0.7, label=None if pat in drawn else pat)  # fmt: skip
            ax.annotate(str(L), (x, ok[sel].mean()), fontsize=6, xytext=(3, -2),
                        textcoords="offset points")  # fmt: skip
            drawn.add(pat)
    if not drawn:
        ax.axis("off")
        return
    ax.set_xticks(range(len(classes)), classes)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel(f"exact match at {n}")
    ax.set_title("every run by hop class (dots: runs; numbers: L)")
    ax.legend(fontsize=7, loc="center right")


def plot_long(results: dict[str, Any], path: Path) -> None:
    """Accuracy by needle depth at the long length, one colour per pattern (one marker per
    seed), with the theoretically reachable fraction per depth dashed."""
    plt = _plt()
    runs = [r for r in results["runs"].values() if r["part"] == "long"]
    if not runs:
        return
    fig, ax = plt.subplots(figsize=(7.5, 4))
    patterns = list(dict.fromkeys(r["pattern"] for r in runs))
    theory_drawn = set()
    for r in runs:
        s = max(r["eval"], key=int)
        depths, acc, nh, d = _grid(r["eval"][s])
        color = f"C{patterns.index(r['pattern'])}"
        seed = r["config"]["seed"]
        ax.plot(depths, acc, "-", marker="os^vD"[seed % 5], color=color,
                label=f"{r['name']}: exact match (seed {seed})")  # fmt: skip
        if r["pattern"] not in theory_drawn:  # the theory depends on the pattern only
            theory_drawn.add(r["pattern"])
            ok = (nh >= 0) & (nh <= r["layers"])
            ax.plot(depths, [ok[d == x].mean() for x in depths], "--", color=color,
                    label=f"{r['pattern_desc']}: reachable in {r['layers']} layers")  # fmt: skip
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("needle depth")
    ax.set_ylabel("exact match / reachable fraction")
    ax.set_title(f"long context: {s} tokens")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
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
    if b.get_legend_handles_labels()[0]:  # runs stopped before their first log have none
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
