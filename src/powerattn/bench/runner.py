"""The declarative benchmark runner: a benchmark lists its configs and providers and says how
to measure one (config, provider) cell; the runner does the loop, the rows, the notes, the
ratios to baseline providers, the progress log, the table, the JSON and the plot.

A row is a flat dict: the config's keys, the provider under ``Benchmark.provider_key``, then
what ``measure`` returned (a number goes under ``Benchmark.value_key``; a dict is merged, and
may override a config key such as ``case``; a list gives several rows). For example::

    bench = Benchmark(
        name="matmul",
        configs=[{"n": n} for n in (256, 512, 1024)],
        providers=["torch", "numpy"],
        measure=lambda cfg, provider, state: time_it(provider, cfg["n"]),
        columns=[Column("n", "n", 6, "d"), Column("method", "method", 8),
                 Column("ms", "ms", 9, ".3f"), Column("vs_numpy", "vs numpy", 9, ".2f", "x")],
        ratios={"vs_numpy": Ratio("numpy")},
        plot=Plot(x="n", line="method"),
    )
    result = run(bench)             # {"rows": [...], "notes": [...]}
    print_table(result["rows"], bench.columns, result["notes"])
    plot(result["rows"], bench.plot, "matmul.png", title="...")

``measure`` raises :class:`Skip` for a cell that cannot be measured here (the reason, if
any, becomes a note), ``setup`` for a whole config (e.g. a time budget spent); any other
exception stops the run, as a wrong kernel should (a benchmark that must keep going after a
failure returns the error as its row instead).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Row = dict[str, Any]


class Skip(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by ``measure``: this cell is not measured; ``note`` (optional) says why."""

    def __init__(self, note: str | None = None):
        super().__init__(note or "")
        self.note = note


@dataclass(frozen=True)
class Column:
    """One table column: ``row[key]`` formatted with ``fmt`` (a format spec or a function of
    the value) plus ``suffix``, padded to ``width`` (``align`` "<" or ">"); a missing or
    ``None`` value prints blank."""

    key: str
    header: str
    width: int = 0
    fmt: str | Callable[[Any], str] = ""
    suffix: str = ""
    align: str = "<"

    def text(self, row: Mapping[str, Any]) -> str:
        value = row.get(self.key)
        if value is None:
            cell = ""
        elif callable(self.fmt):
            cell = self.fmt(value)
        else:
            cell = format(value, self.fmt) + self.suffix
        return f"{cell:{self.align}{self.width}}"

    def head(self) -> str:
        return f"{self.header:{self.align}{self.width}}"


@dataclass(frozen=True)
class Ratio:
    """A derived column: ``baseline's value / this row's value`` at the same config (the
    baseline provider's row with the same config keys, ``case`` included), rounded to
    ``digits`` (``None``: not rounded), on the rows measured after the baseline (and on its
    own row, 1.0, with ``on_baseline``); rows without a measured baseline get none. ``key``:
    the value compared (default: the benchmark's ``value_key``); ``invert``: ``this row's
    value / baseline's`` instead (e.g. a fraction of the baseline's time)."""

    baseline: str
    digits: int | None = 2
    on_baseline: bool = False
    key: str | None = None
    invert: bool = False


@dataclass(frozen=True)
class Plot:
    """One panel per value of ``panel`` (in ``panels`` order when given, else first seen), one
    line per ``line`` value, ``y`` against ``x``; log axes by default."""

    x: str
    y: str = "ms"
    line: str = "method"
    panel: str | None = None
    panels: Sequence[str] | None = None
    xlabel: str | None = None
    ylabel: str | None = None
    logx: int | None = 2
    logy: bool = True
    panel_width: float = 4.6
    height: float = 4.0
    color: Callable[[Any], str] | None = None  # a line's colour from its value (None: cycle)


