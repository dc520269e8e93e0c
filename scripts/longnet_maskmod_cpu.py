"""FlexAttention forward on the CPU at 4096 tokens (32-token blocks, equal budget): power,
LongNet's block rule in bit operations (current) and in integer division/modulo (before
commit fb55fa7). Evidence for why LongNet trained at half speed on the GPU: its mask_mod
runs on every partial tile. Run: .venv/bin/python scripts/longnet_maskmod_cpu.py"""

import time
from dataclasses import dataclass

import torch

from powerattn import equal_budget, sparse_attention
from powerattn.patterns.longnet import LongNetPattern


@dataclass(frozen=True)
class OldLongNet(LongNetPattern):
    """LongNet with the division/modulo rule it had before fb55fa7."""

    name = "longnet_old"

    def block_rule(self, qb, kb):
        out = None
        for w, r in self.segments:
            term = (qb // w == kb // w) & (qb % r == 0) & (kb % r == 0)
            out = term if out is None else out | term
        return out


def best_ms(fn, repeats: int = 5) -> float:
    fn()  # compile
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1e3


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    budget = equal_budget(4096, 32)
    new = budget["longnet"]
    old = OldLongNet(block_size=32, segments=new.segments)
    q, k, v = (torch.randn(1, 4, 4096, 32) for _ in range(3))
    runs = [("power", budget["power"]), ("longnet_new", new), ("longnet_old", old),
            ("longnet_new", new)]  # fmt: skip
    for name, p in runs:
        ms = best_ms(lambda p=p: sparse_attention(q, k, v, p, backend="flex"))
        print(f"{name:12s} {ms:8.1f} ms", flush=True)
    ref = sparse_attention(q, k, v, old, backend="dense")
    diff = (sparse_attention(q, k, v, new, backend="flex") - ref).abs().max().item()
    print(f"max |new flex - old dense| = {diff:.2e}")


if __name__ == "__main__":
    main()
