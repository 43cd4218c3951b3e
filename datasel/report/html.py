"""`datasel report`: one self-contained HTML page (PNG plots inline) about a run or one step.

What it shows, from the step folders' manifests and a few narrow columns (see `read.py`):
    funnel      rows in / kept / removed by reason for every step (plot and table)
    per step    parameters and statistics; a histogram of each numeric column the step added and
                of each column its selection cut, with the cut-offs its manifest records; group
                sizes vs picks and quotas; KL before/after
    examples    a few kept rows and a few removed rows per reason, text cut to 300 characters
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from datasel.report import plots
from datasel.report.read import (
    Step,
    before_after,
    change,
    find_steps,
    flatten,
    is_number,
    pct,
)
from datasel.report.summary import headline, no_text, skipped

TEXT_CHARS = 300
TEXT_LINES = 10


def build_report(path: str | os.PathLike, *, out: Path | None = None, examples: int = 3) -> Path:
    """Write `report.html` about the run (or single step) at `path` and return its path.

    Parameters
    ----------
    path : a pipeline output folder (step folders with `_manifest.json`) or one step folder.
    out : folder to write `report.html` into (default `path`), or a file name ending in `.html`.
    examples : kept rows, and removed rows per reason, shown for each step.

    Examples
    --------
    >>> import datasel
    >>> from datasel.report import build_report
    >>> _ = datasel.Pipeline([datasel.Dedup()]).run(datasel.SAMPLE, tmp / "run", quiet=True)
    >>> build_report(tmp / "run").name
    'report.html'
    """
    path = Path(path)
    steps = find_steps(path)
    plt = plots.plotter()
    colors = _reason_colors(steps)
    body = [_header(path, steps, plt is None), _funnel_section(steps, plt, colors)]
    cut_later: dict[str, str] = {}  # column -> the next step that cuts it (and draws it there)
    sections = []
    for s in reversed(steps):
        sections.append(_step_section(s, plt, colors, examples, cut_later))
        cut_later |= {col: s.name for col, cuts in s.cutoffs.items() if cuts}
    body += reversed(sections)
    page = PAGE.format(title=html.escape(f"datasel report: {path}"), css=CSS, body="\n".join(body))
    out = Path(out) if out is not None else path
    target = out if out.suffix == ".html" else out / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, target)
    return target


# ---------------------------------------------------------------- sections


def _header(path: Path, steps: list[Step], no_plots: bool) -> str:
    first, last = steps[0].manifest, steps[-1].manifest
    seconds = sum(s.manifest.get("seconds", 0) for s in steps)
    nav = " · ".join(f'<a href="#{_anchor(s.name)}">{html.escape(s.name)}</a>' for s in steps)
    note = (
        '<p class="note">Plots need matplotlib: <code>pip install "datasel[report]"</code>.</p>'
        if no_plots
        else ""
    )
    return (
        f"<header><h1>datasel report</h1><p class=path>{html.escape(str(path))}</p>"
        f"<p class=lead><b>{first['rows_in']:,}</b> rows in → <b>{last['kept']:,}</b> kept "
        f"({pct(last['kept'], first['rows_in'])}) after {len(steps)} step(s) in {seconds:,.1f} s"
        f" · datasel {html.escape(str(last.get('version', '?')))}"
        f" · finished {html.escape(str(last.get('finished_at', '?')))}</p>"
        f'<nav><a href="#funnel">funnel</a> · {nav}</nav>{note}</header>'
    )


def _funnel_section(steps: list[Step], plt, colors: dict[str, str]) -> str:
    rows = []
    for s in steps:
        m = s.manifest
        removed = s.reasons
        reasons = "".join(
            f'<div><span class=swatch style="background:{colors.get(r, "#999")}"></span>'
            f"{html.escape(r)}: {n:,} ({pct(n, m['rows_in'])})</div>"
            for r, n in removed.items()
        ) + "".join(f"<div>{html.escape(line)}</div>" for line in skipped(m))
        rows.append(
            f'<tr><td><a href="#{_anchor(s.name)}">{html.escape(s.name)}</a></td>'
            f"<td class=num>{s.rows_in_text}</td><td class=num>{m['kept']:,}</td>"
            f"<td class=num>{pct(m['kept'], m['rows_in'])}</td><td>{reasons or '–'}</td>"
            f"<td class=num>{m.get('seconds', 0):,.1f}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>step</th><th class=num>rows in</th><th class=num>kept</th>"
        "<th class=num>kept %</th><th>removed by reason</th><th class=num>seconds</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )
    img = _img(plots.funnel(plt, steps, colors), "funnel: rows kept and removed by reason per step")
    return f'<section id="funnel"><h2>Funnel</h2>{img}{table}</section>'


def _step_section(s: Step, plt, colors: dict, examples: int, cut_later: dict[str, str]) -> str:
    m = s.manifest
    added = s.added
    parts = [
        f'<section id="{_anchor(s.name)}"><h2>{html.escape(s.name)} '
        f"<small>stage {html.escape(str(m.get('stage', '?')))}</small></h2>",
        f"<p>{s.rows_in_text} rows in → {m['kept']:,} kept ({pct(m['kept'], m['rows_in'])}), "
        f"{m.get('removed_total', m['rows_in'] - m['kept']):,} removed, "
        + "".join(f"{html.escape(line)}, " for line in skipped(m))
        + f"{m.get('shards', len(s.kept))} shard(s), {m.get('seconds', 0):,.1f} s"
        + (f"; without text: {no_text(m)}" if no_text(m) else "")
        + (f"; <b>{html.escape(headline(m))}</b>" if headline(m) else "")
        + (
            f"; adds columns {', '.join('<code>' + html.escape(f.name) + '</code>' for f in added)}"
            if added
            else ""
        )
        + "</p>"
        + "".join(f"<p class=note>warning: {html.escape(w)}</p>" for w in m.get("warnings", [])),
        '<div class="cols">',
        "<div><h3>Parameters</h3>" + _kv_table(m.get("params") or {}) + "</div>",
        "<div><h3>Statistics</h3>" + _kv_table(flatten(m.get("stats") or {})) + "</div>",
        "</div>",
    ]
    # a histogram of each numeric column the step added and of each it cut, but of a column
    # a later step cuts: that step draws it, with its cut-offs
    numeric = [f.name for f in added if is_number(f)]
    cut = [col for col, cuts in s.cutoffs.items() if cuts and col in s.fields]
    columns = [c for c in dict.fromkeys(numeric + cut) if c not in s.quotas]
    elsewhere = [c for c in columns if c in cut_later and c not in cut]
    figures = [_histogram(plt, s, col) for col in columns if col not in elsewhere]
    figures += [_group_plot(plt, s, col) for col in s.quotas if col in s.fields]
    kl = [(k, b, a) for k, b, a in before_after(flatten(m.get("stats") or {})) if "kl" in k]
    if kl:
        text = "; ".join(f"{html.escape(k)}: {b:.4g} → {a:.4g} ({change(b, a)})" for k, b, a in kl)
        alt = "KL divergence to the target before and after"
        figures.append(_img(plots.kl(plt, kl), alt, text))
    if elsewhere:
        later = dict.fromkeys(cut_later[c] for c in elsewhere)
        figures.append(
            "<p class=muted>histograms of "
            + ", ".join(f"<code>{html.escape(c)}</code>" for c in elsewhere)
            + ": under "
            + ", ".join(f'<a href="#{_anchor(n)}">{html.escape(n)}</a>' for n in later)
            + ", with the cut-offs there</p>"
        )
    if figures:
        parts.append("<h3>Plots</h3>" + "".join(figures))
    if examples > 0:
        parts.append(_examples(s, examples, added, colors))
    parts.append("</section>")
    return "\n".join(parts)


def _histogram(plt, s: Step, col: str) -> str:
    """The kept and removed values of `col`, with the cut-offs the step's manifest records."""
    (kept, n_kept), (gone, n_gone) = s.values(col)
    cuts = sorted(s.cutoffs.get(col, []))[:6]
    alt = f"{col} histogram; thresholds: {', '.join(f'{v:g}' for v, _ in cuts) or 'none'}"
    note = _sampled_note(len(kept) + len(gone), n_kept + n_gone)
    return _img(plots.histogram(plt, col, (kept, n_kept), (gone, n_gone), cuts), alt, note)


