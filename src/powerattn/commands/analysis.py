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

from ..patterns import (
    PATTERNS,
    Pattern,
    equal_budget,
    get_pattern,
    pattern_fields,
    pattern_names,
    pattern_params,
)
from ..receptive import coverage, dense_prefix_tokens, full_coverage_layers, hops
from ..validate import add_list_argument, int_converter, positive_int

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

# Text rendering of a mask is for terminals: refuse it beyond this many blocks per side.
MAX_TEXT_BLOCKS = 128
# The analysis commands refuse longer sequences up front (each layout costs ~0.6 s at 2^18
# blocks and grows linearly; 10^9 tokens would run for minutes and need GiBs).
MAX_ANALYSIS_BLOCKS = 1 << 18
# Layer counts shown in the compare table (those <= --layers), plus --layers itself.
_COMPARE_LAYERS = (1, 2, 4, 6, 8, 16)


# ------------------------------------------------------------------------------- helpers
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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def pattern_flags() -> dict[str, dict[str, Any]]:
    """One command-line flag per parameter name over every registered pattern (block size
    apart): ``{name: {"help": ..., "type": ...}}``. The help joins the patterns' own texts
    (patterns sharing a text are listed together); the type comes from the declared
    ``minimum`` (or ``parse``)."""
    texts: dict[str, dict[str, list[str]]] = {}
    types: dict[str, Any] = {}
    for pname in PATTERNS:
        for f in pattern_fields(pname):
            if f.name == "block_size":
                continue
            meta = f.metadata
            texts.setdefault(f.name, {}).setdefault(meta.get("help", ""), []).append(pname)
            if meta.get("parse") is not None:
                conv = meta["parse"]
            elif meta.get("minimum") is not None:
                conv = int_converter(meta["minimum"])
            else:
                conv = type(f.default) if isinstance(f.default, (int, float)) else str
            # Patterns sharing a name share a flag: the loosest bound wins, each pattern's
            # constructor checks its own (and names the parameter).
            if types.get(f.name) is None or conv is int_converter(0):
                types[f.name] = conv
    out = {}
    for name, by_text in texts.items():
        parts = [f"{text} ({', '.join(pats)})" for text, pats in by_text.items()]
        out[name] = {"help": "; ".join(parts), "type": types[name]}
    return out


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
    for name, flag in pattern_flags().items():
        g.add_argument(_flag(name), dest=name, type=flag["type"], help=flag["help"])


def pattern_from_args(args: argparse.Namespace) -> Pattern:
    """The pattern named by ``--pattern`` with the parameters given on the command line.

    A parameter the pattern does not have is refused (ValueError naming it and listing the
    pattern's parameters), rather than silently ignored."""
    params: dict[str, Any] = {}
    for name in ("block_size", *pattern_flags()):
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value
    valid = pattern_params(args.pattern)
    bad = [k for k in params if k not in valid]
    if bad:
        raise ValueError(
            f"pattern {args.pattern!r} has no parameter {', '.join(map(_flag, bad))}; its "
            "parameters: " + ", ".join(map(_flag, valid))
        )
    return get_pattern(args.pattern, **params)


