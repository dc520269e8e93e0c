"""``powerattn analyze | compare | show``: the receptive-field theory on the command line.

* ``analyze`` -- one pattern: degree, density, layers to full coverage, coverage per layer;
* ``compare`` -- every pattern at an equal budget, one table and one figure;
* ``show``    -- one pattern's block mask, as a picture and (for small sizes) as text.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..patterns import Pattern, equal_budget, get_pattern, pattern_names, pattern_params
from ..receptive import coverage, hops
from .argtypes import nonnegative_int, positive_int

# Vocabulary shared by every --help text of this module.
_GLOSSARY = """\
terms:
  block     the unit of sparsity: BLOCK_SIZE consecutive tokens. A pattern decides, per
            (query block, key block) pair, whether the pair is computed; inside the query's
            own (diagonal) block the usual causal mask applies.
  distance  d = query block - key block (0 = the query's own block).
  window    W: the key blocks at distance 0..W-1 (the query's own block included).
  sink      S: the first S blocks of the sequence, attended by every query block.
  degree    the number of key blocks one query block attends; the budget is the largest
            degree over the sequence, i.e. the compute per query block.
  density   the fraction of the causal triangle's query-key pairs that is computed.
  hop       one layer of attention: information moves from a key block to a query block
            along one edge of the pattern. After L layers the last token can know a block
            iff a path of at most L edges leads to it (its receptive field).
  coverage  after L layers: the fraction of blocks whose information can reach the last
            token. PowerAttention covers every block within distance 2^L - 1 in L layers.
"""

_PARAM_HELP = {
    "window": "local window W in blocks: distances 0..W-1 (power, sliding_window, "
    "stride_slash; for dilated: the span 0..W-1 that the dilation thins out)",
    "sink": "sink S: the first S blocks, attended by every query (power, sliding_window, "
    "stride_slash)",
    "stride": "stride_slash: also attend every distance that is a multiple of STRIDE blocks",
    "base": "power: attend distances that are powers of BASE (default 2)",
    "dilation": "dilated: keep only distances that are multiples of DILATION inside the window",
    "segments": "longnet: (segment length, dilation rate) pairs in blocks, written "
    "'8:1,16:2,32:4' (default: the paper's 8:1,16:2,32:4,64:8,128:16)",
}

# Text rendering of a mask is for terminals: refuse it beyond this many blocks per side.
MAX_TEXT_BLOCKS = 128
# Layer counts shown in the compare table (those <= --layers), plus --layers itself.
_COMPARE_LAYERS = (1, 2, 4, 6, 8, 16)


# ------------------------------------------------------------------------------- helpers
def parse_segments(text: str) -> tuple[tuple[int, int], ...]:
    """``'8:1,16:2'`` -> ``((8, 1), (16, 2))``."""
    try:
        pairs = tuple(
            (int(w), int(r)) for w, r in (item.split(":") for item in text.split(",") if item)
        )
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"segments must look like '8:1,16:2,32:4' (length:rate pairs), got {text!r}"
        ) from None
    if not pairs:
        raise argparse.ArgumentTypeError("segments must hold at least one length:rate pair")
    return pairs


def _add_common(p: argparse.ArgumentParser, *, layers: bool, seq_len: int = 32768) -> None:
    p.add_argument(
        "--seq-len",
        type=positive_int,
        default=seq_len,
        help=f"sequence length in tokens (default {seq_len}"
        + (", the paper's setting)" if seq_len == 32768 else "; the paper's is 32768)"),
    )
    p.add_argument(
        "--block-size",
        type=positive_int,
        default=None,
        help="tokens per block (default: the pattern's own, 256 as in the paper)",
    )
    if layers:
        p.add_argument(
            "--layers",
            type=positive_int,
            default=28,
            help="number of stacked attention layers (hops) to analyse (default 28, Qwen2-7B)",
        )
    p.add_argument("--json", metavar="PATH", help="also write the numbers as JSON to PATH")


def _add_pattern_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pattern",
        default="power",
        choices=pattern_names(),
        help="the pattern (default power)",
    )
    g = p.add_argument_group(
        "pattern parameters (each only for the patterns that have it; default: paper setting)"
    )
    g.add_argument("--window", type=nonnegative_int, help=_PARAM_HELP["window"])
    g.add_argument("--sink", type=nonnegative_int, help=_PARAM_HELP["sink"])
    g.add_argument("--stride", type=positive_int, help=_PARAM_HELP["stride"])
    g.add_argument("--base", type=positive_int, help=_PARAM_HELP["base"])
    g.add_argument("--dilation", type=positive_int, help=_PARAM_HELP["dilation"])
    g.add_argument("--segments", type=parse_segments, help=_PARAM_HELP["segments"])


def pattern_from_args(args: argparse.Namespace) -> Pattern:
    """The pattern named by ``--pattern`` with the parameters given on the command line.

    A parameter the pattern does not have is refused (ValueError naming it and listing the
    pattern's parameters), rather than silently ignored."""
    params: dict[str, Any] = {}
    for name in ("block_size", *_PARAM_HELP):
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value
    valid = pattern_params(args.pattern)
    bad = [k for k in params if k not in valid]
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        raise ValueError(
            f"pattern {args.pattern!r} has no parameter {flags}; its parameters: "
            + ", ".join("--" + k.replace("_", "-") for k in valid)
        )
    return get_pattern(args.pattern, **params)


def _write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: [list(s) for s in v] if k == "segments" else v for k, v in params.items()}


def _fmt_params(pattern: Pattern) -> str:
    """``window=5 sink=1`` (block size left out; segments as on the command line)."""
    items = []
    for k, v in pattern.params().items():
        if k == "block_size":
            continue
        if k == "segments":
            v = ",".join(f"{w}:{r}" for w, r in v)
        items.append(f"{k}={v}")
    return " ".join(items)


def pattern_summary(pattern: Pattern, seq_len: int, layers: int) -> dict[str, Any]:
    """Degree, density, hops and coverage of ``pattern`` at ``seq_len`` (the JSON record)."""
    n = pattern.num_blocks(seq_len)
    h = hops(pattern, seq_len)
    reach = h >= 0
    full_at = None if not reach.all() else max(int(h.max()), 1)
    return {
        "pattern": pattern.name,
        "params": _jsonable(pattern.params()),
        "seq_len": seq_len,
        "num_blocks": n,
        "max_degree": pattern.max_degree(n),
        "density": pattern.density(seq_len),
        "layers_for_full_coverage": full_at,
        "reachable_fraction": float(reach.mean()),
        "max_hops": int(h.max()),
        "coverage": [float(c) for c in coverage(pattern, seq_len, layers)],
    }


def _fmt_full(s: dict[str, Any]) -> str:
    if s["layers_for_full_coverage"] is not None:
        return str(s["layers_for_full_coverage"])
    return f"never ({s['reachable_fraction']:.0%})"


def _table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> str:
    """A plain-text table; columns in ``left`` are left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    line = fmt(header)
    return "\n".join([line, "-" * len(line), *(fmt(r) for r in rows)])


# ------------------------------------------------------------------------------- analyze
def _analyze(args: argparse.Namespace) -> int:
    pattern = pattern_from_args(args)
    s = pattern_summary(pattern, args.seq_len, args.layers)
    print(f"{pattern.describe()} at {args.seq_len:,} tokens = {s['num_blocks']} blocks")
    print(f"  max degree        {s['max_degree']} key blocks per query block")
    print(f"  density           {s['density']:.2%} of the causal triangle")
    print(f"  full coverage at  {_fmt_full(s)} layers")
    cov = s["coverage"]
    rows, prev = [], -1.0
    for layer, c in enumerate(cov, start=1):
        if c == prev == 1.0:  # nothing changes after full coverage: one line says so
            rows.append([f"{layer}..{len(cov)}", "100.0%", str(s["num_blocks"])])
            break
        rows.append([str(layer), f"{c:.1%}", str(round(c * s["num_blocks"]))])
        prev = c
    print()
    print(_table(["layers", "coverage", "blocks reached"], rows))
    if args.json:
        _write_json(args.json, s)
        print(f"wrote {args.json}")
    if args.plot:
        from ..plots import draw_coverage, draw_mask, draw_reachability, plt

        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
        # The mask picture is capped at 1024 blocks per side (unreadable beyond anyway).
        draw_mask(axes[0], pattern, min(args.seq_len, pattern.block_size * 1024))
        im = draw_reachability(axes[1], pattern, args.seq_len, args.layers)
        fig.colorbar(im, ax=axes[1], label="layer first reached (grey: not reached)")
        draw_coverage(axes[2], {pattern.name: pattern}, args.seq_len, args.layers)
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=150, bbox_inches="tight")
        plt.close(fig)
        print(f"wrote {args.plot}")
    return 0


# ------------------------------------------------------------------------------- compare
def _compare(args: argparse.Namespace) -> int:
    block_size = args.block_size or 256
    pats = equal_budget(args.seq_len, block_size, budget=args.budget)
    if args.patterns:
        unknown = [p for p in args.patterns if p not in pats]
        if unknown:
            raise ValueError(f"--patterns: unknown {', '.join(unknown)}; valid: {', '.join(pats)}")
        pats = {k: pats[k] for k in args.patterns}
    summaries = {name: pattern_summary(p, args.seq_len, args.layers) for name, p in pats.items()}
    shown = sorted({x for x in _COMPARE_LAYERS if x < args.layers} | {args.layers})
    n = next(iter(summaries.values()))["num_blocks"]
    print(
        f"{args.seq_len:,} tokens = {n} blocks of {block_size}; patterns at equal budget "
        f"(max degree of power unless --budget); coverage = fraction of blocks reaching the "
        f"last token after L layers"
    )
    print()
    header = ["pattern", "degree", "density", "full at L", *(f"L={x}" for x in shown), "params"]
    rows = []
    for name, s in summaries.items():
        rows.append(
            [
                name,
                str(s["max_degree"]),
                f"{s['density']:.1%}",
                _fmt_full(s),
                *(f"{s['coverage'][x - 1]:.0%}" for x in shown),
                _fmt_params(pats[name]),
            ]
        )
    print(_table(header, rows, left=(0, len(header) - 1)))
    if "longnet" in summaries and "power" in summaries:
        if summaries["longnet"]["max_degree"] != summaries["power"]["max_degree"]:
            print(
                "\nnote: longnet keeps the paper's segment shape, which cannot be tuned to the "
                "exact budget; its degree differs from the others."
            )
    if args.json:
        _write_json(
            args.json,
            {
                "seq_len": args.seq_len,
                "block_size": block_size,
                "layers": args.layers,
                "budget": summaries.get("power", next(iter(summaries.values())))["max_degree"]
                if args.budget is None
                else args.budget,
                "patterns": summaries,
            },
        )
        print(f"wrote {args.json}")
    if args.plot:
        from ..plots import plot_compare

        plot_compare(pats, args.seq_len, args.layers, args.plot)
        print(f"wrote {args.plot}")
    return 0


# ---------------------------------------------------------------------------------- show
def mask_text(pattern: Pattern, seq_len: int) -> str:
    """The block mask as text, one character per block: '#' full, '+' partial (the causal
    diagonal), '.' skipped; rows are query blocks, columns key blocks."""
    from ..plots import block_image

    n = pattern.num_blocks(seq_len)
    if n > MAX_TEXT_BLOCKS:
        raise ValueError(
            f"seq_len: {n} blocks is too many to print (limit {MAX_TEXT_BLOCKS}); use --plot"
        )
    img = block_image(pattern, seq_len)
    chars = np.array([".", "+", "#"])
    width = len(str(n - 1))
    lines = [f"{q:>{width}} " + "".join(chars[row]) for q, row in enumerate(img)]
    return "\n".join(lines)


def _show(args: argparse.Namespace) -> int:
    pattern = pattern_from_args(args)
    n = pattern.num_blocks(args.seq_len)
    deg = pattern.max_degree(n)
    print(
        f"{pattern.describe()} at {args.seq_len:,} tokens: {n} blocks, max degree {deg}, "
        f"density {pattern.density(args.seq_len):.2%}"
    )
    text = args.text if args.text is not None else n <= args.max_text_blocks
    if text:
        print(
            "rows: query blocks, columns: key blocks; '#' full block, '+' causal diagonal, "
            "'.' skipped"
        )
        print(mask_text(pattern, args.seq_len))
    if args.json:
        lay = pattern.block_layout(n)
        _write_json(
            args.json,
            {
                "pattern": pattern.name,
                "params": _jsonable(pattern.params()),
                "seq_len": args.seq_len,
                "num_blocks": n,
                "max_degree": deg,
                "density": pattern.density(args.seq_len),
                # kv_blocks[q]: the key blocks query block q attends, ascending
                "kv_blocks": [
                    row[:c].tolist()
                    for row, c in zip(lay.kv_indices.numpy(), lay.kv_count.numpy(), strict=True)
                ],
            },
        )
        print(f"wrote {args.json}")
    if args.plot:
        from ..plots import plot_mask

        plot_mask(pattern, args.seq_len, args.plot)
        print(f"wrote {args.plot}")
    elif not text:
        print(f"({n} blocks: too large for text; pass --plot PATH for a picture)")
    return 0


# ------------------------------------------------------------------------------ register
def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "analyze",
        help="one pattern's degree, density and receptive field layer by layer",
        description=(
            "Analyse one pattern at one sequence length: how many key blocks each query block "
            "attends (degree = compute), what fraction of the causal triangle is computed, and "
            "how the last token's receptive field grows with depth.\n\n"
            "example: powerattn analyze --pattern power --seq-len 32768 --layers 28\n\n" + _GLOSSARY
        ),
        formatter_class=fmt,
    )
    _add_pattern_args(p)
    _add_common(p, layers=True)
    p.add_argument(
        "--plot", metavar="PATH", help="write mask + reachability + coverage figure to PATH"
    )
    p.set_defaults(func=_analyze)

    p = sub.add_parser(
        "compare",
        help="every pattern at an equal budget: one table, one figure",
        description=(
            "Compare all patterns at an equal budget, as the paper does: each baseline is "
            "tuned to the largest setting whose degree does not exceed PowerAttention's at "
            "this length (LongNet keeps the paper's segment shape; full is the ceiling). "
            "Prints degree, density, the layers needed until every block reaches the last "
            "token, and coverage at a few depths.\n\n"
            "example: powerattn compare --seq-len 32768 --layers 28 --plot compare.png\n\n"
            + _GLOSSARY
        ),
        formatter_class=fmt,
    )
    _add_common(p, layers=True)
    p.add_argument(
        "--budget",
        type=positive_int,
        default=None,
        help="max key blocks per query block (default: power's degree at --seq-len)",
    )
    p.add_argument(
        "--patterns",
        nargs="+",
        metavar="NAME",
        help="only these patterns (default: all of " + ", ".join(pattern_names()) + ")",
    )
    p.add_argument(
        "--plot", metavar="PATH", help="write coverage curves + reachability maps to PATH"
    )
    p.set_defaults(func=_compare)

    p = sub.add_parser(
        "show",
        help="draw one pattern's block mask (picture, or text for small sizes)",
        description=(
            "Show a pattern's mask at block level: rows are query blocks, columns key blocks. "
            f"Printed as text when it has at most {MAX_TEXT_BLOCKS // 2} blocks per side "
            "(override with --text/--no-text); --plot PATH writes a picture.\n\n"
            "example: powerattn show --pattern power --seq-len 8192 --plot power.png\n\n"
            + _GLOSSARY
        ),
        formatter_class=fmt,
    )
    _add_pattern_args(p)
    _add_common(p, layers=False, seq_len=8192)
    p.add_argument("--plot", metavar="PATH", help="write the mask picture to PATH")
    p.add_argument(
        "--text",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"print the mask as text (default: when it has <= {MAX_TEXT_BLOCKS // 2} blocks; "
        f"at most {MAX_TEXT_BLOCKS})",
    )
    p.set_defaults(func=_show, max_text_blocks=MAX_TEXT_BLOCKS // 2)
