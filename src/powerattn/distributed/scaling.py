"""A scaling model of context parallelism on paper: bytes and time per rank per layer vs P.

Three ways to bring a rank the keys/values it needs, for one attention layer:

* ``plan`` -- ours (:func:`cp_plan`): only the blocks the pattern reads; the backward sends
  the gradients of exactly those blocks back (same volume);
* ``allgather`` -- every rank gathers the whole K/V ((P - 1) / P of the sequence), the
  backward reduce-scatters dK/dV (same volume);
* ``ring`` -- ring attention: the same forward volume in P - 1 steps; its backward circulates
  K/V *and* dK/dV (twice the forward volume).

Volumes are exact (from the plan); bytes = tokens x Hkv x D x element size x 2 (K and V) x
batch. Times are a model: volume / link bandwidth against the rank's attention compute
(exact attended query-key pairs of its shard, from the pattern's layout) / a kernel
throughput. Defaults are this project's H200 measurements (results/kernel: ~365 TFLOP/s
forward, ~190 TFLOP/s forward+backward counted as 3.5x the forward FLOPs, for
``sparse_attention``; 330 GB/s each way over NVLink between two H200s). A layer is
communication-bound when its transfer takes longer than its compute (overlap cannot hide
it). Beyond one node (8 GPUs) the link is the network, not NVLink: pass its bandwidth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..patterns import Pattern, get_pattern
from .plan import cp_plan

SCHEMES = ("plan", "allgather", "ring")


@dataclass(frozen=True)
class LayerShape:
    """One attention layer (default: Qwen2-7B: 28 query heads, 4 K/V heads, D = 128, bf16)."""

    q_heads: int = 28
    kv_heads: int = 4
    head_dim: int = 128
    elem_bytes: int = 2
    batch: int = 1

    def kv_bytes(self, tokens: int) -> int:
        """Bytes of K and V for ``tokens`` positions."""
        return 2 * tokens * self.kv_heads * self.head_dim * self.elem_bytes * self.batch


@dataclass(frozen=True)
class Hardware:
    """Link and kernel speeds of the model (defaults: measured on H200s in this project, and
    a 400 Gb/s network port per GPU between nodes)."""

    link_gb_s: float = 330.0  # inside a node (NVLink), one direction, GB/s (1e9 bytes)
    net_gb_s: float = 50.0  # between nodes, per GPU, one direction
    gpus_per_node: int = 8
    fwd_tflops: float = 365.0  # sparse_attention forward, attended pairs
    train_tflops: float = 190.0  # forward + backward (3.5x forward FLOPs) per second

    def transfer_ms(self, intra_bytes: float, inter_bytes: float) -> float:
        """Both links work at once: the slower of the two transfers."""
        return max(intra_bytes / self.link_gb_s, inter_bytes / self.net_gb_s) / 1e6


def shard_pairs(pattern: Pattern, seq_len: int, world_size: int) -> list[int]:
    """Per rank: attended (query, key) pairs of its shard (exact, from the block layout)."""
    plan = cp_plan(pattern, seq_len, world_size)
    c, bs = plan.chunk_blocks, pattern.block_size
    out = []
    for p in range(world_size):
        lay = pattern.block_layout(c, num_kv_blocks=(p + 1) * c, q_block_offset=p * c)
        idx = lay.kv_indices.numpy()
        qb = np.arange(p * c, (p + 1) * c)[:, None]
        off = int(((idx >= 0) & (idx != qb)).sum())
        diag = int((idx == qb).any(axis=1).sum())
        out.append(off * bs * bs + diag * bs * (bs + 1) // 2)
    return out


def layer_costs(
    pattern: Pattern | str,
    seq_len: int,
    world_size: int,
    shape: LayerShape | None = None,
    hw: Hardware | None = None,
) -> dict:
    """Bytes received per rank per layer (forward, and forward + backward) for each scheme,
    and the modelled compute and communication times (ms) of the busiest rank. Ranks
    ``0..gpus_per_node-1`` share a node, and so on (NVLink inside, the network between)."""
    pattern = get_pattern(pattern)
    shape = shape or LayerShape()
    hw = hw or Hardware()
    plan = cp_plan(pattern, seq_len, world_size)
    L, P = plan.local_len, world_size
    node = [r // hw.gpus_per_node for r in range(P)]
    # Plan: per rank, tokens from ranks on its node and from other nodes (busiest rank).
    recv = [
        (
            sum(b.size for s, b in plan.recv[p] if node[s] == node[p]) * pattern.block_size,
            sum(b.size for s, b in plan.recv[p] if node[s] != node[p]) * pattern.block_size,
        )
        for p in range(P)
    ]
    send = [[0, 0] for _ in range(P)]
    for p in range(P):
        for s, b in plan.recv[p]:
            send[s][node[s] != node[p]] += int(b.size) * pattern.block_size
    local_peers = min(P, hw.gpus_per_node) - 1
    gather = (local_peers * L, (P - 1 - local_peers) * L)
    # Per scheme, per rank: (tokens from its node, tokens from other nodes).
    fwd_tokens = {"plan": recv, "allgather": [gather] * P, "ring": [gather] * P}
    # Backward: dK/dV of the received blocks go back (plan: a rank receives what it sent);
    # ring attention circulates K/V and dK/dV.
    ring_bwd = (2 * gather[0], 2 * gather[1])
    bwd_tokens = {"plan": send, "allgather": [gather] * P, "ring": [ring_bwd] * P}
    pairs = max(shard_pairs(pattern, seq_len, world_size))
    flops = 4 * pairs * shape.head_dim * shape.q_heads * shape.batch
    compute_fwd_ms = flops / (hw.fwd_tflops * 1e12) * 1e3
    compute_train_ms = 3.5 * flops / (hw.train_tflops * 1e12) * 1e3
    out = {
        "pattern": pattern.describe(),
        "seq_len": seq_len,
        "world_size": P,
        "local_len": L,
        "shape": asdict(shape),
        "hardware": asdict(hw),
        "compute_fwd_ms": compute_fwd_ms,
        "compute_train_ms": compute_train_ms,
    }
    for s in SCHEMES:
        fwd = [(shape.kv_bytes(a), shape.kv_bytes(b)) for a, b in fwd_tokens[s]]
        bwd = [(shape.kv_bytes(a), shape.kv_bytes(b)) for a, b in bwd_tokens[s]]
        out[s] = {
            "fwd_bytes": max(a + b for a, b in fwd),  # the rank receiving the most
            "fwd_inter_node_bytes": max(b for _, b in fwd),
            "train_bytes": max(a + b + c + d for (a, b), (c, d) in zip(fwd, bwd, strict=True)),
            "fwd_comm_ms": max(hw.transfer_ms(*t) for t in fwd),
            # Forward and backward transfers are separate phases: their times add.
            "train_comm_ms": max(
                hw.transfer_ms(*f) + hw.transfer_ms(*b) for f, b in zip(fwd, bwd, strict=True)
            ),
        }
        out[s]["fwd_comm_bound"] = out[s]["fwd_comm_ms"] > compute_fwd_ms
        out[s]["train_comm_bound"] = out[s]["train_comm_ms"] > compute_train_ms
    return out


def scaling_table(
    pattern: Pattern | str = "power",
    seq_len: int = 1 << 20,
    worlds: Sequence[int] = (2, 4, 8, 16, 32, 64),
    shape: LayerShape | None = None,
    hw: Hardware | None = None,
) -> list[dict]:
    """:func:`layer_costs` for each world size."""
    return [layer_costs(pattern, seq_len, p, shape, hw) for p in worlds]


def format_table(rows: list[dict]) -> str:
    """A plain-text table: MB received per rank per layer (forward) and modelled ms of the
    busiest rank, forward and training step (forward + backward); comm-bound marked ``*``."""
    r0 = rows[0]
    hw = r0["hardware"]
    lines = [
        f"{r0['pattern']}, {r0['seq_len']:,} tokens; links {hw['link_gb_s']:g} GB/s in a node "
        f"of {hw['gpus_per_node']}, {hw['net_gb_s']:g} GB/s between nodes",
        f"{'':>4} {'MB received (fwd)':^22} | {'forward ms':^26} | {'fwd+bwd ms':^26}",
        f"{'P':>4} {'plan':>10} {'gather':>11} | {'compute':>8} {'plan':>8} {'gather':>8} | "
        f"{'compute':>8} {'plan':>8} {'ring':>8}",
    ]

    def ms(r, s, k):
        return f"{r[s][k + '_comm_ms']:>7.2f}{'*' if r[s][k + '_comm_bound'] else ' '}"

    for r in rows:
        lines.append(
            f"{r['world_size']:>4} {r['plan']['fwd_bytes'] / 1e6:>10.1f} "
            f"{r['allgather']['fwd_bytes'] / 1e6:>11.1f} | {r['compute_fwd_ms']:>8.2f} "
            f"{ms(r, 'plan', 'fwd')} {ms(r, 'allgather', 'fwd')} | "
            f"{r['compute_train_ms']:>8.2f} {ms(r, 'plan', 'train')} {ms(r, 'ring', 'train')}"
        )
    return "\n".join(lines)


def plot_scaling(rows: list[dict], path: str, measured: Sequence[dict] = ()) -> str:
    """Three panels vs P: MB received per rank per layer (forward), and the modelled time
    per layer of the busiest rank, forward and forward + backward (transfer per scheme
    against the attention compute). ``measured``: optional points to overlay, each
    ``{"world_size", "scheme", ...}`` with ``fwd_bytes`` and/or ``fwd_comm_ms``."""
    from matplotlib.ticker import ScalarFormatter

    from ..plots import plt

    P = [r["world_size"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    a, b, c = axes
    styles = {
        "plan": ("#d62728", "ours (plan)"),
        "allgather": ("#1f77b4", "all-gather"),
        "ring": ("#2ca02c", "ring"),
    }
    for s in ("plan", "allgather"):
        col, lab = styles[s]
        a.plot(P, [r[s]["fwd_bytes"] / 1e6 for r in rows], "o-", color=col, label=lab)
        b.plot(P, [r[s]["fwd_comm_ms"] for r in rows], "o-", color=col, label=f"{lab} transfer")
    a.lines[-1].set_label("all-gather / ring")
    b.lines[-1].set_label("all-gather / ring transfer")
    for s in SCHEMES:
        col, lab = styles[s]
        c.plot(P, [r[s]["train_comm_ms"] for r in rows], "o-", color=col, label=f"{lab} transfer")
    b.plot(P, [r["compute_fwd_ms"] for r in rows], "k--", label="attention compute")
    c.plot(P, [r["compute_train_ms"] for r in rows], "k--", label="attention compute")
    for m in measured:
        col = styles.get(m["scheme"], ("#000000", ""))[0]
        if "fwd_bytes" in m:
            a.plot(m["world_size"], m["fwd_bytes"] / 1e6, "x", color=col, ms=10, mew=2)
        if "fwd_comm_ms" in m:
            b.plot(m["world_size"], m["fwd_comm_ms"], "x", color=col, ms=10, mew=2)
    r0 = rows[0]
    hw, sh = r0["hardware"], r0["shape"]
    a.set_ylabel("MB received per rank per layer (K+V, forward)")
    b.set_ylabel("ms per layer, forward (busiest rank)")
    c.set_ylabel("ms per layer, forward + backward (busiest rank)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xticks(P)
        ax.set_xlabel("ranks P")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{r0['pattern']}, {r0['seq_len']:,} tokens; Hkv={sh['kv_heads']}, D={sh['head_dim']}, "
        f"{8 * sh['elem_bytes']}-bit; {hw['link_gb_s']:g} GB/s inside a node of "
        f"{hw['gpus_per_node']}, {hw['net_gb_s']:g} GB/s between nodes"
        + (" (x = measured)" if measured else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def log2_bound(seq_len: int, world_size: int) -> int:
    """The issue's bound for PowerAttention: ``(log2 P + 2) x S / P`` tokens per rank."""
    return int((math.log2(world_size) + 2) * seq_len // world_size)
