"""Results of passkey campaigns as text: merging campaigns, the theory / summary / seed
tables and the recipe gate with Wilson intervals (pure functions of ``results.json``)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np


def merge_results(paths: list[str | Path]) -> dict[str, Any]:
    """One results dict from several ``results.json`` or ``results.json.gz`` (campaigns run
    in separate calls): the runs of all, and each file's metadata under ``meta["parts"]``."""
    merged: dict[str, Any] = {"meta": {"parts": []}, "runs": {}}
    source: dict[str, str] = {}
    for path in paths:
        raw = Path(path).read_bytes()
        # History campaigns are committed gzipped (results.json.gz) to keep the tree small.
        res = json.loads(gzip.decompress(raw) if str(path).endswith(".gz") else raw)
        merged["meta"]["parts"].append(res["meta"])
        for name, run in res["runs"].items():
            if name in merged["runs"]:
                raise ValueError(
                    f"run {name!r} is in both {source[name]} and {path}: merge campaigns with "
                    "distinct run names (e.g. replicates made with --seed)"
                )
            merged["runs"][name] = run
            source[name] = str(path)
    return merged


def train_exact_match_by_len(metrics: list[dict[str, Any]], last: int = 200) -> dict[str, float]:
    """Training exact match per document length (``{"4096": 0.98, ...}``, shortest first),
    averaged over the logged windows of the final ``last`` steps of ``metrics`` (the rows of
    a run's ``metrics.jsonl``): what a mixed-length run has learned at each length."""
    if not metrics:
        return {}
    end = metrics[-1]["step"]
    sums: dict[str, list[float]] = {}
    for m in metrics:
        if m["step"] > end - last:
            for n, v in m.get("exact_match_by_len", {}).items():
                sums.setdefault(n, []).append(v)
    return {n: sum(v) / len(v) for n, v in sorted(sums.items(), key=lambda t: int(t[0]))}


