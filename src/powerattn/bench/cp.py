"""``powerattn bench cp`` (under torchrun): context-parallel attention on several GPUs.

One attention layer of Qwen2-7B shape (28 query heads, 4 K/V heads, D = 128, bf16, B = 1),
the sequence split over the ranks. Run on every rank, e.g. on two GPUs::

    python3 -m torch.distributed.run --standalone --nproc-per-node 2 \\
        -m powerattn.bench.cp --json cp.json

1. Correctness at ``--check-len`` tokens (one GPU still holds it): the context-parallel output
   and gradients (bf16) against single-GPU ``sparse_attention`` on the whole sequence in
   float32 (dense backend: exact), under the tolerance rule of :mod:`powerattn.testing`
   relative to single-GPU bf16's own error against that float32 result (2x forward, 3x
   gradients, plus the float32 rounding floor of the sums' length) -- for ours and for the
   all-gather baseline.
2. For each ``--seq-lens`` length (a :mod:`.runner` benchmark, lengths x methods): forward
   and forward+backward ms (median over iterations, slowest rank), peak memory, bytes
   received per rank per layer, and the transfer alone, for

   * ``plan``: :func:`~powerattn.distributed.context_parallel_attention` (ours);
   * ``allgather``: all-gather of K/V, the same operator on the gathered prefix,
     reduce-scatter of dK/dV (the scheme of PyTorch's FlexAttention context parallelism,
     which cannot take our analytic BlockMask);
   * ``torch_ring``: PyTorch's own context parallelism
     (``torch.distributed.tensor.experimental.context_parallel``, SDPA ring attention) for
     *full causal* attention -- another computation (dense), shown for the step time of the
     standard answer; only at ``--torch-cp-lens``, since dense 1M tokens takes seconds.

FlexAttention runs its dynamic-shape compiled kernel for every call here
(``flex.STATIC_VARIANTS = 0``), so that one compile serves all lengths; the numbers of
bench kernel use static compiles (~30% faster in training, per flex.py). Results are written
to ``--json`` after every measurement; ``--budget-s`` skips what would start after it.

On the CPU (``--device cpu``, the default without CUDA) the lengths and iterations default to
a dry run of the flow (:data:`CPU_DEFAULTS`, under a minute); started without torchrun it
runs as one process (world size 1: nothing travels), saying so on stderr.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import time
import traceback
from typing import Any

import torch
import torch.distributed as dist

from ..distributed import context_parallel_attention, cp_plan
from ..distributed.attention import _rank_plan
from ..distributed.scaling import LayerShape
from ..ops.api import sparse_attention
from ..ops.dense import dense_sparse_attention
from ..patterns import get_pattern
from ..testing import (
    FORWARD_FACTOR,
    GRADIENT_FACTOR,
    max_error,
    reduction_terms,
    rounding_floor,
)
from ..validate import add_list_argument, positive_int
from . import runner

HQ, HKV, D = 28, 4, 128
# The flags whose default depends on the device: the GPU's measure long contexts; on the CPU
# (gloo) the check's float32 reference at 128K alone would take hours.
GPU_DEFAULTS: dict[str, Any] = {
    "check_len": 131072,
    "seq_lens": (262144, 524288, 1048576),
    "iters": 5,
}
CPU_DEFAULTS: dict[str, Any] = {"check_len": 512, "seq_lens": (1024,), "iters": 2}
# "cuda" under torchrun on GPUs; "cpu" (gloo) for a dry run of the whole flow (--device cpu).
_DEV = {"type": "cuda"}


# ------------------------------------------------------------------ the all-gather baseline
class _AllGatherAttention(torch.autograd.Function):
    """All-gather K/V, attend the gathered prefix ``0 .. (rank + 1) L`` (queries at its end:
    the existing operator's alignment), reduce-scatter dK/dV back."""

    @staticmethod
    def forward(ctx, q, k, v, pattern, group, backend):
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        kv = torch.stack((k, v)).contiguous()  # (2, B, Hkv, L, D)
        # Concatenated along dim 0 (what gloo and NCCL both take), viewed per rank.
        gathered = torch.empty((world * 2, *kv.shape[1:]), dtype=kv.dtype, device=kv.device)
        dist.all_gather_into_tensor(gathered, kv, group=group)
        gathered = gathered.view(world, *kv.shape)
        with torch.enable_grad():
            qd = q.detach().requires_grad_()
            pre = gathered[: rank + 1].detach().requires_grad_()  # (rank + 1, 2, B, Hkv, L, D)
            kk = torch.cat(list(pre[:, 0]), dim=2)
            vv = torch.cat(list(pre[:, 1]), dim=2)
            out, _ = sparse_attention(qd, kk, vv, pattern, return_lse=True, backend=backend)
        ctx.inner = (out, qd, pre)
        ctx.group, ctx.world = group, world
        return out.detach()

    @staticmethod
    def backward(ctx, dout):
        out, qd, pre = ctx.inner
        del ctx.inner
        dq, dpre = torch.autograd.grad(out, [qd, pre], dout)
        full = torch.zeros((ctx.world, *pre.shape[1:]), dtype=pre.dtype, device=pre.device)
        full[: pre.shape[0]] = dpre
        mine = torch.empty(pre.shape[1:], dtype=pre.dtype, device=pre.device)
        dist.reduce_scatter_tensor(mine, full.view(-1, *pre.shape[2:]), group=ctx.group)
        return dq, mine[0], mine[1], None, None, None


def allgather_attention(q, k, v, pattern, *, group=None, backend: str = "auto"):
    """The all-gather baseline (same shard convention as ``context_parallel_attention``)."""
    return _AllGatherAttention.apply(q, k, v, get_pattern(pattern), group, backend)


# ------------------------------------------------------------------------------- helpers
def _log(msg: str) -> None:
    if dist.get_rank() == 0:
        print(msg, flush=True)


def _inputs(S: int, dtype, device, seed: int = 0, heads=(HQ, HKV, HKV, HQ)):
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(1, h, S, D, generator=g, device=device, dtype=dtype) for h in heads]


