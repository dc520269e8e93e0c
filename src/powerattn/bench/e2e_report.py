"""The report of ``bench e2e``: speed-ups and targets, the tables, the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import runner
from .e2e_model import VARIANTS
from .runner import Column, Ratio

TARGET_PREFILL_SPEEDUP = 2.8  # prefill at 128K >= 2.8x faster than full attention
TARGET_DECODE_RATIO = 0.40  # static-cache decode at 128K, batch 8: <= 40% of full's ms/token
TARGET_FLAT = 1.15  # static-cache decode: ms/token at 128K within 15% of 16K's
STATIC_VARIANTS = ("full", "power")


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    """Speed-ups against ``full`` at each length, and the targets at the longest one."""
    by = {(r["variant"], r["seq_len"]): r for r in doc["results"] if "prefill_s" in r}
    out: dict[str, Any] = {"prefill_speedup_vs_full": {}, "decode_ratio_vs_full": {}}
    lens = sorted({r["seq_len"] for r in doc["results"]})
    for (v, n), r in by.items():
        f = by.get(("full", n))
        if f is None or v == "full":
            continue
        out["prefill_speedup_vs_full"][f"{v}@{n}"] = f["prefill_s"] / r["prefill_s"]
        out["decode_ratio_vs_full"][f"{v}@{n}"] = (
            r["decode_ms_per_token"] / f["decode_ms_per_token"]
        )
    static = {
        (r["variant"], r["seq_len"], r["batch"]): r.get("graph_ms", r.get("eager_ms"))
        for r in doc.get("static_decode", [])
        if "eager_ms" in r
    }
    if static:
        top = max(n for _, n, _ in static)
        low = min(n for _, n, _ in static)
        ratio = {}
        for (v, n, b), ms in static.items():
            f = static.get(("full", n, b))
            if v != "full" and f:
                ratio[f"{v}@{n}/b{b}"] = ms / f
        out["static_decode_ratio_vs_full"] = ratio
        flat = {
            f"{v}/b{b}": static[(v, top, b)] / static[(v, low, b)]
            for (v, n, b) in static
            if n == top and (v, low, b) in static
        }
        out["static_decode_growth"] = {"from": low, "to": top, **flat}
        d = ratio.get(f"power@{top}/b8")
        g = flat.get("power/b8")
        out["static_targets"] = {
            "seq_len": top,
            "decode_ratio_b8": d,
            "decode_target": TARGET_DECODE_RATIO,
            "decode_met": None if d is None else d <= TARGET_DECODE_RATIO,
            "growth_b8": g,
            "growth_target": TARGET_FLAT,
            "growth_met": None if g is None else g <= TARGET_FLAT,
        }
    if lens:
        top = max(lens)
        s = out["prefill_speedup_vs_full"].get(f"power@{top}")
        d = out["decode_ratio_vs_full"].get(f"power@{top}")
        out["targets"] = {
            "seq_len": top,
            "prefill_speedup": s,
            "prefill_target": TARGET_PREFILL_SPEEDUP,
            "prefill_met": None if s is None else s >= TARGET_PREFILL_SPEEDUP,
            "decode_ratio_dynamic_cache": d,
        }
    return out


# ----------------------------------------------------------------------------- output
# The tables, on the benchmark runner's columns. The ratios to full are derived for printing
# (the saved rows hold the measurements only; `summarize` keeps the speed-ups).
COLUMNS = (
    Column("seq_len", "prompt", 8, "d", align=">"),
    Column("variant", "variant", 15),
    Column("prefill_s", "TTFT s", 8, ".3f", align=">"),
    Column("x_full", "x full", 7, ".2f", "x", align=">"),
    Column("prefill_first_s", "1st TTFT s", 10, ".3f", align=">"),
    Column("decode_ms_per_token", "decode ms/tok", 13, ".2f", align=">"),
    Column("pct_full", "% full", 7, ".0%", align=">"),
    Column("peak_gib", "peak GiB", 9, ".1f", align=">"),
    Column("error", "", 0),
)
RATIOS = {  # TTFT speed-up, and decode time as a fraction of full's, at the same length
    "x_full": Ratio("full", None, on_baseline=True, key="prefill_s"),
    "pct_full": Ratio("full", None, on_baseline=True, key="decode_ms_per_token", invert=True),
}
STATIC_COLUMNS = (
    Column("seq_len", "context", 8, "d", align=">"),
    Column("variant", "variant", 8),
    Column("batch", "batch", 5, "d", align=">"),
    Column("eager_ms", "eager ms", 9, ".2f", align=">"),
    Column("graph_ms", "graph ms", 9, ".2f", align=">"),
    Column("tokens_per_s", "tokens/s", 9, ".0f", align=">"),
    Column("graph_error", "", 0, lambda e: f"(graph capture failed: {e})"),
    Column("error", "", 0),
)


def result_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The DynamicCache rows by length then variant, with the printed ratios to full."""
    rows = sorted(doc["results"], key=lambda r: (r["seq_len"], VARIANTS.index(r["variant"])))
    rows = [dict(r) for r in rows]
    runner.add_ratios(rows, RATIOS, ["seq_len"], provider_key="variant", value_key="prefill_s")
    return rows