def _group_plot(plt, s: Step, col: str) -> str:
    """Rows per value of a group column (e.g. `cluster`), picked from each, and the quota the
    step's selection allotted each."""
    (kept, n_kept), (gone, n_gone) = s.groups(col)
    # each sampled row stands for n/len rows of its side (kept and removed are sampled apart)
    w_kept, w_gone = n_kept / max(1, len(kept)), n_gone / max(1, len(gone))
    weight = np.r_[np.full(len(kept), w_kept), np.full(len(gone), w_gone)]
    picked = np.r_[np.full(len(kept), w_kept), np.zeros(len(gone))]
    ids = pa.chunked_array([*kept.chunks, *gone.chunks], kept.type if len(kept) else gone.type)
    counts = (
        pa.table({"group": ids, "size": weight, "picked": picked})
        .group_by("group")
        .aggregate([("size", "sum"), ("picked", "sum")])
        .sort_by([("size_sum", "descending")])
    )
    counts = counts.filter(counts["group"].is_valid())  # rows set aside before grouping
    size, pick = counts["size_sum"].to_numpy(), counts["picked_sum"].to_numpy()
    ids = counts["group"].to_pylist()
    quota = np.array([s.quotas[col].get(str(i), 0) for i in ids])
    note = (
        f"{len(size):,} {col}s; largest {size[0]:,.0f} rows, smallest {size[-1]:,.0f}; "
        f"picked {pick.sum():,.0f} rows; quotas {quota.sum():,}"
        if len(size)
        else f"no {col} ids"
    ) + _sampled_note(len(weight), n_kept + n_gone, prefix="; ")
    return _img(plots.clusters(plt, size, pick, ids, quota, col), f"{col} sizes and picks", note)


