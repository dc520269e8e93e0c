"""Verdicts on the paper's passkey claims from a campaign's ``results.json``, by the rules fixed
in ``docs/experiments.md`` ("The gate and the decision rules") before the ``gpu-mix`` runs.

* :func:`bootstrap` -- mean over seeds of a (weighted sum of) exact-match accuracies, with a
  95 % two-level bootstrap interval: seeds with replacement, then documents with replacement
  inside each (seed, length, depth bin) cell. Documents are 0/1, so resampling a cell's
  documents is drawing the counts of the joint outcomes from a multinomial (exact, fast);
  differences between patterns are paired (every model is scored on the same documents).
* :func:`beyond_guessing` -- one-sided exact test that retrievals of needles the theory
  says cannot arrive exceed the chance of guessing their unreachable digits.
* :func:`summary` -- the machine-readable summary (cells + gate + verdicts).

Only final models are used (``eval``, not ``stage_eval``), only of runs that trained every
planned step; ``summary`` refuses runs scored on different documents (e.g. merged campaigns of
two presets). Runs of other steps or models than the others of their group are the caller's
business (``summary`` takes one campaign, possibly merged from several calls).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .tables import GATE_MIN_SEEDS, gate, wilson_interval

RESAMPLES = 10_000
DELTA = 0.05  # practical margin of a difference between patterns
FLOOR = 0.20  # below this at 2x length for both patterns: the 2x claim is not tested
REFUTE_P = 0.01
MIN_SEEDS = GATE_MIN_SEEDS


def _runs(results: dict[str, Any], part: str, pattern: str, layers: int | None = None):
    """``{seed: run}`` of one group of runs."""
    out = {}
    for r in results["runs"].values():
        if r["part"] == part and r["pattern"] == pattern:
            if layers is None or r["layers"] == layers:
                out[r["config"]["seed"]] = r
    return out


def _docs(run: dict[str, Any], lengths: list[int], mask: str | None = None):
    """``(correct 0/1, cell label)`` of a run's final-model documents at ``lengths``;
    ``mask``: ``"reach"`` / ``"unreach"`` keeps the needles the theory lets arrive or not."""
    cs, labels = [], []
    for n in lengths:
        ev = run["eval"].get(str(n))
        if ev is None:
            raise KeyError(f"{run['name']} has no evaluation at {n} tokens")
        c = np.asarray(ev["correct"], dtype=np.int64)
        d = np.asarray(ev["depth_target"])
        keep = np.ones(c.size, dtype=bool)
        if mask is not None:
            nh = np.asarray(ev["needle_hops"])
            reach = (nh >= 0) & (nh <= run["layers"])
            keep = reach if mask == "reach" else ~reach
        cs.append(c[keep])
        labels.append(np.round(d[keep], 6) + 10 * n)  # one label per (length, depth bin)
    return np.concatenate(cs), np.concatenate(labels)


def bootstrap(
    groups: list[dict[int, tuple[np.ndarray, np.ndarray]]],
    weights: list[float],
    resamples: int = RESAMPLES,
    seed: int = 0,
    paired: bool = True,
) -> dict[str, Any]:
    """Mean over seeds of ``sum_g weights[g] * accuracy_g(seed)`` with its 95 % interval.

    Args:
        groups: per group (e.g. a pattern), ``{seed: (correct, cell)}``: 0/1 per document and
            the document's cell. ``paired``: a seed's documents are the same documents in the
            same order in every group (resampled jointly); else each group's documents are
            resampled on their own (e.g. reachable vs unreachable needles of one run).
        weights: one per group (``[1]``: an accuracy; ``[1, -1]``: a difference).

    Returns ``{"estimate", "lo", "hi", "per_seed": {seed: value}, "seeds"}``.
    """
    if len(groups) != len(weights) or not groups:
        raise ValueError("give one weight per group, and at least one group")
    seeds = sorted(set.intersection(*(set(g) for g in groups)))
    if not seeds:
        raise ValueError("the groups share no seed")
    rng = np.random.default_rng(seed)
    w = np.asarray(weights, dtype=np.float64)
    per_seed_boot = np.zeros((len(seeds), resamples))
    point = {}
    for si, s in enumerate(seeds):
        if any(g[s][0].size == 0 for g in groups):
            raise ValueError(f"seed {s}: a group has no documents")
        point[s] = float(sum(wg * g[s][0].mean() for wg, g in zip(w, groups, strict=True)))
        if paired:
            cells = groups[0][s][1]
            if any(not np.array_equal(g[s][1], cells) for g in groups):
                raise ValueError(f"seed {s}: the groups were not scored on the same documents")
            correct = np.stack([g[s][0] for g in groups])  # (k, n)
            hits = _resampled_hits(correct, cells, resamples, rng)  # (resamples, k)
            per_seed_boot[si] = hits @ w / cells.size
        else:
            for wg, g in zip(w, groups, strict=True):
                c, cells = g[s]
                hits = _resampled_hits(c[None], cells, resamples, rng)[:, 0]
                per_seed_boot[si] += wg * hits / cells.size
    pick = rng.integers(0, len(seeds), size=(resamples, len(seeds)))
    boot = per_seed_boot[pick, np.arange(resamples)[:, None]].mean(axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {
        "estimate": float(np.mean(list(point.values()))),
        "lo": float(lo),
        "hi": float(hi),
        "per_seed": point,
        "seeds": seeds,
    }


def _resampled_hits(
    correct: np.ndarray, cells: np.ndarray, resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """``(resamples, k)``: successes of each of the ``k`` rows of ``correct`` (0/1, ``(k,
    n)``) after resampling the documents with replacement inside each cell, jointly for the
    rows: a multinomial draw of the counts of the ``2^k`` joint outcomes per cell."""
    k = correct.shape[0]
    code = (correct * (1 << np.arange(k))[:, None]).sum(axis=0)  # joint outcome per document
    hits = np.zeros((resamples, k))
    for c in np.unique(cells):
        in_cell = code[cells == c]
        counts = np.bincount(in_cell, minlength=1 << k)
        draws = rng.multinomial(in_cell.size, counts / in_cell.size, size=resamples)
        for g in range(k):
            hits[:, g] += draws[:, [j for j in range(1 << k) if j >> g & 1]].sum(axis=1)
    return hits


def beyond_guessing(correct: np.ndarray, guess_prob: np.ndarray) -> dict[str, Any]:
    """Are the retrievals of unreachable needles more than guessing gives? Exact one-sided
    p-value of ``sum(correct)`` under independent Bernoulli(``guess_prob``) (Poisson
    binomial): ``P(X >= observed)``."""
    c = np.asarray(correct, dtype=np.int64)
    p = np.asarray(guess_prob, dtype=np.float64)
    k = int(c.sum())
    dist = np.zeros(k + 1)  # P(X = j) for j < k, and P(X >= k) in the last entry
    dist[0] = 1.0
    for q in p:
        moved = dist[:-1] * q
        dist[:-1] *= 1 - q
        dist[1:] += moved  # the last entry keeps its mass (X >= k stays >= k)
    return {"retrieved": k, "needles": int(c.size), "expected": float(p.sum()),
            "p_value": float(dist[-1])}  # fmt: skip


def _guess(runs: list[dict[str, Any]], lengths: list[int]) -> dict[str, Any] | None:
    """Pooled guessing test over the unreachable needles of ``runs`` at ``lengths``."""
    cs, ps = [], []
    for r in runs:
        for n in lengths:
            ev = r["eval"].get(str(n))
            if ev is None or "guess_prob" not in ev:
                return None
            nh = np.asarray(ev["needle_hops"])
            out = (nh < 0) | (nh > r["layers"])
            cs.append(np.asarray(ev["correct"])[out])
            ps.append(np.asarray(ev["guess_prob"])[out])
    if not cs or not np.concatenate(cs).size:
        return None
    return beyond_guessing(np.concatenate(cs), np.concatenate(ps))


def _fmt(b: dict[str, Any]) -> str:
    seeds = ", ".join(f"{b['per_seed'][s]:.3f}" for s in b["seeds"])
    return f"{b['estimate']:.3f} [95% {b['lo']:.3f}, {b['hi']:.3f}] (seeds: {seeds})"


def _verdict(claim: str, status: str, evidence: str, seeds: int | None = None) -> dict[str, str]:
    """One verdict; with fewer than :data:`MIN_SEEDS` seeds behind it, never more than
    inconclusive (what it would have been is said)."""
    if seeds is not None and seeds < MIN_SEEDS and status in ("reproduced", "refuted"):
        evidence += f"; only {seeds} seed(s), the rules need {MIN_SEEDS} (else: {status})"
        status = "inconclusive"
    return {"claim": claim, "status": status, "evidence": evidence}


def _acc(results, part, pattern, lengths, layers=None, mask=None):
    runs = _runs(results, part, pattern, layers)
    if not runs:
        return None
    return {s: _docs(r, lengths, mask) for s, r in runs.items()}


def _difference(results, part, p, q, lengths, layers=None) -> dict[str, Any] | None:
    a, b = _acc(results, part, p, lengths, layers), _acc(results, part, q, lengths, layers)
    if a is None or b is None:
        return None
    return bootstrap([a, b], [1.0, -1.0])


def training_length(runs: list[dict[str, Any]]) -> int:
    """The longest length the main runs trained at (every run's if there are no main runs;
    0 for none): where the claims about "the training length" are judged."""
    main = [r for r in runs if r["part"] == "main"] or runs
    return max(r["config"]["stages"][-1]["seq_len"] for r in main) if main else 0


def incomplete_runs(results: dict[str, Any]) -> list[str]:
    """Runs that stopped before their last planned step (``--deadline``): their final model
    missed the end of the schedule (with ``wsd``, some or all of the cool-down), so no
    verdict counts them."""
    return [n for n, r in results["runs"].items() if r["steps_done"] < r["steps_planned"]]


def check_same_documents(results: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless every run evaluated at a length was scored on the same
    documents there (same needle depth per document), as the paired comparisons assume: the
    documents are a function of the preset's evaluation seed and the length, so a merge of
    campaigns of different presets (or of code that draws other documents) fails here."""
    first: dict[str, tuple[str, list[float]]] = {}
    for name, r in results["runs"].items():
        for n, ev in r["eval"].items():
            if "depth" not in ev:
                continue
            if n not in first:
                first[n] = (name, ev["depth"])
            elif ev["depth"] != first[n][1]:
                raise ValueError(
                    f"{name} and {first[n][0]} were scored on different documents at {n} "
                    "tokens: merge only campaigns of one preset, run with the same evaluation code"
                )