def print_table(doc: dict[str, Any]) -> None:
    m = doc["meta"]
    print(
        f"\n{m['device']}; torch {m['torch']}, transformers {m['transformers']}; "
        f"{m['model_shape']['num_hidden_layers']}-layer Qwen2 shape, bf16, batch 1, "
        f"decode over {m['config']['decode_steps']} steps"
    )
    for v, desc in doc["variants"].items():
        print(f"  {v}: {desc}")
    runner.print_table(result_rows(doc), COLUMNS)
    t = doc.get("summary", {}).get("targets")
    if t and t.get("prefill_speedup") is not None:
        print(
            f"\nat {t['seq_len']:,} tokens, power vs full: prefill {t['prefill_speedup']:.2f}x "
            f"(target >= {t['prefill_target']}x: {'met' if t['prefill_met'] else 'missed'})"
        )
    if doc.get("static_decode"):
        print("\nStaticCache decode step (random context of the given length):")
        runner.print_table(doc["static_decode"], STATIC_COLUMNS)
    st = doc.get("summary", {}).get("static_targets")
    if st and st.get("decode_ratio_b8") is not None:
        growth = st.get("growth_b8")
        grown = "n/a" if growth is None else f"{growth:.2f}x"
        print(
            f"at {st['seq_len']:,} tokens, batch 8: power decode {st['decode_ratio_b8']:.0%} of "
            f"full's (target <= {st['decode_target']:.0%}: "
            f"{'met' if st['decode_met'] else 'missed'}); power's step time grows {grown} "
            f"over the lengths (target <= {st['growth_target']}x)"
        )


def plot(doc: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    rows = [r for r in doc["results"] if "prefill_s" in r]
    full = {r["seq_len"]: r for r in rows if r["variant"] == "full"}
    for v in VARIANTS:
        rs = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["seq_len"])
        if not rs:
            continue
        x = [r["seq_len"] for r in rs]
        axes[0].plot(x, [r["prefill_s"] for r in rs], "o-", label=v)
        axes[1].plot(x, [r["decode_ms_per_token"] for r in rs], "o-", label=v)
        if v != "full":
            xs = [r["seq_len"] for r in rs if r["seq_len"] in full]
            pairs = [(full[n], r) for n, r in zip(x, rs, strict=True) if n in full]
            axes[2].plot(
                xs,
                [f["prefill_s"] / r["prefill_s"] for f, r in pairs],
                "o-",
                label=f"{v}: prefill speed-up",
            )
            axes[2].plot(
                xs,
                [f["decode_ms_per_token"] / r["decode_ms_per_token"] for f, r in pairs],
                "s--",
                label=f"{v}: decode speed-up",
            )
    axes[2].axhline(
        TARGET_PREFILL_SPEEDUP,
        color="k",
        lw=0.8,
        ls=":",
        label=f"prefill target {TARGET_PREFILL_SPEEDUP}x",
    )
    for v in STATIC_VARIANTS:
        for b in sorted({r["batch"] for r in doc.get("static_decode", [])}):
            rs = [
                r
                for r in doc.get("static_decode", [])
                if r["variant"] == v and r["batch"] == b and "eager_ms" in r
            ]
            if rs:
                axes[3].plot(
                    [r["seq_len"] for r in rs],
                    [r.get("graph_ms", r["eager_ms"]) for r in rs],
                    "o-" if v == "power" else "s--",
                    label=f"{v}, batch {b}",
                )
    titles = (
        "time to first token (s)",
        "decode ms / token (DynamicCache, eager)",
        "speed-up vs full (x)",
        "decode ms / step (StaticCache, CUDA graph)",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt tokens")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    axes[3].set_xlabel("context tokens")
    m = doc["meta"]
    fig.suptitle(
        f"{m['config']['model']} shape ({m['model_shape']['num_hidden_layers']} layers), random "
        f"bf16 weights, batch 1 -- {m['device']}, torch {m['torch']}, "
        f"transformers {m['transformers']}",
        fontsize=10,
    )
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