def _examples(s: Step, k: int, added: list[pa.Field], colors: dict) -> str:
    text = s.text_column
    extra = [f.name for f in added if f.name != text and not pa.types.is_nested(f.type)][:6]
    out = [
        f"<h3>Examples</h3><h4>kept <small>({_rows(s.manifest['kept'])}; first {min(k, s.manifest['kept'])})</small></h4>"
    ]
    kept = s.first_rows(k, ["id", text, *extra])
    out.append(
        _rows_html(kept, text, plots.KEPT_COLOR) if kept else "<p class=muted>no rows kept</p>"
    )
    groups = s.reasons
    found = s.removed_examples(k, ["id", text, "reason", *extra])
    for group, n in groups.items():
        out.append(
            f'<h4><span class=swatch style="background:{colors.get(group, "#999")}"></span>'
            f"removed: {html.escape(group)} <small>({_rows(n)}; showing {min(k, n)})</small></h4>"
        )
        rows = found.get(group) or []
        color = colors.get(group, "#999")
        out.append(_rows_html(rows, text, color) if rows else "<p class=muted>not found</p>")
    return "\n".join(out)


def _rows_html(rows: list[dict], text: str, color: str) -> str:
    cards = []
    for row in rows:
        meta = " · ".join(
            f"<b>{html.escape(k)}</b> {html.escape(_short(v, 80))}"
            for k, v in row.items()
            if k != text
        )
        body = row.get(text)
        body = "" if body is None else str(body)
        cut = "\n".join(body[:TEXT_CHARS].split("\n")[:TEXT_LINES])
        shown = html.escape(cut)
        if len(cut) < len(body):
            shown += f"<span class=muted>… ({len(body):,} characters)</span>"
        cards.append(
            f'<div class=ex style="border-color:{color}"><div class=meta>{meta}</div>'
            f"<pre>{shown}</pre></div>"
        )
    return "".join(cards)