def verdicts(results: dict[str, Any], train_len: int) -> list[dict[str, str]]:
    """Each claim of the paper's Figure 3 and Figure 1b: reproduced / refuted /
    inconclusive (or "not tested" where the campaign lacks the runs), by the rules of
    ``docs/experiments.md``. Runs stopped before their last step are left out
    (:func:`incomplete_runs`)."""
    cut = set(incomplete_runs(results))
    results = {**results, "runs": {n: r for n, r in results["runs"].items() if n not in cut}}
    out = []
    twice = 2 * train_len
    lengths_sw = [n for n in (train_len, twice) if _has(results, "main", "sliding_window", n)]

    # Sliding window fails beyond its reach.
    claim = "sliding window fails beyond its reach"
    sw = list(_runs(results, "main", "sliding_window").values())
    g = _guess(sw, lengths_sw) if sw and lengths_sw else None
    if g is None:
        out.append(_verdict(claim, "not tested", "no sliding-window runs with guess rates"))
    else:
        reach = _acc(results, "main", "sliding_window", lengths_sw, mask="reach")
        unreach = _acc(results, "main", "sliding_window", lengths_sw, mask="unreach")
        try:  # different documents: each group resampled on its own
            d = bootstrap([reach, unreach], [1.0, -1.0], paired=False)
        except ValueError:  # a seed with no reachable or no unreachable needle
            d = None
        ev = (f"unreachable needles retrieved {g['retrieved']}/{g['needles']} "
              f"(guessing expects {g['expected']:.1f}, p = {g['p_value']:.3g})")  # fmt: skip
        if g["p_value"] < REFUTE_P:
            out.append(_verdict(claim, "refuted", ev, len(sw)))
        elif d is not None and d["lo"] > 0:
            ev += f"; reachable - unreachable {_fmt(d)}"
            out.append(_verdict(claim, "reproduced", ev, len(sw)))
        else:
            extra = f"; reachable - unreachable {_fmt(d)}" if d else ""
            out.append(_verdict(claim, "inconclusive", ev + extra))

    # Dilated finds about half.
    claim = "dilated attention finds about 50 % of the needles"
    a = _acc(results, "main", "dilated", [train_len])
    if a is None:
        out.append(_verdict(claim, "not tested", "no dilated runs"))
    else:
        b = bootstrap([a], [1.0])
        inside = 0.35 <= b["lo"] and b["hi"] <= 0.65
        outside = b["hi"] < 0.35 or b["lo"] > 0.65
        status = "reproduced" if inside else "refuted" if outside else "inconclusive"
        out.append(
            _verdict(claim, status, f"exact match at {train_len}: {_fmt(b)}", len(b["seeds"]))
        )

    # Power and stride slash solve the training length.
    claim = f"power and stride slash solve the training length ({train_len})"
    parts = {p: _acc(results, "main", p, [train_len]) for p in ("power", "stride_slash")}
    if any(v is None for v in parts.values()):
        out.append(_verdict(claim, "not tested", "power or stride slash runs missing"))
    else:
        bs = {p: bootstrap([v], [1.0]) for p, v in parts.items()}
        if all(b["lo"] >= 0.90 for b in bs.values()):
            status = "reproduced"
        elif any(b["hi"] < 0.90 for b in bs.values()):
            status = "refuted"
        else:
            status = "inconclusive"
        ev = "; ".join(f"{p}: {_fmt(b)}" for p, b in bs.items())
        out.append(_verdict(claim, status, ev, min(len(b["seeds"]) for b in bs.values())))

    # Power beats stride slash at twice the training length (untrained), and trained (long).
    for part, label in (("main", "untrained"), ("long", "trained to it")):
        claim = f"power beats stride slash at twice the training length ({twice}, {label})"
        tested = all(_has(results, part, p, twice) for p in ("power", "stride_slash"))
        d = _difference(results, part, "power", "stride_slash", [twice]) if tested else None
        if d is None:
            out.append(_verdict(claim, "not tested", f"no {part} runs evaluated at {twice}"))
            continue
        accs = {p: bootstrap([_acc(results, part, p, [twice])], [1.0])
                for p in ("power", "stride_slash")}  # fmt: skip
        ev = (f"power - stride slash {_fmt(d)}; power {_fmt(accs['power'])}; "
              f"stride slash {_fmt(accs['stride_slash'])}")  # fmt: skip
        if max(a["estimate"] for a in accs.values()) < FLOOR:
            out.append(_verdict(claim, "inconclusive", ev + f"; both below {FLOOR}: floor"))
        elif d["lo"] > 0 and all(v > 0 for v in d["per_seed"].values()):
            out.append(_verdict(claim, "reproduced", ev, len(d["seeds"])))
        elif d["hi"] < DELTA:
            out.append(_verdict(claim, "refuted", ev, len(d["seeds"])))
        else:
            out.append(_verdict(claim, "inconclusive", ev))

    # Power is the best sparse pattern at the training length.
    claim = f"power is the best sparse pattern at {train_len}"
    sparse = ("sliding_window", "stride_slash", "dilated", "longnet")
    others = [p for p in sparse if _runs(results, "main", p)]
    missing = [p for p in sparse if p not in others]
    if not _runs(results, "main", "power") or not others:
        out.append(_verdict(claim, "not tested", "power or the other sparse runs missing"))
    else:
        ds = {q: _difference(results, "main", "power", q, [train_len]) for q in others}
        ev = "; ".join(f"power - {q}: {_fmt(d)}" for q, d in ds.items())
        if missing:  # "best" is a claim about every sparse pattern: a subset cannot prove it
            ev += f"; not run yet: {', '.join(missing)}"
        if all(d["lo"] > 0 for d in ds.values()) and not missing:
            status = "reproduced"
        elif any(d["hi"] < DELTA for d in ds.values()):
            status = "refuted"
        else:
            status = "inconclusive"
        out.append(_verdict(claim, status, ev, min(len(d["seeds"]) for d in ds.values())))

    out += _figure_1b(results, train_len)
    return out