@dataclass
class Benchmark:
    """What to measure. ``configs``: the points (dicts of parameters), in order;
    ``providers``: what is compared at each point (or a function of the config giving them);
    ``measure(config, provider, state)``: one cell (see the module docstring), where
    ``state`` is ``setup(config)``'s result (inputs shared by the providers of a config) and
    ``teardown(config)`` runs after the config (e.g. to free device memory)."""

    name: str
    configs: Sequence[Mapping[str, Any]]
    providers: Sequence[str] | Callable[[Mapping[str, Any]], Sequence[str]]
    measure: Callable[[Mapping[str, Any], str, Any], Any]
    setup: Callable[[Mapping[str, Any]], Any] | None = None
    teardown: Callable[[Mapping[str, Any]], None] | None = None
    provider_key: str = "method"
    value_key: str = "ms"
    columns: Sequence[Column] = ()
    ratios: Mapping[str, Ratio] = field(default_factory=dict)
    plot: Plot | None = None

    def providers_for(self, config: Mapping[str, Any]) -> Sequence[str]:
        return self.providers(config) if callable(self.providers) else self.providers


def _rows_of(bench: Benchmark, config: Mapping[str, Any], provider: str, got: Any) -> list[Row]:
    """The rows of one measured cell (see the module docstring)."""
    items = got if isinstance(got, list) else [got]
    rows = []
    for item in items:
        row: Row = {**config, bench.provider_key: provider}
        if isinstance(item, Mapping):
            row.update(item)
        else:
            row[bench.value_key] = item
        rows.append(row)
    return rows


def add_ratios(
    rows: Sequence[Row],
    ratios: Mapping[str, Ratio],
    keys: Sequence[str],
    provider_key: str = "method",
    value_key: str = "ms",
) -> None:
    """Fill the ``ratios`` columns of ``rows`` in place, a row's config being its ``keys``
    (the runner calls this per config; a report may call it on saved rows, e.g. to print
    derived columns that are not stored)."""

    def ident(row: Mapping[str, Any]) -> tuple:
        return tuple(row.get(k) for k in keys)

    for col, ratio in ratios.items():
        key = ratio.key or value_key
        base: dict[tuple, float] = {}
        for r in rows:
            v = r.get(key)
            is_base = r[provider_key] == ratio.baseline
            if is_base and v:
                base[ident(r)] = v
            b = base.get(ident(r))
            if b is not None and v and (ratio.on_baseline or not is_base):
                x = v / b if ratio.invert else b / v
                r[col] = x if ratio.digits is None else round(x, ratio.digits)


def _add_ratios(bench: Benchmark, config: Mapping[str, Any], rows: list[Row]) -> None:
    """Fill the ratio columns of one config's rows, in place."""
    add_ratios(rows, bench.ratios, list(config), bench.provider_key, bench.value_key)


def run(
    bench: Benchmark,
    log: Callable[[str], object] | None = print,
    on_progress: Callable[[dict[str, Any]], object] | None = None,
    on_row: Callable[[Row], object] | None = None,
) -> dict[str, Any]:
    """Measure every (config, provider) cell in order; returns ``{"rows", "notes"}``.

    ``log`` gets each row as a table line (and each note) once its config is measured
    (``None``: quiet); ``on_progress(result)`` is called after each config, so that a long
    run can be saved as it goes; ``on_row(row)`` as soon as each row is measured (before its
    config's ratios), for a benchmark whose cells take minutes."""
    rows: list[Row] = []
    notes: list[str] = []

    def note(text: str) -> None:
        if text not in notes:
            notes.append(text)
            if log is not None:
                log(f"  note: {text}")

    for config in bench.configs:
        try:
            state = bench.setup(config) if bench.setup is not None else None
        except Skip as skip:  # the whole config
            if skip.note:
                note(skip.note)
            continue
        mine: list[Row] = []
        for provider in bench.providers_for(config):
            try:
                got = bench.measure(config, provider, state)
            except Skip as skip:
                if skip.note:
                    note(skip.note)
                continue
            new = _rows_of(bench, config, provider, got)
            if on_row is not None:
                for r in new:
                    on_row(r)
            mine += new
        del state
        _add_ratios(bench, config, mine)
        rows += mine
        if log is not None and bench.columns:
            for r in mine:
                log("  " + format_row(r, bench.columns))
        if bench.teardown is not None:
            bench.teardown(config)
        if on_progress is not None:
            on_progress({"rows": rows, "notes": notes})
    return {"rows": rows, "notes": notes}


