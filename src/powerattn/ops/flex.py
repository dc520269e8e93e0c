"""FlexAttention backends: prefill, chunked prefill and training (forward and backward).

Two kernels run the same analytic BlockMask:

* ``"flash"`` -- FlexAttention's FlashAttention-4 (CuTe DSL) kernels,
  ``kernel_options={"BACKEND": "FLASH"}``: Hopper (SM90) and Blackwell (SM100) GPUs with
  ``flash-attn-4`` installed (``pip install 'powerattn[fa4]'``), 16-bit inputs, pattern blocks
  that are multiples of the 128-token tile (the default 256). An eager call with
  ``Sq == Sk`` skips FlexAttention and calls FlashAttention-4 itself with the same tile lists
  (:mod:`.fa4`, :data:`FLASH_DIRECT`). :func:`flash_unsupported` says why it cannot serve an
  input; ``backend="auto"`` then uses:
* ``"flex"`` -- FlexAttention's Triton kernels (any CUDA GPU; on the CPU its C++ kernel,
  forward only).

The BlockMask is written down from the pattern's analytic tile lists (:mod:`.layout`) --
key side *and* query side -- and handed to ``BlockMask`` directly: no ``create_block_mask``
over ``S x S`` and no dense transpose. Masks are cached per (pattern, Sq, Sk, device, tile,
offset kind) in a bounded LRU.

Compilation. ``flex_attention`` is compiled with *static* shapes, one variant per input
signature (lengths, dtype, heads, pattern, grad mode, kernel): static shapes let Inductor drop
bounds checks and pick tile configs per length, which the earlier single dynamic-shape
variant could not (it cost ~30% in training on the H200). After :data:`STATIC_VARIANTS`
distinct signatures in a process (training on many lengths), further Triton calls go to a
second, dynamic-shape compiled function, so a long tail of lengths never recompiles per
length. FlashAttention-4 through FlexAttention compiles static shapes only; beyond the
budget those calls (chunks, ``FLASH_DIRECT`` off) use the dynamic Triton function too; the
direct FlashAttention-4 call (:mod:`.fa4`) compiles per head layout, never per length.
In static variants the query offset ``Sk - Sq`` is a Python int
(FlashAttention-4's CuTe mask cannot read captured tensors); in the dynamic one it is a
captured 0-dim tensor, so a new offset does not recompile.

Unfused fallback guard: when a compiled function exceeds dynamo's recompile limit, dynamo
silently runs it *eagerly*, and eager ``flex_attention`` is the math path that materialises
``S x S`` scores. We call the compiled functions with ``fail_on_recompile_limit_hit=True``,
so that case raises :class:`FlexRecompileError`. When the pattern's block size is a multiple
of the tile, tiles never straddle pattern blocks (queries are padded at the front when
``Sk - Sq`` is not a tile multiple) and the ``mask_mod`` is plain causality shared by every
pattern; smaller blocks (16..64) need the pattern's own ``mask_mod`` in straddling tiles.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

try:  # torch >= 2.9: return_lse is deprecated in favour of return_aux
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # pragma: no cover - older torch
    AuxRequest = None

from ..patterns import Pattern
from .checks import needs_grad
from .fa4 import fa4_attention
from .layout import tile_entries

# FlexAttention tile (its BlockMask BLOCK_SIZE). 128 is what its GPU kernels are tuned for;
# pattern blocks of other sizes (16..256+) and unaligned offsets are handled by the layout.
TILE = 128
# Compiled variants allowed per compiled function before we refuse (dynamo's recompile limit).
RECOMPILE_LIMIT = 64
# Distinct static-shape signatures compiled per process before new ones go dynamic (Triton).
STATIC_VARIANTS = 24
_MASK_CACHE_SIZE = 64
# The regular kernel also for short queries: flex's decoding kernel finds no valid config
# under dynamic shapes (torch 2.11, seen on the H200).
_TRITON_OPTIONS = {"FORCE_USE_FLEX_ATTENTION": True}
_FLASH_OPTIONS = {"BACKEND": "FLASH"}
KERNELS = ("flash", "flex")
# FlashAttention-4 runs on these compute capabilities (major): Hopper and Blackwell.
FLASH_CAPABILITIES = (9, 10)
FLASH_DTYPES = (torch.float16, torch.bfloat16)
# backend="flash" with Sq == Sk, called eagerly: FlashAttention-4 directly (:mod:`.fa4`);
# False routes it through FlexAttention's FLASH backend like chunks (benchmarks compare both).
FLASH_DIRECT = True


def _flex_static(q, k, v, block_mask, scale, enable_gqa, kernel_options, return_aux):
    # Compiled with static shapes (its own code object, so its variants are counted apart
    # from the dynamic function's and from user compiles of flex_attention).
    return flex_attention(
        q,
        k,
        v,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=enable_gqa,
        kernel_options=kernel_options,
        **return_aux,
    )


def _flex_dynamic(q, k, v, block_mask, scale, enable_gqa, kernel_options, return_aux):
    return flex_attention(
        q,
        k,
        v,
        block_mask=block_mask,
        scale=scale,
        enable_gqa=enable_gqa,
        kernel_options=kernel_options,
        **return_aux,
    )


_compiled: dict[str, object] = {}
_static_signatures: set[tuple] = set()


def _compiled_fn(dynamic: bool):
    """Created on first use: building the wrapper imports dynamo (~2 s), which
    ``import powerattn`` should not pay."""
    name = "dynamic" if dynamic else "static"
    fn = _compiled.get(name)
    if fn is None:
        fn = torch.compile(_flex_dynamic if dynamic else _flex_static, dynamic=dynamic)
        _compiled[name] = fn
    return fn


def compiled_flex(device_type: str = "cuda"):
    """Plain ``flex_attention`` compiled with static shapes, for baselines (the way
    FlexAttention's documentation uses it). Our own calls go through
    :func:`flex_sparse_attention`."""
    fn = _compiled.get("plain")
    if fn is None:
        fn = torch.compile(flex_attention, dynamic=False)
        _compiled["plain"] = fn
    return fn


_flash_importable: bool | None = None


def flash_importable() -> bool:
    """Whether FlashAttention-4's CuTe kernels import (``import flash_attn.cute``; actually
    imported, once per process, not guessed from package metadata)."""
    global _flash_importable
    if _flash_importable is None:
        try:
            import flash_attn.cute  # noqa: F401
        except Exception:  # noqa: BLE001 - missing, or present but broken (CUDA/ABI)
            _flash_importable = False
        else:
            _flash_importable = True
    return _flash_importable


@functools.cache
def _capability(index: int | None) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def flash_unsupported(
    q: torch.Tensor,
    pattern: Pattern,
    *,
    device_type: str | None = None,
    capability: tuple[int, int] | None = None,
    importable: bool | None = None,
) -> str | None:
    """Why the FlashAttention-4 kernel cannot serve ``q`` under ``pattern`` (``None``: it
    can). ``device_type`` / ``capability`` / ``importable`` override the detected values
    (tests of the selection logic without a GPU)."""
    device_type = q.device.type if device_type is None else device_type
    if device_type != "cuda":
        return f"FlashAttention-4 runs on CUDA GPUs, got {device_type}"
    if q.dtype not in FLASH_DTYPES:
        return f"FlashAttention-4 takes float16/bfloat16, got {q.dtype}"
    if pattern.block_size % TILE:
        return (
            f"block_size={pattern.block_size} is not a multiple of the {TILE}-token tile "
            "(FlashAttention-4 runs the causal mask only inside tiles)"
        )
    if capability is None:
        capability = _capability(q.device.index)
    if capability[0] not in FLASH_CAPABILITIES:
        return (
            f"FlashAttention-4 needs a Hopper (SM90) or Blackwell (SM100) GPU, got "
            f"SM{capability[0]}{capability[1]}"
        )
    if not (flash_importable() if importable is None else importable):
        return "flash-attn-4 is not installed (pip install 'powerattn[fa4]')"
    return None


_mask_cache: OrderedDict[tuple, BlockMask] = OrderedDict()


class FlexRecompileError(RuntimeError):
    """FlexAttention would fall back to its unfused eager path (recompile limit reached)."""


def _causal_mask_mod(offset: torch.Tensor | int):
    """Token predicate when tiles align with pattern blocks: the tile lists already encode
    the pattern, the partial (diagonal) tiles only need causality. Pattern-independent, so
    every pattern shares one compiled kernel."""
    if isinstance(offset, int) and offset == 0:

        def mask_mod(b, h, q_idx, kv_idx):  # prefill/training: no captured value at all
            return kv_idx <= q_idx

        return mask_mod

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + offset

    return mask_mod


def _pattern_mask_mod(pattern: Pattern, offset: torch.Tensor | int):
    """Full token predicate (local query index + offset = absolute position), for tiles that
    straddle pattern blocks (block size not a multiple of the tile). Compiled per pattern."""

    def mask_mod(b, h, q_idx, kv_idx):
        return pattern.mask_mod(b, h, q_idx + offset, kv_idx)

    return mask_mod


def tiles_align(pattern: Pattern, q_len: int, kv_len: int, tile: int = TILE) -> bool:
    """Whether every tile lies inside one pattern block (block size a multiple of the tile
    and ``Sk - Sq`` a multiple of the tile)."""
    return pattern.block_size % tile == 0 and (kv_len - q_len) % tile == 0


def block_mask_for(
    pattern: Pattern,
    q_len: int,
    kv_len: int,
    device: torch.device | str,
    tile: int = TILE,
    *,
    int_offset: bool = True,
) -> BlockMask:
    """The cached FlexAttention ``BlockMask`` of ``pattern`` for ``q_len`` queries aligned to
    the end of ``kv_len`` keys, on ``device``. Built analytically (both sides): coordinate
    lists on the host, one host-to-device copy, scattered into full width on the device.
    ``int_offset``: the ``mask_mod`` holds the query offset as a Python int (static-shape
    compiles, FlashAttention-4), else as a 0-dim device tensor (dynamic-shape compiles)."""
    if torch.compiler.is_compiling():
        # Looked up outside the trace (one graph break): Dynamo guarded on this LRU dict's
        # entries by position, so every eager lookup in between (an evaluation) recompiled the
        # caller, and on the H200 (torch 2.11) its guards failed outright ("Guard failed on the
        # same frame it was created"). The BlockMask enters the graph as an input instead.
        return _block_mask_outside_trace(
            pattern, q_len, kv_len, device, tile, int_offset=int_offset
        )
    device = torch.device(device)
    key = (pattern, q_len, kv_len, device, tile, int_offset)
    bm = _mask_cache.get(key)
    if bm is not None:
        _mask_cache.move_to_end(key)
        return bm
    sides = tile_entries(pattern, q_len, kv_len, tile, tile)
    # FlexAttention's kernels read index lists padded to the number of tiles (with compact
    # lists, torch 2.11's GPU kernels gave wrong outputs on the H200, and the CPU kernel
    # asserts). Those are dense (tiles x tiles) matrices, so they are filled on the device:
    # one host-to-device copy of the counts, the query offset and the (position, value) of
    # every entry -- O(entries) -- then one scatter into zeros.
    counts, pos, vals, base = [], [], [], 0
    for rows, cols, n_rows, n_cols in sides:
        count = np.bincount(rows, minlength=n_rows).astype(np.int32)
        start = np.zeros(n_rows, dtype=np.int64)
        np.cumsum(count[:-1], out=start[1:])
        rank = np.arange(rows.size, dtype=np.int64) - start[rows]  # rows are sorted
        counts.append(count)
        pos.append(base + rows * n_cols + rank)
        vals.append(cols)
        base += n_rows * n_cols
    if base >= 1 << 31:
        raise ValueError(
            f"q_len={q_len}, kv_len={kv_len}: FlexAttention's full-width index lists would "
            f"hold {base:,} entries (int32 positions overflow); use a larger tile or shorter "
            "sequences"
        )
    # Segments start at 64-byte boundaries so that every view is aligned.
    segs = [np.asarray([kv_len - q_len], dtype=np.int32), *counts, np.concatenate(pos)]
    segs.append(np.concatenate(vals))
    sizes = [-(-x.size // 16) * 16 for x in segs]
    starts = np.cumsum([0, *sizes[:-1]])
    host = np.zeros(sum(sizes), dtype=np.int32)
    for x, st in zip(segs, starts, strict=True):
        host[st : st + x.size] = x
    buf = torch.from_numpy(host).to(device)
    offset = kv_len - q_len if int_offset else buf[0].clone()
    n_ent = segs[-1].size
    idx_all = torch.zeros(base, dtype=torch.int32, device=device)
    idx_all[buf[starts[-2] : starts[-2] + n_ent].long()] = buf[starts[-1] : starts[-1] + n_ent]
    # Each tensor in its own allocation (clones, once per cached mask): views into two shared
    # buffers cost host time on every compiled call (H200, session 8, 8K forward + backward
    # through FA4: 1.60 / 1.59 ms of host per step with views, 1.46 / 1.46 with clones;
    # scripts/gpu_host_isolate.py, results/kernel/session8/).
    counts_d, idx_d, i0 = [], [], 0
    for st, (_, _, n_rows, n_cols) in zip(starts[1:5], sides, strict=True):
        counts_d.append(buf[st : st + n_rows].view(1, 1, n_rows).clone())
        idx_d.append(idx_all[i0 : i0 + n_rows * n_cols].view(1, 1, n_rows, n_cols).clone())
        i0 += n_rows * n_cols
    del buf, idx_all
    bm = BlockMask(
        seq_lengths=(q_len, kv_len),
        kv_num_blocks=counts_d[0],
        kv_indices=idx_d[0],
        full_kv_num_blocks=counts_d[1],
        full_kv_indices=idx_d[1],
        q_num_blocks=counts_d[2],
        q_indices=idx_d[2],
        full_q_num_blocks=counts_d[3],
        full_q_indices=idx_d[3],
        BLOCK_SIZE=(tile, tile),
        mask_mod=(
            _causal_mask_mod(offset)
            if tiles_align(pattern, q_len, kv_len, tile)
            else _pattern_mask_mod(pattern, offset)
        ),
    )
    _mask_cache[key] = bm
    if len(_mask_cache) > _MASK_CACHE_SIZE:
        _mask_cache.popitem(last=False)
    return bm


# torch's lazy form of torch.compiler.disable: importing powerattn must not load Dynamo
# (~2 s; tests/test_cli.py::test_import_and_cli_stay_light).
_block_mask_outside_trace = torch._disable_dynamo(block_mask_for)


@functools.cache
def _limit_name() -> str:
    """Dynamo's name for the recompile limit on this torch (fixed per process)."""
    cfg = torch._dynamo.config
    return "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"