def _has(results, part, pattern, length) -> bool:
    runs = _runs(results, part, pattern)
    return bool(runs) and all(str(length) in r["eval"] for r in runs.values())


_TRACKS = "accuracy tracks the reachable fraction (hard-limit regime)"
_FULL_REACH = "with full reach, power still wins (full-reach regime)"


def _figure_1b(results: dict[str, Any], train_len: int) -> list[dict[str, str]]:
    """Accuracy tracks the reachable fraction (hard-limit regime), and with full reach power
    still wins (full-reach regime), over the layers runs plus the main runs (L = 6)."""
    n = str(train_len)
    runs = [r for r in results["runs"].values()
            if r["part"] in ("layers", "main") and r["pattern"] in
            ("power", "sliding_window", "stride_slash") and n in r["eval"]]  # fmt: skip
    if not any(r["part"] == "layers" for r in runs):
        return [
            _verdict(_TRACKS, "not tested", "no layers runs"),
            _verdict(_FULL_REACH, "not tested", "no layers runs"),
        ]
    out = []
    hard = [r for r in runs if r["eval"][n]["reachable_fraction"] < 0.95]
    g = _guess(hard, [train_len])
    low, high, weak = [], [], []
    for r in hard:
        ev = r["eval"][n]
        nh = np.asarray(ev["needle_hops"])
        ok = np.asarray(ev["correct"])
        reach = (nh >= 0) & (nh <= r["layers"])
        if reach.sum() < 64:
            continue
        lo, hi = wilson_interval(int(ok[reach].sum()), int(reach.sum()))
        (high if lo >= 0.80 else low).append(r["name"])
        if hi < 0.50:
            weak.append(r["name"])
    gate_passed = gate(results)["passed"]
    ev = (f"{len(hard)} runs below full reach; accuracy on reachable needles >= 0.80 "
          f"(Wilson lower bound) in {len(high)}, not in {len(low)}")  # fmt: skip
    if g is not None:
        ev += (f"; unreachable retrieved {g['retrieved']}/{g['needles']} (guessing expects "
               f"{g['expected']:.1f}, p = {g['p_value']:.3g})")  # fmt: skip
    claim = _TRACKS
    if not hard:
        out.append(_verdict(claim, "not tested", "no run below full reach"))
    elif (g is not None and g["p_value"] < REFUTE_P) or (weak and gate_passed):
        ev += f"; below 0.50: {weak}" if weak else ""
        out.append(_verdict(claim, "refuted", ev, len({r["config"]["seed"] for r in hard})))
    elif not low and high and g is not None:
        out.append(_verdict(claim, "reproduced", ev, len({r["config"]["seed"] for r in hard})))
    else:
        out.append(_verdict(claim, "inconclusive", ev))

    # Full reach: the smallest L with every needle in reach, per pattern, and every L above.
    claim = _FULL_REACH
    full_from = {}
    for p in ("power", "sliding_window", "stride_slash"):
        ls = sorted({r["layers"] for r in runs if r["pattern"] == p
                     and r["eval"][n]["reachable_fraction"] >= 1.0})  # fmt: skip
        if ls:
            full_from[p] = ls[0]
    evid, ds = [], []
    for q in ("stride_slash", "sliding_window"):
        if q not in full_from or "power" not in full_from:
            evid.append(f"{q}: no L <= 8 with full reach, not tested")
            continue
        for layers in sorted({r["layers"] for r in runs if r["pattern"] == q}):
            if layers < max(full_from[q], full_from["power"]):
                continue
            part_p = "main" if layers == _main_layers(results) else "layers"
            d = _difference_mixed(results, part_p, q, train_len, layers)
            if d is not None:
                ds.append(d)
                evid.append(f"L={layers} power - {q}: {_fmt(d)}")
    if not ds:
        out.append(_verdict(claim, "not tested", "; ".join(evid)))
    elif all(d["lo"] > 0 for d in ds):
        out.append(_verdict(claim, "reproduced", "; ".join(evid), min(len(d["seeds"]) for d in ds)))
    elif all(d["hi"] < DELTA for d in ds):
        out.append(_verdict(claim, "refuted", "; ".join(evid), min(len(d["seeds"]) for d in ds)))
    else:
        out.append(_verdict(claim, "inconclusive", "; ".join(evid)))
    return out


