"""``powerattn cp-plan | cp-scaling``: context parallelism on paper.

* ``cp-plan``    -- one pattern, one (S, P): what each rank receives from whom, per layer;
* ``cp-scaling`` -- bytes and modelled time per rank per layer vs P, our plan against
  all-gather / ring, as a table, JSON and a figure.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..distributed import cp_plan
from ..distributed.scaling import Hardware, LayerShape, format_table, plot_scaling, scaling_table
from ..validate import add_list_argument, positive_int
from .analysis import _add_pattern_args, pattern_from_args

# (flag, type, help) per option; the default is the dataclass field of the flag's name.
_SHAPE_ARGS = (
    ("--q-heads", positive_int, "query heads"),
    ("--kv-heads", positive_int, "key/value heads, what travels"),
    ("--head-dim", positive_int, "dimension per head"),
    ("--elem-bytes", positive_int, "bytes per element: 2 for bf16"),
)
_HARDWARE_ARGS = (
    ("--link-gb-s", float, "GB/s one direction inside a node"),
    ("--net-gb-s", float, "GB/s per GPU between nodes"),
    ("--gpus-per-node", positive_int, "GPUs per node: beyond it, transfers use the network"),
    ("--fwd-tflops", float, "attention forward throughput, TFLOP/s of attended pairs"),
    ("--train-tflops", float, "forward+backward throughput, TFLOP/s"),
)


def _add_shape(p: argparse.ArgumentParser) -> None:
    for title, defaults, args in (
        ("layer shape (default: Qwen2-7B, bf16)", LayerShape(), _SHAPE_ARGS),
        ("hardware model (default: H200 measurements of this project)", Hardware(), _HARDWARE_ARGS),
    ):
        g = p.add_argument_group(title)
        for flag, kind, text in args:
            default = getattr(defaults, flag[2:].replace("-", "_"))
            g.add_argument(flag, type=kind, default=default, help=f"{text} (default {default:g})")


def _write_json(path: str, data) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def _cmd_plan(args: argparse.Namespace) -> int:
    pattern = pattern_from_args(args)
    plan = cp_plan(pattern, args.seq_len, args.world_size)
    shape = LayerShape(args.q_heads, args.kv_heads, args.head_dim, args.elem_bytes)
    print(f"{pattern.describe()}, {args.seq_len:,} tokens over {args.world_size} ranks")
    print(f"{'rank':>5} {'recv tokens':>12} {'recv MB':>9} {'peers':>6}  sources")
    for p in range(args.world_size):
        mb = shape.kv_bytes(plan.recv_tokens[p]) / 1e6
        print(
            f"{p:>5} {plan.recv_tokens[p]:>12,} {mb:>9.1f} {plan.recv_peers[p]:>6}  "
            f"{plan.sources(p)}"
        )
    if args.json:
        _write_json(args.json, plan.summary())
    return 0


def _cmd_scaling(args: argparse.Namespace) -> int:
    pattern = pattern_from_args(args)
    shape = LayerShape(args.q_heads, args.kv_heads, args.head_dim, args.elem_bytes)
    hw = Hardware(
        link_gb_s=args.link_gb_s,
        net_gb_s=args.net_gb_s,
        gpus_per_node=args.gpus_per_node,
        fwd_tflops=args.fwd_tflops,
        train_tflops=args.train_tflops,
    )
    rows = scaling_table(pattern, args.seq_len, args.worlds, shape, hw)
    print(format_table(rows))
    if args.json:
        _write_json(args.json, {"rows": rows})
    if args.plot:
        measured = json.loads(Path(args.measured).read_text()) if args.measured else ()
        if isinstance(measured, dict):
            measured = measured.get("scaling_points", ())
        # Only points measured at this sequence length belong on its figure.
        measured = [m for m in measured if m.get("seq_len", args.seq_len) == args.seq_len]
        plot_scaling(rows, args.plot, measured)
        print(f"wrote {args.plot}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cp-plan",
        help="context parallelism: which K/V blocks each rank receives (per layer)",
        description="The static communication plan of context_parallel_attention for one "
        "pattern, sequence length and world size: tokens and MB each rank receives per "
        "layer, and from which ranks.",
    )
    _add_pattern_args(p)
    p.add_argument("--seq-len", type=positive_int, default=1 << 20, help="tokens (default 1M)")
    p.add_argument("--world-size", type=positive_int, default=64, help="ranks (default 64)")
    p.add_argument("--block-size", type=positive_int, help="tokens per block (default 256)")
    p.add_argument("--json", metavar="PATH", help="also write the plan summary as JSON")
    _add_shape(p)
    p.set_defaults(func=_cmd_plan)

    s = sub.add_parser(
        "cp-scaling",
        help="context parallelism on paper: bytes and time per rank per layer vs P",
        description="Bytes received per rank per layer (forward; forward+backward in the "
        "JSON) for our plan against all-gather and ring attention, and the modelled "
        "compute vs transfer time of the busiest rank (link speed and kernel throughput "
        "are parameters; beyond 8 GPUs pass the network's bandwidth).",
    )
    _add_pattern_args(s)
    s.add_argument("--seq-len", type=positive_int, default=1 << 20, help="tokens (default 1M)")
    add_list_argument(
        s,
        "--worlds",
        positive_int,
        default=[2, 4, 8, 16, 32, 64],
        help="world sizes (default 2,4,8,16,32,64)",
    )
    s.add_argument("--block-size", type=positive_int, help="tokens per block (default 256)")
    s.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    s.add_argument("--plot", metavar="PATH", help="write the figure (.png/.pdf/.svg)")
    s.add_argument(
        "--measured",
        metavar="JSON",
        help="overlay measured points: a JSON list (or the 'scaling_points' of bench cp's "
        "JSON) of {world_size, scheme, fwd_bytes and/or fwd_comm_ms}",
    )
    _add_shape(s)
    s.set_defaults(func=_cmd_scaling)


def main(argv: list[str] | None = None) -> int:
    """``python -m powerattn.commands.cp cp-plan|cp-scaling ...`` (before the CLI lists it)."""
    parser = argparse.ArgumentParser(prog="powerattn")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