def format_row(row: Mapping[str, Any], columns: Sequence[Column]) -> str:
    return " ".join(c.text(row) for c in columns)


def header(columns: Sequence[Column]) -> str:
    return " ".join(c.head() for c in columns)


def table(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[Column], notes: Sequence[str] = ()
) -> str:
    """The header, one line per row, then ``note: ...`` lines."""
    lines = [header(columns)]
    lines += [format_row(r, columns) for r in rows]
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def print_table(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[Column], notes: Sequence[str] = ()
) -> None:
    print(table(rows, columns, notes))


def write_json(
    path: str | Path | None,
    obj: Any,
    indent: int = 1,
    newline: bool = False,
    default: Callable[[Any], Any] | None = None,
) -> None:
    """Write ``obj`` to ``path`` (parent folders made; nothing when ``path`` is None);
    ``default``: as for ``json.dump`` (e.g. ``str`` for values JSON has no type for)."""
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=indent, default=default)
        if newline:
            f.write("\n")


def plot(
    rows: Sequence[Mapping[str, Any]], spec: Plot, path: str | Path, title: str | None = None
) -> None:
    """Draw ``rows`` as ``spec`` says into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if spec.panel is None:
        panels: list[Any] = [None]
    else:
        seen = list(dict.fromkeys(r[spec.panel] for r in rows))
        panels = [p for p in spec.panels if p in seen] if spec.panels is not None else seen
    if not panels:
        raise ValueError("nothing to plot: no rows in the panels asked for")
    fig, axes = plt.subplots(1, len(panels), figsize=(spec.panel_width * len(panels), spec.height))
    axes = [axes] if len(panels) == 1 else axes
    for ax, panel in zip(axes, panels, strict=True):
        mine = [r for r in rows if spec.panel is None or r[spec.panel] == panel]
        for line in dict.fromkeys(r[spec.line] for r in mine):
            pts = sorted((r[spec.x], r[spec.y]) for r in mine if r[spec.line] == line)
            kw = {"color": spec.color(line)} if spec.color is not None else {}
            ax.plot(*zip(*pts, strict=True), marker="o", label=line, **kw)
        if spec.logx:
            ax.set_xscale("log", base=spec.logx)
        if spec.logy:
            ax.set_yscale("log")
        ax.set_xlabel(spec.xlabel or spec.x)
        ax.set_ylabel(spec.ylabel or spec.y)
        if panel is not None:
            ax.set_title(str(panel))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ device-dependent flags
def resolve_device_defaults(args: Any, gpu: Mapping[str, Any], cpu: Mapping[str, Any]) -> Any:
    """Fill ``args.device`` (CUDA when present, else the CPU) and every flag of ``gpu`` /
    ``cpu`` left ``None`` with the defaults of that device (in place; returned): a benchmark
    sized for an H200 would run for hours on a CPU."""
    import torch

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    for flag, value in (cpu if args.device == "cpu" else gpu).items():
        if getattr(args, flag) is None:
            setattr(args, flag, list(value) if isinstance(value, tuple) else value)
    return args


def device_defaults_help(flag: str, gpu: Mapping[str, Any], cpu: Mapping[str, Any]) -> str:
    """``flag``'s two defaults as help text: the GPU's, then the CPU's."""

    def text(value: Any) -> str:
        return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)

    return f"default: {text(gpu[flag])} on CUDA, {text(cpu[flag])} on the CPU"
