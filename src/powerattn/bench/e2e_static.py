"""Decode with transformers' ``StaticCache``, eager and as a CUDA-graph replay (``bench e2e``).

Serving stacks make decode fast with a preallocated (static) KV cache and a captured decode
step: no per-step allocation, no host work per layer. This module times exactly that, for one
decode step at a given context length and batch:

* the cache is a ``StaticCache`` of ``context + 64`` positions whose first ``context``
  positions hold random keys/values (the step's cost does not depend on their values, and a
  real 128K x batch-8 prefill would cost minutes of GPU time per point);
* ``eager``: the step as transformers runs it, synchronised once after ``steps`` calls;
* ``graph``: the same step captured once in a CUDA graph and replayed (what
  ``torch.compile(mode="reduce-overhead")`` does for the whole step, without its compile time).
  A capture that fails (a host synchronisation somewhere in the step) is reported, not hidden.

Every replay rewrites the same cache position, so the context stays at ``context`` tokens.
"""

from __future__ import annotations

import time
from typing import Any

import torch

SLACK = 64  # cache positions beyond the context (the step writes one)


def _filled_static_cache(model, context: int, batch: int, device: torch.device):
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=context + SLACK)
    # The layers allocate their buffers on the first update: one token at position 0.
    tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
    pos0 = torch.zeros(1, dtype=torch.long, device=device)
    model(input_ids=tok, past_key_values=cache, cache_position=pos0, use_cache=True)
    g = torch.Generator(device=device).manual_seed(context + batch)
    for layer in cache.layers:
        for buf in (layer.keys, layer.values):
            buf[:, :, :context].normal_(generator=g)
            buf[:, :, context:].zero_()
    return cache


def static_decode_step_ms(
    model, context: int, batch: int, steps: int, device: torch.device
) -> dict[str, Any]:
    """ms per decode step (eager and CUDA-graph replay) at ``context`` tokens, ``batch``
    sequences, through ``model``'s current attention implementation."""
    cache = _filled_static_cache(model, context, batch, device)
    tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
    pos = torch.full((1,), context, dtype=torch.long, device=device)
    position_ids = pos.view(1, 1).expand(batch, 1)

    def step():
        out = model(
            input_ids=tok,
            past_key_values=cache,
            cache_position=pos,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits

    res: dict[str, Any] = {"context": context, "batch": batch, "steps": steps}
    with torch.no_grad():
        for _ in range(3):
            step()
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        res["eager_ms"] = 1e3 * (time.perf_counter() - t) / steps
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    step()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            graph.replay()
            torch.cuda.synchronize(device)
            t = time.perf_counter()
            for _ in range(steps):
                graph.replay()
            torch.cuda.synchronize(device)
            res["graph_ms"] = 1e3 * (time.perf_counter() - t) / steps
            del graph
        except Exception as exc:  # noqa: BLE001 - report why the step cannot be captured
            torch.cuda.synchronize(device)
            res["graph_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    best = res.get("graph_ms", res["eager_ms"])
    res["tokens_per_s"] = batch * 1e3 / best
    return res  # the cache goes with this frame; the caller empties the allocator