def check_sizes(seq_len: int, block_size: int, plot: str | None = None) -> None:
    """Refuse, before any work, a length the analysis cannot hold and a plot path matplotlib
    cannot write."""
    n = -(-seq_len // block_size)
    if n > MAX_ANALYSIS_BLOCKS:
        raise ValueError(
            f"--seq-len {seq_len:,} is {n:,} blocks of {block_size} tokens; the analysis "
            f"takes at most {MAX_ANALYSIS_BLOCKS:,} blocks "
            f"({MAX_ANALYSIS_BLOCKS * block_size:,} tokens at this block size): use a shorter "
            "--seq-len or a larger --block-size"
        )
    if plot:
        from ..plots import check_plot_path

        check_plot_path(plot)


def _write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _jsonable(value: Any) -> Any:
    """Tuples (e.g. LongNet's segments) as lists, as JSON writes them."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _fmt_params(pattern: Pattern) -> str:
    """``window=5 sink=1`` (block size left out; values as on the command line)."""
    items = []
    for f in pattern_fields(pattern.name):
        if f.name == "block_size":
            continue
        v = getattr(pattern, f.name)
        show = f.metadata.get("show")
        items.append(f"{f.name}={show(v) if show else v}")
    return " ".join(items)


def pattern_summary(pattern: Pattern, seq_len: int, layers: int) -> dict[str, Any]:
    """Degree, density, hops and coverage of ``pattern`` at ``seq_len`` (the JSON record)."""
    n = pattern.num_blocks(seq_len)
    h = hops(pattern, seq_len)
    reach = h >= 0
    return {
        "pattern": pattern.name,
        "params": _jsonable(pattern.params()),
        "seq_len": seq_len,
        "num_blocks": n,
        "max_degree": pattern.max_degree(n),
        "density": pattern.density(seq_len),
        "layers_for_full_coverage": full_coverage_layers(h),
        "reachable_fraction": float(reach.mean()),
        "max_hops": int(h.max()),
        "coverage": [float(c) for c in coverage(pattern, seq_len, layers)],
    }


def _dense_note(pattern: Pattern, seq_len: int) -> str | None:
    """Where the pattern is still full causal attention, say so: a newcomer's first test
    at a few hundred tokens would otherwise compare full attention with itself."""
    upto = dense_prefix_tokens(pattern)
    if upto is None or seq_len > upto:
        return None
    return (
        f"note: at {seq_len:,} tokens {pattern.name} attends every earlier block -- it IS full "
        f"causal attention here; it is sparse only above {upto:,} tokens "
        f"({upto // pattern.block_size} blocks of {pattern.block_size}; use a longer "
        "sequence or a smaller --block-size to see the pattern)"
    )


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
    check_sizes(args.seq_len, pattern.block_size, args.plot)
    s = pattern_summary(pattern, args.seq_len, args.layers)
    print(f"{pattern.describe()} at {args.seq_len:,} tokens = {s['num_blocks']} blocks")
    print(f"  max degree        {s['max_degree']} key blocks per query block")
    print(f"  density           {s['density']:.2%} of the causal triangle")
    if s["layers_for_full_coverage"] is not None:
        print(f"  full coverage at  {s['layers_for_full_coverage']} layers")
    else:
        print(
            f"  full coverage     {_fmt_full(s)}: only {s['reachable_fraction']:.0%} of the "
            "blocks ever reach the last token"
        )
    note = _dense_note(pattern, args.seq_len)
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
    if note:
        print(f"\n{note}")
    if args.json:
        _write_json(args.json, s)
        print(f"wrote {args.json}")
    if args.plot:
        from ..plots import draw_coverage, draw_mask, draw_reachability, plt

        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), layout="constrained")
        # The mask picture is capped at 1024 blocks per side (unreadable beyond anyway).
        draw_mask(axes[0], pattern, min(args.seq_len, pattern.block_size * 1024))
        im = draw_reachability(axes[1], pattern, args.seq_len, args.layers)
        # Below the map: beside it, its label would stand next to the coverage axis's label.
        fig.colorbar(
            im, ax=axes[1], location="bottom", label="layer first reached (grey: not reached)"
        )
        draw_coverage(axes[2], {pattern.name: pattern}, args.seq_len, args.layers)
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=150, bbox_inches="tight")
        plt.close(fig)
        print(f"wrote {args.plot}")
    return 0


# ------------------------------------------------------------------------------- compare
def _compare(args: argparse.Namespace) -> int:
    block_size = args.block_size or 256
    if args.patterns:
        unknown = [p for p in args.patterns if p not in PATTERNS]
        if unknown:
            raise ValueError(
                f"--patterns: unknown {', '.join(unknown)}; valid: {', '.join(PATTERNS)}"
            )
    check_sizes(args.seq_len, block_size, args.plot)
    pats = equal_budget(args.seq_len, block_size, budget=args.budget)
    n = -(-args.seq_len // block_size)
    if args.budget is None:
        ref = next(p for p in pats.values() if type(p).defines_budget)
        budget, source = ref.max_degree(n), f"the degree of {ref.name} at its paper setting"
    else:
        budget, source = args.budget, "--budget"
    if args.patterns:
        pats = {k: pats[k] for k in args.patterns}
    summaries = {name: pattern_summary(p, args.seq_len, args.layers) for name, p in pats.items()}
    shown = sorted({x for x in _COMPARE_LAYERS if x < args.layers} | {args.layers})
    print(
        f"{args.seq_len:,} tokens = {n} blocks of {block_size}; every pattern tuned to a budget "
        f"of {budget} key blocks per query block ({source}); coverage = fraction of blocks "
        "reaching the last token after L layers"
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
    over = {name: s["max_degree"] for name, s in summaries.items() if s["max_degree"] > budget}
    if over:
        print(f"\nnote: over the budget of {budget} blocks:")
        for name, degree in over.items():
            print(f"  {name} ({degree}): {type(pats[name]).budget_rule}")
    if args.json:
        _write_json(
            args.json,
            {
                "seq_len": args.seq_len,
                "block_size": block_size,
                "layers": args.layers,
                "budget": budget,
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
    check_sizes(args.seq_len, pattern.block_size, args.plot)
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
    note = _dense_note(pattern, args.seq_len)
    if note:
        print(f"\n{note}")
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
    add_list_argument(
        p,
        "--patterns",
        metavar="NAME",
        help="only these patterns, space- or comma-separated (default: all of "
        + ", ".join(pattern_names())
        + ")",
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
