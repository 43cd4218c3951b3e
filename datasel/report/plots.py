"""The report's figures: matplotlib's object API on the Agg canvas, each returned as base64 PNG
(None when matplotlib, the `report` extra, is missing: the page then shows the tables alone)."""

from __future__ import annotations

import base64
import io
import math

import numpy as np

from datasel.report.read import Step, change, pct

KEPT_COLOR = "#4c78a8"
REMOVED_COLOR = "#e45756"
REASON_COLORS = ["#f58518", "#b279a2", "#9d755d", "#eeca3b", "#72b7b2", "#ff9da6", "#e45756"]
FIG_WIDTH, DPI = 10.3, 144  # inches; shown at 100 px per inch (1030 px), sharp on HiDPI


def plotter():
    """matplotlib's object API on the Agg canvas (no pyplot, no global backend change), or None
    when matplotlib (the `report` extra) is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None

    def figure(h: float):
        fig = Figure(figsize=(FIG_WIDTH, h), dpi=DPI, layout="constrained")
        FigureCanvasAgg(fig)
        return fig

    return figure


def png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def axes(fig, title: str, grid: str = "y"):
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax = fig.add_subplot()
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis=grid, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    counts = ax.xaxis if grid == "x" else ax.yaxis
    counts.set_major_locator(MaxNLocator(integer=True))
    counts.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.set_title(title, fontsize=10, loc="left")
    return ax


def legend_above(ax, ncols: int = 2) -> None:
    """Legend on the title line, right-aligned, where it never covers the data."""
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), ncols=ncols, fontsize=8, frameon=False)


def funnel(plt, steps: list[Step], colors: dict) -> str | None:
    if plt is None:
        return None
    fig = plt(1.4 + 0.55 * len(steps))
    ax = axes(fig, "rows kept and removed by reason, per step", grid="x")
    y = np.arange(len(steps))[::-1]
    kept = np.array([s.manifest["kept"] for s in steps], dtype=np.float64)
    ax.barh(y, kept, color=KEPT_COLOR, height=0.6, label="kept")
    left = kept.copy()
    for r, color in colors.items():
        n = np.array([s.reasons.get(r, 0) for s in steps], dtype=np.float64)
        ax.barh(y, n, left=left, color=color, height=0.6, label=f"removed: {r}")
        left += n
    top = max(s.manifest["rows_in"] for s in steps)
    for yi, s in zip(y, steps, strict=True):
        m = s.manifest
        label = f"{m['kept']:,} of {s.rows_in_text} kept ({pct(m['kept'], m['rows_in'])})"
        ax.text(m["rows_in"] + top * 0.01, yi, label, va="center", fontsize=9)
    ax.set_yticks(y, [s.name for s in steps])
    ax.set_xlim(0, top * 1.3)
    ax.set_xlabel("rows")
    longest = max([len(f"removed: {r}") for r in colors] + [4])
    ncols = max(1, min(6, 1 + len(colors), 150 // (longest + 6)))  # ~150 characters a line
    fig.legend(loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)
    return png(fig)


def histogram(plt, col: str, kept: tuple, gone: tuple, cuts) -> str | None:
    """Stacked histogram of kept and removed values; `kept`/`gone` are (sampled values, rows
    there are), each sampled value weighted to stand for its share of the rows."""
    if plt is None:
        return None
    both = np.concatenate([kept[0], gone[0]])
    finite = both[np.isfinite(both)]
    bad = both.size - finite.size
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if hi == lo:  # one distinct value: a window around it (bins from it to it + 1 misled)
        pad = 0.1 * max(abs(lo), 1.0)
        lo, hi = lo - pad, hi + pad
    # a cut-off far past the values (e.g. Gopher's 100,000 words) would squeeze them into a bin
    far = [(v, label) for v, label in cuts if not lo - (hi - lo) <= v <= hi + (hi - lo)]
    cuts = [c for c in cuts if c not in far]
    notes = [f"{bad:,} non-finite values not shown"] if bad else []
    notes += [f"{label} off the scale" for _, label in far]
    fig = plt(3.0)
    ax = axes(fig, col + (f"  ({'; '.join(notes)})" if notes else ""))
    if finite.size == 0:
        ax.text(0.5, 0.5, "no finite values", ha="center", transform=ax.transAxes)
        return png(fig)
    for v, _ in cuts:
        lo, hi = min(lo, v), max(hi, v)
    width = (hi - lo) / 50 or 1.0
    if cuts:  # a bin edge on the first cut-off, so no bin mixes kept and removed rows
        lo = cuts[0][0] - math.ceil((cuts[0][0] - lo) / width) * width
    bins = lo + width * np.arange(math.ceil((hi - lo) / width) + 2)
    data, weights, labels, colors = [], [], [], []
    for (values, rows), label, color in (
        (kept, "kept", KEPT_COLOR),
        (gone, "removed", REMOVED_COLOR),
    ):
        ok = values[np.isfinite(values)]
        if ok.size:
            data.append(ok)
            weights.append(np.full(ok.size, rows / values.size))
            labels.append(f"{label} ({rows:,})")
            colors.append(color)
    ax.hist(data, bins=bins, weights=weights, stacked=True, color=colors, label=labels)
    for v, label in cuts:
        ax.axvline(v, color="#222", linestyle="--", linewidth=1.2)
        ax.annotate(
            label,
            (v, 1),
            xycoords=("data", "axes fraction"),
            xytext=(4, -2),
            textcoords="offset points",
            va="top",
            fontsize=8,
        )
    ax.set_xlabel(col)
    ax.set_ylabel("rows")
    legend_above(ax)
    return png(fig)


def clusters(
    plt, size: np.ndarray, pick: np.ndarray, ids: list, quota=None, name: str = "cluster"
) -> str | None:
    """Bars of each group's size (a `name`: a cluster) and rows picked from it, largest first;
    `quota`: the rows the step's quota rule allotted each (a black tick)."""
    if plt is None or size.size == 0:
        return None
    fig = plt(3.0)
    ax = axes(fig, f"{name} sizes and rows picked from each")
    x = np.arange(size.size)
    if size.size > 80:  # thousands of bars draw slowly and alias; filled steps read the same
        ax.fill_between(x, size, step="mid", color="#c9d3df", label=f"{name} size")
        ax.fill_between(x, pick, step="mid", color=KEPT_COLOR, label="picked")
    else:
        ax.bar(x, size, width=0.8, color="#c9d3df", label=f"{name} size")
        ax.bar(x, pick, width=0.55, color=KEPT_COLOR, label="picked")
    if quota is not None and size.size > 80:
        ax.step(x, quota, where="mid", color="#222", linewidth=0.8, label="quota")
    elif quota is not None:
        ax.scatter(x, quota, marker="_", s=120, linewidths=1.5, color="#222", label="quota")
    if size.size <= 30:
        ax.set_xticks(x, [str(i) for i in ids], fontsize=8)
        ax.set_xlabel(f"{name} id, largest first")
    else:
        ax.set_xlabel(f"{name}s, largest first")
    ax.set_ylabel("rows")
    legend_above(ax, ncols=3)
    return png(fig)


def kl(plt, pairs: list[tuple[str, float, float]]) -> str | None:
    if plt is None:
        return None
    fig = plt(1.2 + 0.6 * len(pairs))
    ax = fig.add_subplot()
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="x", color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.set_title("shift toward the target: KL divergence before and after", fontsize=10, loc="left")
    y = np.arange(len(pairs))[::-1]
    before = [b for _, b, _ in pairs]
    after = [a for _, _, a in pairs]
    ax.barh(y + 0.18, before, height=0.34, color="#bab0ac", label="before")
    ax.barh(y - 0.18, after, height=0.34, color="#54a24b", label="after")
    for yi, b, a in zip(y, before, after, strict=True):
        ax.text(b, yi + 0.18, f" {b:.4g}", va="center", fontsize=8)
        ax.text(a, yi - 0.18, f" {a:.4g} ({change(b, a)})", va="center", fontsize=8)
    ax.set_yticks(y, [k for k, _, _ in pairs])
    ax.set_xlim(0, max([*before, *after, 1e-9]) * 1.3)
    ax.set_xlabel("KL divergence (lower is closer to the target)")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return png(fig)