def _main_layers(results: dict[str, Any]) -> int | None:
    main = [r["layers"] for r in results["runs"].values() if r["part"] == "main"]
    return main[0] if main else None


def _difference_mixed(results, part, q, length, layers) -> dict[str, Any] | None:
    a = _acc(results, part, "power", [length], layers)
    b = _acc(results, part, q, [length], layers)
    if a is None or b is None:
        return None
    return bootstrap([a, b], [1.0, -1.0])


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The machine-readable summary of a campaign (issue 10's schema): one cell per
    pattern / seed / layers / length / depth bin of the final models (correct, total,
    reachable_total, reachable_correct), the gate, and the verdicts. Runs stopped before their
    last step are listed under ``incomplete`` and left out of the cells and the verdicts;
    runs scored on different documents are refused (:func:`check_same_documents`)."""
    check_same_documents(results)
    cut = incomplete_runs(results)
    runs = [r for n, r in results["runs"].items() if n not in cut]
    train_len = training_length(runs)
    cells = []
    for r in runs:
        for n, ev in sorted(r["eval"].items(), key=lambda t: int(t[0])):
            d = np.asarray(ev["depth_target"])
            c = np.asarray(ev["correct"], dtype=bool)
            nh = np.asarray(ev["needle_hops"])
            reach = (nh >= 0) & (nh <= r["layers"])
            for x in np.unique(d):
                m = d == x
                cells.append({
                    "pattern": r["pattern"], "part": r["part"], "seed": r["config"]["seed"],
                    "layers": r["layers"], "length": int(n), "depth": round(float(x), 4),
                    "correct": int(c[m].sum()), "total": int(m.sum()),
                    "reachable_total": int((m & reach).sum()),
                    "reachable_correct": int((m & reach & c).sum()),
                })  # fmt: skip
    block = runs[0]["config"]["task"]["block_size"] if runs else None
    return {
        "train_len": train_len,
        "block_size": block,
        "seeds": sorted({r["config"]["seed"] for r in runs}),
        "gate": {k: v for k, v in gate(results).items() if k != "runs"},
        "incomplete": cut,
        "cells": cells,
        "verdicts": verdicts(results, train_len) if runs else [],
    }


def verdict_table(s: dict[str, Any]) -> str:
    """The verdicts of :func:`summary` as text."""
    g = s["gate"]
    lines = [f"gate: {'PASSED' if g['passed'] else 'FAILED'} ({g['reason']})"]
    if not g["passed"]:
        lines.append("  (the gate failed: no verdict below is a test of the paper)")
    if s.get("incomplete"):
        lines.append("left out (stopped before their last step): " + ", ".join(s["incomplete"]))
    for v in s["verdicts"]:
        lines.append(f"{v['status']:<13} {v['claim']}: {v['evidence']}")
    return "\n".join(lines)


__all__ = [
    "beyond_guessing",
    "bootstrap",
    "check_same_documents",
    "incomplete_runs",
    "summary",
    "verdict_table",
    "verdicts",
]