def _max_over_ranks(x: float) -> float:
    t = torch.tensor([x], dtype=torch.float64, device=_DEV["type"])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _time(fn, iters: int) -> float:
    """Median ms of ``fn`` (CUDA events; wall clock on the CPU), slowest rank."""
    times = []
    cuda = _DEV["type"] == "cuda"
    for _ in range(iters):
        dist.barrier()
        if cuda:
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return _max_over_ranks(times[len(times) // 2])


def _reset_peak() -> None:
    if _DEV["type"] == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    """Peak allocated GPU memory since the last reset."""
    return torch.cuda.max_memory_allocated() / 2**30


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return _max_over_ranks(max_error(a, b))


# --------------------------------------------------------------------------- correctness
def check(S: int, pattern, methods: dict) -> dict:
    """Each method's bf16 shard vs single-GPU float32 on the whole sequence, under
    :mod:`powerattn.testing`'s rule: at most 2x (output) / 3x (gradients) the single-GPU bf16
    error plus the rounding floor of the sums' length (max abs, over all ranks)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    L = S // world
    sl = slice(rank * L, (rank + 1) * L)
    q, k, v, dout = _inputs(S, torch.float32, _DEV["type"])
    ref_in = [t.clone().requires_grad_() for t in (q, k, v)]
    # The float32 reference through the dense backend: exact, chunked over query rows, and
    # no compile (a float32 FlexAttention variant would cost two more compiles). Chunks of
    # 2^28 scores (1 GiB): ~70 rows of 28 heads x 128K keys, ~1.9K chunks at 128K.
    ref, _ = dense_sparse_attention(*ref_in, pattern, D**-0.5, chunk_scores=1 << 28)
    ref_g = torch.autograd.grad(ref, ref_in, dout)
    ref, ref_g = ref[:, :, sl], [g[:, :, sl] for g in ref_g]
    del ref_in
    # The floors: float32 rounding of the whole sequence's sums, largest over the ranks.
    terms = reduction_terms(q, k)
    floor = {"out": _max_over_ranks(rounding_floor(ref, torch.bfloat16, terms["out"]))}
    for n, r in zip("qkv", ref_g, strict=True):
        floor[f"d{n}"] = _max_over_ranks(rounding_floor(r, torch.bfloat16, terms[f"d{n}"]))
    base_in = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    # return_lse: the same compiled FlexAttention variant as the context-parallel calls.
    base, _ = sparse_attention(*base_in, pattern, return_lse=True)
    base_g = torch.autograd.grad(base, base_in, dout.bfloat16())
    base_err = {"out": _err(base[:, :, sl], ref)}
    for n, g, r in zip("qkv", base_g, ref_g, strict=True):
        base_err[f"d{n}"] = _err(g[:, :, sl], r)
    del base_in, base, base_g
    factor = {"out": FORWARD_FACTOR} | {f"d{n}": GRADIENT_FACTOR for n in "qkv"}
    tol = {x: factor[x] * base_err[x] + floor[x] for x in base_err}
    res: dict[str, Any] = {"seq_len": S, "single_gpu_bf16_err": base_err, "tol": tol}
    for name, fn in methods.items():
        shard = [t[:, :, sl].bfloat16().requires_grad_() for t in (q, k, v)]
        out = fn(*shard)
        grads = torch.autograd.grad(out, shard, dout[:, :, sl].bfloat16())
        errs = {"out": _err(out, ref)}
        for n, g, r in zip("qkv", grads, ref_g, strict=True):
            errs[f"d{n}"] = _err(g, r)
        ok = all(errs[x] <= tol[x] for x in tol)
        res[name] = {"err": errs, "pass": ok}
        _log(f"check {name} at {S:,}: {'PASS' if ok else 'FAIL'} {errs} (bf16 single {base_err})")
    return res


# ------------------------------------------------------------------------------ timings
def _transfer_ms(S: int, pattern, iters: int) -> dict:
    """The transfers alone: our plan's batched isend/irecv vs all_gather_into_tensor."""
    world, rank = dist.get_world_size(), dist.get_rank()
    L = S // world
    rp = _rank_plan(pattern, S, world, rank)
    kv = torch.randn(2, 1, HKV, L, D, device=_DEV["type"], dtype=torch.bfloat16)
    sends = [
        (dst, kv if idx is None else kv[:, :, :, idx.to(kv.device)].contiguous())
        for dst, idx in rp.sends
    ]
    recvs = [
        (src, torch.empty(2, 1, HKV, n, D, device=_DEV["type"], dtype=kv.dtype))
        for src, n in rp.recvs
    ]

    def plan_xfer():
        ops = [dist.P2POp(dist.isend, t, d) for d, t in sends]
        ops += [dist.P2POp(dist.irecv, t, s) for s, t in recvs]
        for r in dist.batch_isend_irecv(ops) if ops else []:
            r.wait()

    gathered = torch.empty((world * 2, *kv.shape[1:]), dtype=kv.dtype, device=kv.device)

    def gather_xfer():
        dist.all_gather_into_tensor(gathered, kv)

    plan_xfer()
    gather_xfer()
    return {"plan": _time(plan_xfer, iters), "allgather": _time(gather_xfer, iters)}


def _torch_ring_once(S: int, iters: int, gqa: bool) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.experimental import context_parallel
    from torch.nn import functional as F

    mesh = init_device_mesh("cuda", (dist.get_world_size(),))
    q, k, v, dout = _inputs(S, torch.bfloat16, _DEV["type"])
    if not gqa:  # K/V repeated to the query heads: they travel 7x larger
        k, v = (t.repeat_interleave(HQ // HKV, dim=1) for t in (k, v))
    kw = {"enable_gqa": True} if gqa else {}
    res: dict[str, Any] = {}
    # context_parallel shards the buffers in place (load-balanced for causal attention); a
    # tensor that requires grad cannot be resized, so the leaves are made inside.
    bufs = [q, k, v, dout]
    with context_parallel(
        mesh, buffers=bufs, buffer_seq_dims=[2, 2, 2, 2], no_restore_buffers=set(bufs)
    ):
        qq, kk, vv = (t.requires_grad_() for t in (q, k, v))

        def fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, **kw)

        def step():
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True, **kw)
            torch.autograd.grad(out, [qq, kk, vv], dout)

        step()
        _reset_peak()
        res["fwd_ms"] = _time(fwd, iters)
        res["train_ms"] = _time(step, iters)
        res["peak_gb"] = _max_over_ranks(_peak_gib())
    L = S // dist.get_world_size()
    heads = HKV if gqa else HQ
    res["recv_bytes_fwd"] = 2 * (dist.get_world_size() - 1) * L * heads * D * 2
    return res


def _torch_ring(S: int, iters: int) -> dict:
    """PyTorch's context parallelism (SDPA ring attention, full causal attention); with
    ``enable_gqa`` first, else with K/V repeated to the query heads."""
    errors = {}
    for gqa in (True, False):
        try:
            res = _torch_ring_once(S, iters, gqa)
            res["gqa"] = "enable_gqa" if gqa else "repeat_kv"
            return {**res, **errors}
        except Exception as exc:  # noqa: BLE001 - recorded in the JSON
            key = f"error_{'enable_gqa' if gqa else 'repeat_kv'}"
            errors[key] = f"{type(exc).__name__}: {exc}"[:500]
            _log(f"torch_ring at {S:,}: {errors[key]}")
            torch.cuda.empty_cache()
    return errors


def timing_benchmark(
    seq_lens, pattern, methods: dict, iters: int, budget_left, skipped: list
) -> runner.Benchmark:
    """Lengths x (the methods, then ``transfer``: both methods' transfers alone). ``setup``
    makes a length's shard inputs and plan once (or skips the length when the budget is
    spent, recording it in ``skipped``); every rank runs every cell (they are collective)."""
    world = dist.get_world_size()
    shape = LayerShape(HQ, HKV, D, 2)

    def setup(config) -> dict:
        S = config["seq_len"]
        if not budget_left():
            skipped.append({"seq_len": S, "why": "time budget"})
            raise runner.Skip()
        plan = cp_plan(pattern, S, world)
        q, k, v, dout = _inputs(S // world, torch.bfloat16, _DEV["type"], seed=dist.get_rank())
        return {"plan": plan, "qkv": (q, k, v), "dout": dout}

    def measure(config, name: str, st: dict) -> dict:
        S = config["seq_len"]
        L = S // world
        if name == "transfer":
            res = _transfer_ms(S, pattern, iters)
            _log(f"transfer alone at {S:,}: {res}")
            return res
        fn, dout = methods[name], st["dout"]
        leaves = [t.clone().requires_grad_() for t in st["qkv"]]

        def fwd():
            with torch.no_grad():
                fn(*leaves)

        def step():
            torch.autograd.grad(fn(*leaves), leaves, dout)

        step()  # compiles, builds masks and plans
        _reset_peak()
        row = {"fwd_ms": _time(fwd, iters), "train_ms": _time(step, iters)}
        row["peak_gb"] = _max_over_ranks(_peak_gib()) if _DEV["type"] == "cuda" else None
        tokens = max(st["plan"].recv_tokens) if name == "plan" else (world - 1) * L
        row["recv_bytes_fwd"] = shape.kv_bytes(tokens)
        _log(
            f"{name:>9} {S:>9,}: fwd {row['fwd_ms']:.2f} ms, fwd+bwd {row['train_ms']:.2f} ms, "
            f"peak {row['peak_gb'] or 0:.1f} GiB, {row['recv_bytes_fwd'] / 1e6:.0f} MB/rank/layer"
        )
        return row  # the leaves go with this frame, before the next method's

    return runner.Benchmark(
        name="cp",
        configs=[{"seq_len": S} for S in seq_lens],
        providers=[*methods, "transfer"],
        measure=measure,
        setup=setup,
    )


def measurements(rows: list[dict], world: int) -> list[dict]:
    """The runner's rows as the JSON keeps them: per length ``{"seq_len", "local_len",
    <method>: {fwd_ms, train_ms, peak_gb, recv_bytes_fwd}, ..., "transfer_ms": {<method>:
    ms}}``."""
    out: dict[int, dict] = {}
    for r in rows:
        S = r["seq_len"]
        m = out.setdefault(S, {"seq_len": S, "local_len": S // world})
        key = "transfer_ms" if r["method"] == "transfer" else r["method"]
        m[key] = {k: v for k, v in r.items() if k not in ("seq_len", "method")}
    return list(out.values())


def torch_ring_benchmark(seq_lens, iters: int, budget_left, skipped: list) -> runner.Benchmark:
    """PyTorch's ring CP at each of ``seq_lens`` (CUDA), after the budget check."""

    def setup(config) -> None:
        if not budget_left():
            skipped.append({"seq_len": config["seq_len"], "why": "torch_ring: budget"})
            raise runner.Skip()

    return runner.Benchmark(
        name="cp_torch_ring",
        configs=[{"seq_len": S} for S in seq_lens],
        providers=["torch_ring"],
        measure=lambda config, name, st: _torch_ring(config["seq_len"], max(2, iters // 2)),
        setup=setup,
    )


# --------------------------------------------------------------------------------- main
def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the device (CUDA when present, else the CPU) and the flags left unset with
    :data:`GPU_DEFAULTS` or, on the CPU, :data:`CPU_DEFAULTS` (in place; returned)."""
    return runner.resolve_device_defaults(args, GPU_DEFAULTS, CPU_DEFAULTS)


def _init_process_group(backend: str) -> None:
    """torchrun's group from its environment; without torchrun (no ``RANK``), a group of
    this one process, so that a plain ``powerattn bench cp`` runs instead of failing."""
    timeout = datetime.timedelta(seconds=300)
    if "RANK" in os.environ:
        dist.init_process_group(backend, timeout=timeout)
        return
    with socket.socket() as s:  # a free port for the one-process store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    print(
        "bench cp: not under torchrun, running as one process (world size 1: nothing is "
        "communicated); use torchrun --nproc-per-node N for N ranks",
        file=sys.stderr,
        flush=True,
    )
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, timeout=timeout
    )


def run(args: argparse.Namespace) -> int:
    t0 = time.time()
    from ..ops import flex

    resolve_defaults(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device here (use --device cpu for a dry run)")
    flex.STATIC_VARIANTS = 0  # one dynamic-shape compile for every length (see docstring)
    _DEV["type"] = args.device
    if args.device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    _init_process_group("nccl" if args.device == "cuda" else "gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    pattern = get_pattern("power", block_size=256, window=5, sink=1)
    methods = {
        "plan": lambda q, k, v: context_parallel_attention(q, k, v, pattern, validate=False),
        "allgather": lambda q, k, v: allgather_attention(q, k, v, pattern),
    }
    out: dict[str, Any] = {
        "world_size": world,
        "pattern": pattern.describe(),
        "shape": {"B": 1, "Hq": HQ, "Hkv": HKV, "D": D, "dtype": "bfloat16"},
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu (dry run)",
        "torch": torch.__version__,
        "measurements": [],
        "skipped": [],
    }

    def save():
        if rank == 0:
            runner.write_json(args.json, out, indent=2, newline=True)

    def budget_left() -> bool:
        return _max_over_ranks(time.time() - t0) < args.budget_s

    rc = 0
    try:
        try:
            out["check"] = check(args.check_len, pattern, methods)
            if not all(out["check"][m]["pass"] for m in methods):
                rc = 1
        except Exception:  # noqa: BLE001 - recorded; the timings still run
            out["check"] = {"error": traceback.format_exc()[-3000:]}
            _log(out["check"]["error"])
            rc = 1
        save()

        def progress(result: dict) -> None:  # after each length
            out["measurements"] = measurements(result["rows"], world)
            # Points for the scaling figure (cp-scaling --measured keeps its own length's).
            out["scaling_points"] = [
                {
                    "world_size": world,
                    "scheme": m,
                    "seq_len": r["seq_len"],
                    "fwd_bytes": r[m]["recv_bytes_fwd"],
                    "fwd_comm_ms": r["transfer_ms"][m],
                }
                for r in out["measurements"]
                for m in ("plan", "allgather")
            ]
            save()

        bench = timing_benchmark(
            args.seq_lens, pattern, methods, args.iters, budget_left, out["skipped"]
        )
        runner.run(bench, log=None, on_progress=progress)
        # PyTorch's ring CP last: a failure there cannot cost the measurements above.
        by_len = {r["seq_len"]: r for r in out["measurements"]}
        ring = [S for S in by_len if S in args.torch_cp_lens and args.device == "cuda"]

        def attach(row: dict) -> None:
            by_len[row["seq_len"]]["torch_ring"] = {
                k: v for k, v in row.items() if k not in ("seq_len", "method")
            }
            save()

        bench = torch_ring_benchmark(ring, args.iters, budget_left, out["skipped"])
        runner.run(bench, log=None, on_row=attach)
    except Exception:  # noqa: BLE001 - written to the JSON, then re-raised
        out["error"] = traceback.format_exc()[-3000:]
        save()
        raise
    out["wall_s"] = time.time() - t0
    save()
    dist.destroy_process_group()
    return rc


def _both(flag: str) -> str:
    return runner.device_defaults_help(flag, GPU_DEFAULTS, CPU_DEFAULTS)


# Plain text for --help (the module docstring is reST, for the API docs).
DESCRIPTION = (
    "Context-parallel attention on several GPUs, run on every rank under torchrun (e.g. "
    "python3 -m torch.distributed.run --standalone --nproc-per-node 2 -m powerattn.bench.cp "
    "--json cp.json). One attention layer of Qwen2-7B shape (28 query heads, 4 K/V heads, "
    "head dim 128, bf16, batch 1), the sequence split over the ranks. First a correctness "
    "check at --check-len tokens against single-GPU attention in float32; then, per --seq-lens "
    "length, forward and forward+backward ms, peak memory and bytes received per rank for "
    "our plan (only the K/V blocks the pattern reads), the all-gather baseline, and the "
    "transfers alone; PyTorch's own ring context parallelism (dense causal) at "
    "--torch-cp-lens. Defaults depend on the device: on CUDA, 128K check and 256K-1M "
    "lengths; on the CPU (--device cpu, or no CUDA), a gloo dry run of the flow at 512 and "
    "1024 tokens. Without torchrun it runs as one process (world size 1)."
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--check-len",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"tokens of the correctness check ({_both('check_len')})",
    )
    add_list_argument(
        p,
        "--seq-lens",
        positive_int,
        default=None,
        metavar="N",
        help=f"sequence lengths timed, split over the ranks ({_both('seq_lens')})",
    )
    add_list_argument(
        p, "--torch-cp-lens", positive_int, default=[262144], metavar="N",
        help="lengths at which PyTorch's ring CP (dense causal) is timed, CUDA only "
        "(default: 262144)",
    )  # fmt: skip
    p.add_argument(
        "--iters",
        type=positive_int,
        default=None,
        help=f"timed iterations per measurement, median taken ({_both('iters')})",
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=200.0,
        metavar="S",
        help="start no measurement after this many seconds (default 200)",
    )
    p.add_argument(
        "--json", metavar="PATH", help="write the results as JSON (rewritten after each length)"
    )
    p.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default=None,
        help="cuda (default when present) or cpu (default without CUDA): a dry run of the "
        "whole flow with gloo (small lengths; no PyTorch ring CP)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cp",
        help="context-parallel attention on several GPUs (run under torchrun)",
        description=DESCRIPTION,
    )
    add_args(p)
    p.set_defaults(func=run)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m powerattn.bench.cp", description=DESCRIPTION)
    add_args(parser)
    raise SystemExit(run(parser.parse_args()))
