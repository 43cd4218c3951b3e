"""The eval's results: eval.json's summary, a terminal table and report.html.

The spread of a figure is the standard deviation over seeds (sample, n-1). A difference between
two arms "exceeds the spread" when it is larger than the sum of their two spreads (their
mean +- spread intervals do not overlap) and than twice the pooled spread of all arms (the
run-to-run noise every arm shares: two seeds of one arm can agree by chance, and at 1M tokens
a random arm's two seeds sat 0.02 apart while its runs spread 0.05); with one seed no
difference is called.
"""

from __future__ import annotations

import html
import os
import statistics
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from datasel.progress import LOG_SECONDS, hms

METRICS = {"bpb": "bits per byte", "loss": "nats per token"}


class Bar:
    """Training steps of all runs still to do, with an ETA: a bar on a terminal, else (cron
    logs) a line after a step at most every LOG_SECONDS."""

    def __init__(self, total: int, quiet: bool):
        self.bar, self.total, self.done, self.what = None, total, 0, "eval"
        shown, terminal = not quiet and total > 0, sys.stderr.isatty()
        self.log = shown and not terminal
        self.t0 = self.logged = time.monotonic()
        if shown and terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("steps, ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.bar.add_task("eval", total=total)

    def __enter__(self):
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def describe(self, what: str) -> None:
        self.what = what
        if self.bar is not None:
            self.bar.update(self.task, description=what)

    def advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.advance(self.task)
        now = time.monotonic()
        if self.log and (now - self.logged >= LOG_SECONDS or self.done == self.total):
            self.logged = now
            left = (now - self.t0) / self.done * (self.total - self.done)
            eta = hms(left)
            print(
                f"eval: {self.what}: step {self.done:,}/{self.total:,} "
                f"({100 * self.done / self.total:.0f}%), ETA {eta}",
                file=sys.stderr,
                flush=True,
            )

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def summarize(*, runs: list[dict], arms: dict, sets: dict, settings: dict) -> dict:
    """eval.json: settings, arms, eval sets, every run's curve, the final-checkpoint mean and
    spread per arm and eval set, and each arm against the reference arm (`random` when there
    is one, else the first arm)."""
    summary: dict[str, dict] = {}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        summary[arm] = {
            s: {m: seed_stats([r["curve"][-1]["eval"][s][m] for r in mine]) for m in METRICS}
            for s in sets
        }
    ref = "random" if "random" in arms else next(iter(arms))
    noise = {s: pooled_spread([summary[a][s]["bpb"] for a in arms]) for s in sets}
    compare = {
        arm: {s: difference(summary[arm][s]["bpb"], summary[ref][s]["bpb"], noise[s]) for s in sets}
        for arm in arms
        if arm != ref
    }
    return {
        "settings": settings,
        "arms": arms,
        "eval_sets": sets,
        "metrics": METRICS,
        "spread": "standard deviation over seeds (n-1); a difference exceeds the spread when "
        "it is larger than the sum of the two arms' spreads and than twice the pooled spread "
        "of all arms",
        "summary": summary,
        "reference": ref,
        "vs_reference": compare,
        "runs": [{k: v for k, v in r.items() if k != "key"} for r in runs],
    }


def seed_stats(values: list[float]) -> dict:
    """Mean and spread (sample standard deviation; None for one seed) of a figure over seeds."""
    spread = statistics.stdev(values) if len(values) > 1 else None
    return {
        "mean": round(statistics.fmean(values), 6),
        "spread": None if spread is None else round(spread, 6),
        "values": values,
    }


def pooled_spread(stats: list[dict]) -> float | None:
    """The standard deviation of one run pooled over arms (their variances weighted by their
    degrees of freedom): every arm trains the same model on the same budget, so their noise
    is shared, and many arms estimate it better than any one arm's few seeds."""
    parts = [(len(s["values"]) - 1, s["spread"]) for s in stats if s["spread"] is not None]
    dof = sum(n for n, _ in parts)
    return (sum(n * sd**2 for n, sd in parts) / dof) ** 0.5 if dof else None


def difference(a: dict, ref: dict, pooled: float | None = None) -> dict:
    """a - ref, whether it exceeds the seeds' spread (the sum of the two deviations, and twice
    the `pooled` one of all arms when given), and in how many seeds a is lower: runs of one
    seed start from the same weights, so the seed-by-seed signs show a consistent effect."""
    diff = a["mean"] - ref["mean"]
    paired = [x - y for x, y in zip(a["values"], ref["values"], strict=False)]
    out = {"difference": round(diff, 6), "lower_in_seeds": sum(d < 0 for d in paired)}
    if a["spread"] is None or ref["spread"] is None:
        return out | {"exceeds_spread": None}
    bar = max(a["spread"] + ref["spread"], 2 * (pooled or 0.0))
    return out | {"exceeds_spread": abs(diff) > bar}


def _cell(stats: dict, digits: int = 4) -> str:
    spread = "" if stats["spread"] is None else f" ±{stats['spread']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}{spread}"


def _delta(d: dict | None, seeds: int) -> str:
    if d is None:
        return "(reference)"
    mark = {True: " *", False: "", None: " ?"}[d["exceeds_spread"]]
    return f"{d['difference']:+.4f}{mark} ({d['lower_in_seeds']}/{seeds} lower)"


def table(result: dict) -> Table:
    """Arms as rows and eval sets as columns, or the other way round when the eval sets
    outnumber the arms (one per domain), so the table stays narrow enough to read."""
    seeds, ref = result["settings"]["seeds"], result["reference"]
    arms, sets = list(result["summary"]), list(result["eval_sets"])
    by_set = len(sets) > len(arms)
    t = Table(
        title=f"held-out bits per byte (nats per token), mean ±spread over {seeds} seed(s)",
        title_justify="left",
    )
    t.add_column("eval set" if by_set else "arm")
    for col in arms if by_set else sets:
        t.add_column(col, justify="right")
        if not (by_set and col == ref):  # by set, the reference arm has no column against itself
            t.add_column(f"vs {ref}", justify="right")
    for row in sets if by_set else arms:
        cells = [row]
        for col in arms if by_set else sets:
            arm, name = (col, row) if by_set else (row, col)
            stats = result["summary"][arm][name]
            cells.append(f"{_cell(stats['bpb'])} ({_cell(stats['loss'], 3)})")
            if not (by_set and arm == ref):
                cells.append(_delta(result["vs_reference"].get(arm, {}).get(name), seeds))
        t.add_row(*cells)
    t.caption = (
        "* the difference exceeds the seeds' spread (sum of the two standard deviations, and "
        "twice the one pooled over arms); (k/n lower): seeds in which the arm is lower; "
        + ("? one seed: no spread to compare with" if seeds < 2 else "lower is better")
    )
    return t


def print_table(result: dict) -> None:
    Console().print(table(result))


# ---------------------------------------------------------------- report.html


def write_html(result: dict, path: Path) -> Path | None:
    """report.html with a results table, learning curves and a bar chart with error bars;
    without matplotlib (the `report` extra) the page says so and keeps the table."""
    from datasel.report.html import CSS, PAGE
    from datasel.report.plots import plotter, png

    fig = plotter()
    body = [f"<header><h1>datasel eval</h1><p class='path'>{html.escape(str(path.parent))}</p>"]
    body.append(f"<p class='lead'>{html.escape(_settings_line(result))}</p></header>")
    body.append(f"<section><h2>Final checkpoint</h2>{_html_table(result)}</section>")
    if fig is None:
        body.append(
            '<p class="note">Plots need matplotlib: <code>pip install "datasel[report]"</code>.</p>'
        )
    else:
        for metric, label in METRICS.items():
            body.append(f"<section><h2>{label}</h2>")
            body.append(_img(png(_bars(fig, result, metric, label)), "mean ± spread over seeds"))
            body.append(_img(png(_curves(fig, result, metric, label)), "mean over seeds; band: min to max"))  # fmt: skip
            body.append("</section>")
    page = PAGE.format(title="datasel eval", css=CSS, body="\n".join(body))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _settings_line(result: dict) -> str:
    st = result["settings"]
    return (
        f"model {st['model']['name']} ({result['runs'][0]['parameters']:,} parameters), "
        f"{st['tokens']:,} training tokens per arm, {st['seeds']} seed(s), "
        f"device {st['recipe']['device']}; reference arm: {result['reference']}"
    )


def _img(png: str, caption: str) -> str:
    return (
        f'<figure><img src="data:image/png;base64,{png}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _html_table(result: dict) -> str:
    t = table(result)
    head = "".join(f"<th>{html.escape(str(c.header))}</th>" for c in t.columns)
    rows = []
    for i in range(t.row_count):
        cells = "".join(f"<td class='num'>{html.escape(str(c._cells[i]))}</td>" for c in t.columns)
        rows.append(f"<tr>{cells}</tr>")
    return (
        f"<p>{html.escape(str(t.title))}</p><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table><p class='muted'>{html.escape(str(t.caption))}</p>"
    )


def _bars(figure, result: dict, metric: str, label: str):
    import numpy as np

    arms, sets = list(result["summary"]), list(result["eval_sets"])
    fig = figure(3.2)
    ax = fig.add_subplot()
    width = 0.8 / len(arms)
    for k, arm in enumerate(arms):
        st = [result["summary"][arm][s][metric] for s in sets]
        x = np.arange(len(sets)) + (k - (len(arms) - 1) / 2) * width
        err = [v["spread"] or 0.0 for v in st]
        ax.bar(x, [v["mean"] for v in st], width, yerr=err, capsize=3, label=arm)
    lows = [v for a in arms for s in sets for v in result["summary"][a][s][metric]["values"]]
    highs = lows
    pad = (max(highs) - min(lows)) * 0.5 or 0.05
    ax.set_ylim(min(lows) - pad, max(highs) + pad)
    ax.set_xticks(range(len(sets)), sets)
    ax.set_ylabel(label)
    ax.set_title(
        f"held-out {label} at the last checkpoint (lower is better)", fontsize=10, loc="left"
    )
    ax.legend(fontsize=8, frameon=False, ncols=min(4, len(arms)))
    return fig


def _curves(figure, result: dict, metric: str, label: str):
    import numpy as np

    sets = list(result["eval_sets"])
    fig = figure(3.0)
    axes = fig.subplots(1, len(sets), squeeze=False)[0]
    for ax, s in zip(axes, sets, strict=True):
        for arm in result["summary"]:
            runs = [r for r in result["runs"] if r["arm"] == arm]
            x = [c["tokens"] for c in runs[0]["curve"]]
            y = np.array([[c["eval"][s][metric] for c in r["curve"]] for r in runs])
            (line,) = ax.plot(x, y.mean(0), marker="o", markersize=3, label=arm)
            ax.fill_between(x, y.min(0), y.max(0), color=line.get_color(), alpha=0.2)
        ax.set_title(s, fontsize=10, loc="left")
        ax.set_xlabel("training tokens")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8, frameon=False)
    return fig
