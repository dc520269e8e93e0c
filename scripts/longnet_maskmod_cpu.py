"""FlexAttention forward on the CPU at 4096 tokens (32-token blocks, equal budget): power,
LongNet's block rule in bit operations (current) and in integer division/modulo (before
commit fb55fa7). Evidence for why LongNet trained at half speed on the GPU: its mask_mod
runs on every partial tile. Run: .venv/bin/python scripts/longnet_maskmod_cpu.py"""

import time, torch
from dataclasses import dataclass
from powerattn import equal_budget, sparse_attention
from powerattn.patterns.longnet import LongNetPattern

@dataclass(frozen=True)
class OldLongNet(LongNetPattern):
    name = "longnet_old"
    def block_rule(self, qb, kb):
        out = None
        for w, r in self.segments:
            term = (qb // w == kb // w) & (qb % r == 0) & (kb % r == 0)
            out = term if out is None else out | term
        return out

torch.manual_seed(0)
b = equal_budget(4096, 32)
new = b["longnet"]
old = OldLongNet(block_size=32, segments=new.segments)
q, k, v = (torch.randn(1, 4, 4096, 32) for _ in range(3))
torch.set_num_threads(2)
for name, p in [("power", b["power"]), ("longnet_new", new), ("longnet_old", old), ("longnet_new", new)]:
    out = sparse_attention(q, k, v, p, backend="flex")  # compile
    ts = []
    for _ in range(5):
        t = time.perf_counter(); sparse_attention(q, k, v, p, backend="flex"); ts.append(time.perf_counter() - t)
    print(f"{name:12s} {min(ts)*1e3:8.1f} ms", flush=True)
ref = sparse_attention(q, k, v, old, backend="dense")
print("max diff new vs old (dense ref):", (sparse_attention(q, k, v, new, backend="flex") - ref).abs().max().item())