def _reason_colors(steps: list[Step]) -> dict[str, str]:
    colors: dict[str, str] = {}
    for s in steps:
        for r in s.reasons:
            colors.setdefault(r, plots.REASON_COLORS[len(colors) % len(plots.REASON_COLORS)])
    return colors


def _img(png: str | None, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    if png is None:
        return f"<figure><p class=muted>[plot: {html.escape(alt)}]</p>{cap}</figure>"
    width = round(plots.FIG_WIDTH * 100)
    return (
        f'<figure><img src="data:image/png;base64,{png}" width="{width}" '
        f'alt="{html.escape(alt)}">{cap}</figure>'
    )


def _kv_table(d: dict) -> str:
    if not d:
        return "<p class=muted>none</p>"
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_short(v, 200))}</td></tr>"
        for k, v in d.items()
    )
    return f"<table class=kv>{rows}</table>"


def _short(v, width: int) -> str:
    if isinstance(v, float):
        s = f"{v:.6g}"
    elif isinstance(v, int) and not isinstance(v, bool):
        s = f"{v:,}"
    elif isinstance(v, str):
        s = v
    else:
        s = json.dumps(v, default=str)
    return s if len(s) <= width else s[: width - 1] + "…"


def _rows(n: int) -> str:
    return f"{n:,} row" + ("" if n == 1 else "s")


def _sampled_note(read: int, total: int, prefix: str = "") -> str:
    return (
        f"{prefix}from {read:,} of {total:,} rows (row groups spread over the shards)"
        if read < total
        else ""
    )


def _anchor(name: str) -> str:
    return "step-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f6f8;color:#1f2328;
 font:14px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"DejaVu Sans",sans-serif}
main{max-width:1120px;margin:0 auto;padding:20px 24px 60px}
header h1{margin:0 0 2px;font-size:24px}
.path{margin:0;color:#57606a;font-family:ui-monospace,Menlo,Consolas,"DejaVu Sans Mono",monospace}
.lead{font-size:15px;margin:8px 0}
nav a{color:#0969da;text-decoration:none} nav{color:#8c959f}
section{background:#fff;border:1px solid #d8dee4;border-radius:8px;padding:14px 20px 18px;
 margin:16px 0}
h2{margin:2px 0 8px;font-size:19px} h2 small{color:#57606a;font-weight:normal;font-size:13px}
h3{font-size:15px;margin:16px 0 6px;color:#24292f} h4{font-size:13px;margin:12px 0 4px}
h4 small{color:#57606a;font-weight:normal}
figure{margin:6px 0 10px} figure img{max-width:100%;height:auto;display:block}
figcaption{color:#57606a;font-size:12px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
thead th{border-bottom:2px solid #d0d7de;background:#f6f8fa}
.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv th{font-weight:600;color:#24292f;white-space:nowrap}
table.kv td{font-family:ui-monospace,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:12px;
 word-break:break-all}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:20px}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.ex{border-left:4px solid #999;padding:2px 0 2px 10px;margin:6px 0 10px}
.ex .meta{font-size:12px;color:#57606a}
.ex pre{white-space:pre-wrap;word-break:break-word;margin:3px 0 0;background:#f6f8fa;
 padding:8px 10px;border-radius:6px;
 font:12px/1.45 ui-monospace,Menlo,Consolas,"DejaVu Sans Mono",monospace}
.muted{color:#8c959f} .note{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;
 border-radius:6px}
code{font-size:12px;background:#eff1f3;padding:1px 4px;border-radius:4px}
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body><main>
{body}
</main></body></html>
"""