def dynamo_recompile_limit() -> int:
    """Dynamo's current recompile limit (``cache_size_limit`` in older torch)."""
    return getattr(torch._dynamo.config, _limit_name())


class recompile_limit(contextlib.AbstractContextManager):  # noqa: N801 - used as a function
    """Run with dynamo's recompile limit at ``limit`` and its silent eager fallback past it
    turned into ``error(limit)``; both settings are restored after, error or not.

    A class rather than a ``contextmanager`` generator, and the two settings set and restored
    directly rather than through ``cfg.patch``: it is entered on every prefill and training
    call (host time; scripts/prefill_host_cpu.py)."""

    __slots__ = ("error", "limit", "saved")

    def __init__(self, limit: int, error: Callable[[int], Exception]) -> None:
        self.limit, self.error = limit, error

    def __enter__(self) -> None:
        cfg, name = torch._dynamo.config, _limit_name()
        self.saved = getattr(cfg, name), cfg.fail_on_recompile_limit_hit
        setattr(cfg, name, self.limit)
        cfg.fail_on_recompile_limit_hit = True

    def __exit__(self, kind, exc, tb) -> None:
        cfg = torch._dynamo.config
        setattr(cfg, _limit_name(), self.saved[0])
        cfg.fail_on_recompile_limit_hit = self.saved[1]
        if kind is not None and issubclass(kind, torch._dynamo.exc.FailOnRecompileLimitHit):
            raise self.error(self.limit) from exc