def _evaluations(r: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A run's evaluations as ``(label, eval)``: the final model at each evaluated length
    (label: the length), then the model at the end of each stage (label: ``LEN@stage``),
    except a stage-end model that is the final model at a length already listed."""
    out = [(s, e) for s, e in r["eval"].items()]
    out += [
        (f"{s}@stage", e)
        for s, e in r.get("stage_eval", {}).items()
        if not (s in r["eval"] and e["step"] == r["steps_done"])  # the final model again
    ]
    return out


def theory_table(results: dict[str, Any]) -> str:
    """Retrieval split by what the theory says, pooled over every run and evaluation (final
    model per length, and end-of-stage models): per run, needles reachable within ``L - 1``,
    exactly ``L``, or more than ``L`` layers (or never), with how many of each were retrieved
    (exact match) and their mean digit accuracy.
    """
    rows = [f"{'run':<22} {'len':>10}  " + "  ".join(
        f"{h:>22}" for h in ("hops<=L-1: ok/n dig", "hops=L: ok/n dig", "unreachable: ok/n dig")
    )]  # fmt: skip
    tot = np.zeros((3, 2), dtype=int)
    for name, r in results["runs"].items():
        layers = r["layers"]
        for label, e in _evaluations(r):
            nh = np.asarray(e["needle_hops"])
            ok = np.asarray(e["correct"], dtype=bool)
            dig = np.asarray(e["digit_acc"], dtype=float)
            groups = [
                (nh >= 0) & (nh <= layers - 1),
                nh == layers,
                (nh < 0) | (nh > layers),
            ]
            cells = []
            for i, g in enumerate(groups):
                tot[i] += (int(ok[g].sum()), int(g.sum()))
                d = f"{dig[g].mean():.2f}" if g.any() else "  - "
                cells.append(f"{int(ok[g].sum()):>7}/{int(g.sum()):<5} {d:>5}")
            rows.append(f"{name:<22} {label:>10}  " + "  ".join(f"{c:>22}" for c in cells))
    rows.append(f"{'all':<22} {'':>10}  " + "  ".join(f"{f'{a}/{b}':>22}" for a, b in tot))
    return "\n".join(rows)


def summary_table(results: dict[str, Any]) -> str:
    """A plain-text table: per run and evaluated length, accuracy of the final model, of the
    model at the end of that length's stage (``acc@st``), and the theory."""

    def f(x) -> str:
        return "   -  " if x is None else f"{x:6.3f}"

    rows = [
        f"{'run':<22} {'pattern':<15} {'L':>2} {'deg':>3} {'len':>5} {'acc':>6} "
        f"{'acc@st':>6} {'reach':>6} {'acc|r':>6} {'acc|~r':>6} {'tok/s':>9}"
    ]
    for name, r in results["runs"].items():
        stage = r.get("stage_eval", {})
        for seq_len in sorted(set(r["eval"]) | set(stage), key=int):
            e = r["eval"].get(seq_len)
            st = stage.get(seq_len)
            th = e or st
            rows.append(
                f"{name:<22} {r['pattern']:<15} {r['layers']:>2} {r['max_degree']:>3} "
                f"{seq_len:>5} {f(e and e['accuracy'])} {f(st and st['accuracy'])} "
                f"{f(th['reachable_fraction'])} "
                f"{f(th['accuracy_reachable'])} {f(th['accuracy_unreachable'])} "
                + ("        -" if r["tokens_per_s"] is None else f"{r['tokens_per_s']:9.3g}")
            )
    return "\n".join(rows)


def seed_table(results: dict[str, Any]) -> str:
    """Runs that differ only in seed, side by side: per (part, pattern, layers) and length,
    the accuracy of each seed's final model and end-of-stage model, and their means. Runs
    whose configurations differ otherwise (preset, steps, ...) are separate groups."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in results["runs"].values():
        cfg = {k: v for k, v in r["config"].items() if k not in ("seed", "backend")}
        key = (r["part"], r["pattern"], r["layers"], json.dumps(cfg, sort_keys=True))
        groups.setdefault(key, []).append(r)

    def cell(vals: list[float | None]) -> str:
        got = [v for v in vals if v is not None]
        each = " ".join("  -  " if v is None else f"{v:.3f}" for v in vals)
        return f"{each:<20} " + (f"{np.mean(got):6.3f}" if got else "    - ")

    rows = [
        f"{'part':<7}{'pattern':<15}{'L':>2} {'len':>5}  {'final acc by seed':<20} {'mean':>6}  "
        f"{'end-of-stage acc':<20} {'mean':>6}  {'reach':>5}  seeds"
    ]
    for (part, pattern, layers, _), runs in groups.items():
        seeds = [r["config"]["seed"] for r in runs]
        lengths = set()
        for r in runs:
            lengths |= set(r["eval"]) | set(r.get("stage_eval", {}))
        for n in sorted(lengths, key=int):
            fin = [r["eval"].get(n, {}).get("accuracy") for r in runs]
            st = [r.get("stage_eval", {}).get(n, {}).get("accuracy") for r in runs]
            any_ev = next(
                e for r in runs for e in (r["eval"].get(n), r.get("stage_eval", {}).get(n)) if e
            )
            rows.append(
                f"{part:<7}{pattern:<15}{layers:>2} {n:>5}  {cell(fin)}  {cell(st)}  "
                f"{any_ev['reachable_fraction']:5.2f}  {','.join(map(str, seeds))}"
            )
    return "\n".join(rows)


# The gate (docs/experiments.md): full attention must retrieve at least this fraction of the
# needles of every depth bin at the final training length, in every seed, before patterns
# are compared in that preset.
GATE_THRESHOLD = 0.95
GATE_MIN_SEEDS = 3


def wilson_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % for ``z = 1.96``)."""
    if total <= 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total > 0, got {correct}/{total}")
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def gate(
    results: dict[str, Any], threshold: float = GATE_THRESHOLD, min_seeds: int = GATE_MIN_SEEDS
) -> dict[str, Any]:
    """The recipe gate on a campaign's results: every ``main`` full-attention run (one per
    seed) must reach ``threshold`` exact match in every needle-depth bin at its final
    training length, on its final model, and there must be at least ``min_seeds`` seeds.

    Returns ``{"passed": bool, "reason": str, "runs": [...]}``, per run its seed, length,
    steps done/planned and per depth bin ``(depth, correct, total, accuracy, wilson_lo,
    wilson_hi)``.
    """
    runs = [r for r in results["runs"].values() if r["part"] == "main" and r["pattern"] == "full"]
    rows = []
    for r in sorted(runs, key=lambda r: r["config"]["seed"]):
        length = str(r["config"]["stages"][-1]["seq_len"])
        ev = r["eval"].get(length)
        row: dict[str, Any] = {
            "name": r["name"], "seed": r["config"]["seed"], "length": int(length),
            "steps_done": r["steps_done"], "steps_planned": r["steps_planned"],
        }  # fmt: skip
        if ev is None:
            row.update(bins=[], passed=False)
            rows.append(row)
            continue
        d = np.asarray(ev["depth_target"])
        c = np.asarray(ev["correct"], dtype=int)
        bins = []
        for x in np.unique(d):
            k, n = int(c[d == x].sum()), int((d == x).sum())
            bins.append((float(x), k, n, k / n, *wilson_interval(k, n)))
        row.update(
            bins=bins,
            accuracy=float(c.mean()),
            min_bin=min(b[3] for b in bins),
            passed=all(b[3] >= threshold for b in bins),
        )
        rows.append(row)
    seeds = {r["seed"] for r in rows}
    if not rows:
        reason = "no full-attention main run"
    elif len(seeds) < min_seeds:
        reason = f"{len(seeds)} seed(s), the gate needs {min_seeds}"
    elif not all(r["passed"] for r in rows):
        failed = [r["name"] for r in rows if not r["passed"]]
        reason = f"below {threshold} in some depth bin: {', '.join(failed)}"
    else:
        reason = f"every depth bin >= {threshold} in each of {len(seeds)} seeds"
    passed = bool(rows) and len(seeds) >= min_seeds and all(r["passed"] for r in rows)
    return {"passed": passed, "reason": reason, "threshold": threshold, "runs": rows}


def gate_table(results: dict[str, Any], threshold: float = GATE_THRESHOLD) -> str:
    """The gate as text: per full-attention run, exact match per depth bin (correct/total)
    with the 95 % Wilson interval of the worst bin, then PASSED or FAILED and why."""
    g = gate(results, threshold)
    lines = [f"gate: full attention >= {threshold} exact match in every depth bin, every seed"]
    for r in g["runs"]:
        head = (
            f"{r['name']:<14} seed {r['seed']} len {r['length']} steps "
            f"{r['steps_done']}/{r['steps_planned']}"
        )
        if not r["bins"]:
            lines.append(f"{head}: not evaluated at {r['length']}")
            continue
        worst = min(r["bins"], key=lambda b: b[3])
        lines.append(
            f"{head}: acc {r['accuracy']:.3f}, worst bin {worst[0]:.2f}: {worst[1]}/{worst[2]} "
            f"= {worst[3]:.3f} [95% {worst[4]:.3f}, {worst[5]:.3f}] "
            + ("pass" if r["passed"] else "FAIL")
        )
        lines.append("    by bin: " + " ".join(f"{b[0]:.2f}:{b[1]}/{b[2]}" for b in r["bins"]))
    lines.append(("PASSED: " if g["passed"] else "FAILED: ") + g["reason"])
    return "\n".join(lines)
