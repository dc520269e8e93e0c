"""A static-cache decode step compiled by ``generate``, through the decode kernel: run by
test_hf_generate.py as a script in a subprocess with ``TRITON_INTERPRET=1`` (the variable must
be set before triton is imported and must not leak into other tests), so that the CPU takes
the kernel's path, as a GPU does.

On CUDA it first runs transformers' default compile of the step (Inductor, CUDA graphs) as the
process's first decode. Then checks, for a batch with nothing padded and a left-padded one,
that the compiled step is one graph with no graph break (``fullgraph=True`` refuses a break;
transformers' dense SDPA gives one graph too) and gives the tokens of the same static cache
run without compiling (the same kernel, so the same bits).
"""

from __future__ import annotations

import sys

import hf_models as H
import torch
from torch._dynamo.utils import counters

import powerattn.hf as pt


def _compiled_run(model, x, **kw) -> str | None:
    """``None`` when the compiled static-cache run is one graph with the uncompiled tokens."""
    # disable_compile: on CUDA transformers compiles a static-cache step by default (Inductor,
    # CUDA graphs); the reference is the uncompiled run.
    expected = H.greedy(model, x, 6, cache_implementation="static", disable_compile=True, **kw)
    config = H.transformers.CompileConfig(backend="eager", fullgraph=True)
    config._compile_all_devices = True  # transformers compiles only on accelerators
    torch._dynamo.reset()
    # On CUDA the (eager) prefill compiles FlexAttention's kernel for its shape, a graph of
    # its own that the counters below would count (H200, session 19: "2 graphs, graph
    # breaks {}"): a prefill-only run of the same prompt compiles it first.
    H.greedy(model, x, 1, cache_implementation="static", disable_compile=True, **kw)
    counters.clear()
    out = H.greedy(model, x, 6, cache_implementation="static", compile_config=config, **kw)
    graphs, breaks = counters["stats"]["unique_graphs"], dict(counters["graph_break"])
    torch._dynamo.reset()
    if not torch.equal(out, expected):
        return f"compiled tokens differ:\n{out}\n{expected}"
    if graphs != 1 or breaks:
        return f"compiled decode step: {graphs} graphs, graph breaks {breaks}"
    return None


def main() -> int:
    model = pt.apply(
        H.model("llama", layers=3, dtype=torch.float32), "power", full_layers=[1], **H.POWER
    )
    # two sequences, nothing padded; then two of lengths 41 and 30, left-padded (generate's
    # decode steps get each row's first real slot)
    x = H.ids(2, 29, seed=12)
    padded, mask = H.padded([H.ids(1, 41, seed=3)[0], H.ids(1, 30, seed=4)[0]], "left")
    if H.DEVICE.type == "cuda":
        # transformers' default on CUDA (Inductor with CUDA-graph trees) as this process's
        # first decode: its warm-up allocates from the graph's pool (session 19: our
        # counter arena was made there, and the trees refused the step)
        default = H.greedy(model, x, 6, cache_implementation="static")
        torch._dynamo.reset()
        plain = H.greedy(model, x, 6, cache_implementation="static", disable_compile=True)
        if not torch.equal(default, plain):
            print(f"default-compiled tokens differ:\n{default}\n{plain}")
            return 1
    for name, ids, kw in (("unpadded", x, {}), ("left-padded", padded, {"attention_mask": mask})):
        msg = _compiled_run(model, ids, **kw)
        if msg is not None:
            print(f"{name}: {msg}")
            return 1
    print("compiled static decode: one graph, same tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