def _flex_recompile_error(limit: int) -> FlexRecompileError:
    return FlexRecompileError(
        f"FlexAttention reached {limit} compiled variants; running on would use its "
        "unfused fallback, which materialises the full score matrix. Use fewer distinct "
        "dtypes/head layouts/patterns per process, or raise "
        "powerattn.ops.flex.RECOMPILE_LIMIT."
    )


def recompile_guard(limit: int | None = None) -> contextlib.AbstractContextManager:
    """Turn dynamo's silent eager fallback of the compiled ``flex_attention`` into an error."""
    return recompile_limit(RECOMPILE_LIMIT if limit is None else limit, _flex_recompile_error)


_LN2 = math.log(2.0)


@functools.cache
def _flash_lse_scale(index: int | None) -> float:
    """What to multiply FlashAttention-4's returned lse by to get natural logs, measured once
    per device on a tiny input against a float32 logsumexp.

    FlexAttention's Triton kernels keep base-2 statistics and its Python wrapper converts them;
    FlashAttention-4's lse is natural already, and torch 2.11's wrapper converts it anyway
    (off by a factor ln 2, seen on the H200; later torches skip the conversion for FLASH).
    Measuring instead of reading version numbers keeps this right on every torch."""
    dev = torch.device("cuda", index)
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v = (torch.randn(1, 1, 256, 64, device=dev, generator=g) for _ in range(3))
    q, k, v = (t.to(torch.bfloat16) for t in (q, k, v))
    from ..patterns import get_pattern

    probe = get_pattern("full", block_size=TILE)
    _, lse = flex_sparse_attention(q, k, v, probe, 0.125, need_lse=True, kernel="flash", _raw=True)
    scores = (q.float() @ k.float().transpose(-1, -2)) * 0.125
    causal = torch.ones(256, 256, dtype=torch.bool, device=dev).tril()
    ref = scores.masked_fill(~causal, float("-inf")).logsumexp(-1)
    factor = float((lse.float() * ref).sum() / (ref * ref).sum())
    for scale in (1.0, 1.0 / _LN2):
        if abs(factor * scale - 1.0) < 0.02:
            return scale
    raise RuntimeError(
        f"FlashAttention-4's lse is {factor:.4f} x the natural logsumexp on this torch; "
        "return_lse=True cannot be served by backend='flash' (use backend='flex')"
    )


def pick_kernel(q: torch.Tensor, pattern: Pattern, lse_with_grad: bool = False) -> str:
    """``"flash"`` (FlashAttention-4) where it can serve the input, else ``"flex"``. An lse
    that takes part in a backward (``lse_with_grad``: e.g. merging partial attentions in
    context parallelism) goes to the Triton kernels: FlexAttention's FlashAttention-4 backward
    has no gradient for the lse (torch 2.11)."""
    return "flex" if lse_with_grad or flash_unsupported(q, pattern) else "flash"


def flex_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern,
    scale: float,
    need_lse: bool = True,
    kernel: str = "flex",
    _raw: bool = False,
    *,
    block_mask: BlockMask | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block-sparse attention through FlexAttention (differentiable on CUDA).

    Args:
        q: ``(B, Hq, Sq, D)``; k, v: ``(B, Hkv, Sk, D)`` (validated by the caller).
        need_lse: also return the lse (FlexAttention's CPU kernel cannot produce it). Off
            for training: asking for it adds an output the compiled graph must write.
        kernel: ``"flex"`` (Triton) or ``"flash"`` (FlashAttention-4; ``ValueError`` naming
            the reason when it cannot serve the input).
        block_mask: ``block_mask_for(pattern, Sq, Sk, q.device)``, built by a caller that
            compiles this call (:func:`block_mask_for` inside a trace breaks the graph, and
            every attention layer becomes a frame of its own); ``None``: looked up here.
            ``ValueError`` unless its lengths are ``(Sq, Sk)`` in tiles of :data:`TILE`.
    Returns:
        ``out (B, Hq, Sq, D)`` in q's dtype and ``lse (B, Hq, Sq)`` float32 (natural log),
        or ``None`` for the lse when not asked for.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "flash":
        reason = flash_unsupported(q, pattern)
        if reason:
            raise ValueError(f"backend='flash' cannot run: {reason}. Use backend='flex'")
    if kernel == "flash" and need_lse and needs_grad(q, k, v):
        raise ValueError(
            "backend='flash' cannot differentiate through the lse (FlashAttention-4's backward "
            "has no dLSE in FlexAttention, torch 2.11): use backend='flex' (auto does)"
        )
    Sq, Sk = q.shape[2], k.shape[2]
    if block_mask is not None and (
        tuple(block_mask.seq_lengths) != (Sq, Sk) or tuple(block_mask.BLOCK_SIZE) != (TILE, TILE)
    ):
        raise ValueError(
            f"block_mask is for {tuple(block_mask.seq_lengths)} tokens in tiles of "
            f"{tuple(block_mask.BLOCK_SIZE)}; these inputs need block_mask_for(pattern, {Sq}, "
            f"{Sk}, device) (tiles of {TILE})"
        )
    compiling = torch.compiler.is_compiling()
    if kernel == "flash" and FLASH_DIRECT and Sq == Sk and not compiling and not _raw:
        # Eager prefill/training: FlashAttention-4 itself, without the compiled FlexAttention
        # call around it (host time; see .fa4). Chunks and traced calls go on below.
        bm = block_mask if block_mask is not None else block_mask_for(pattern, Sq, Sk, q.device)
        return fa4_attention(q, k, v, bm, scale, need_lse)
    on_cpu = q.device.type == "cpu"
    if on_cpu and need_lse:
        raise ValueError("backend='flex' cannot return the lse on the CPU")
    if on_cpu and (k is q or v is q or v is k):
        # torch 2.11's CPU lowering refuses one tensor as two of q, k, v ("Unsupported for
        # now if query, key, value are the same buffer"): a copy, on the CPU only.
        k, v = (k.clone() if k is q else k), (v.clone() if v is q or v is k else v)
    # Blocks that are multiples of the tile but an offset that is not (decode-like chunks):
    # prepend zero queries so that tiles align again; their rows are dropped below.
    pad = 0
    if not on_cpu and pattern.block_size % TILE == 0:
        pad = (Sk - Sq) % TILE
        if pad:
            q = F.pad(q, (0, 0, pad, 0))
    gqa = q.shape[1] != k.shape[1]
    if compiling and kernel == "flash" and need_lse:
        # The lse scale of FlashAttention-4 is measured eagerly (_flash_lse_scale), which a
        # trace cannot do: inside a user's compile an lse comes from the Triton kernels.
        kernel = "flex"
    static = True
    if not compiling and not on_cpu:
        grad = needs_grad(q, k, v)
        sig = (q.dtype, q.shape, k.shape, q.device, pattern, kernel, need_lse, grad)
        static = sig in _static_signatures or len(_static_signatures) < STATIC_VARIANTS
        if static:
            _static_signatures.add(sig)
        elif kernel == "flash":  # FlashAttention-4 compiles static shapes only
            kernel = "flex"
    if block_mask is None or pad or not static:
        # (a given mask has the static variant's int offset, and no padded queries)
        bm = block_mask_for(pattern, Sq + pad, Sk, q.device, int_offset=static)
    else:
        bm = block_mask
    options = None if on_cpu else _FLASH_OPTIONS if kernel == "flash" else _TRITON_OPTIONS
    if not need_lse:
        aux = {}
    elif AuxRequest is not None:  # torch >= 2.9: return_lse is deprecated
        aux = {"return_aux": AuxRequest(lse=True)}
    else:  # pragma: no cover - older torch
        aux = {"return_lse": True}
    # Inside the user's compiled graph: call the op itself (no nested compile).
    fn = _flex_static if compiling else _compiled_fn(dynamic=not static)
    with contextlib.nullcontext() if compiling else recompile_guard():
        res = fn(q, k, v, bm, scale, gqa, options, aux)
    if not need_lse:
        out, lse = res, None
    else:
        out, lse = res[0], res[1].lse if AuxRequest is not None else res[1]
        if kernel == "flash" and not _raw:
            factor = _flash_lse_scale(q.device.index)
            if factor != 1.0:  # 1/ln 2 on torch 2.11 (see there); 1: no launch, same lse
                lse = lse * factor
    if pad:
        out = out[:, :, pad:].contiguous()
        lse = None if lse is None else lse[:, :, pad:].contiguous()
    return out, lse
