"""`datasel report`: one self-contained HTML page (PNG plots inline) about a run or one step.

What it shows, read from the step folders' manifests and a few narrow columns:
    funnel      rows in / kept / removed by reason for every step (plot and table)
    per step    parameters and statistics; histograms of the score columns the step added, with
                the thresholds found in its parameters; cluster sizes vs picks; KL before/after
    examples    a few kept rows and a few removed rows per reason, text cut to 300 characters

Cost stays small on a big run: scores are read one column at a time from row groups spread over
the shards (at most `MAX_VALUES` values per column), and text only for the example rows.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.table import Table

from datasel.errors import DataselError
from datasel.step_folder import MANIFEST, StepFolder

SCORE_SUFFIXES = ("_bpb", "_score", "_logw", "_grad")
SCORE_NAMES = ("dedup_jaccard", "pick_logprob")
THRESHOLD_KEYS = {"threshold", "min", "max", "cutoff", "lo", "hi", "above", "below", "value"}
MAX_VALUES = 200_000  # per column and side (kept / removed): 1.6 MB of float64
MAX_CLUSTER_ROWS = 2_000_000  # cluster ids read per side to count cluster sizes
MAX_REASONS = 10  # more distinct reasons are grouped by their part before "="
TEXT_CHARS = 300
TEXT_LINES = 10
KEPT_COLOR = "#4c78a8"
REMOVED_COLOR = "#e45756"
REASON_COLORS = ["#f58518", "#b279a2", "#9d755d", "#eeca3b", "#72b7b2", "#ff9da6", "#e45756"]
FIG_WIDTH, DPI = 10.3, 144  # inches; shown at 100 px per inch (1030 px), sharp on HiDPI
RULE = re.compile(
    r"([A-Za-z_]\w*)\s*(<=|>=|==|<|>|=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
)


@dataclass
class Step:
    """One finished step folder: its manifest and its shards."""

    dir: Path
    manifest: dict
    kept: list[Path] = field(init=False)
    removed: list[Path] = field(init=False)
    previous: Step | None = None  # the step whose output this one read, in a pipeline

    def __post_init__(self):
        self.kept = StepFolder(self.dir).shards()
        self.removed = StepFolder(self.dir).removed_shards()

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def rows_in(self) -> int:
        """Rows into the step: the previous step's rows out when it read them (a step may count
        other units: pick counts candidates, several to a row), else its own count."""
        return self.previous.manifest["kept"] if self.previous else self.manifest["rows_in"]

    @property
    def rows_in_text(self) -> str:
        counted = self.manifest["rows_in"]
        if counted == self.rows_in:
            return f"{counted:,}"
        unit = "candidates" if self.manifest.get("stage") == "pick" else "counted by the step"
        return f"{self.rows_in:,} ({counted:,} {unit})"

    @property
    def text_column(self) -> str:
        return (self.manifest.get("columns") or {}).get("text", "text")

    @property
    def removed_counts(self) -> dict[str, int]:
        return self.manifest.get("removed") or {}

    @cached_property
    def reasons(self) -> dict[str, int]:
        """Removed rows per reason group, most first (see `_grouper`)."""
        return _grouped(self.removed_counts)


def find_steps(path: str | os.PathLike) -> list[Step]:
    """The finished steps under `path`: the folder itself if it holds a manifest, else its
    sub-folders that do (`01-dedup`, `02-filter`, ...), in name order."""
    path = Path(path)
    if StepFolder(path).finished():
        dirs = [path]
    elif path.is_dir():
        dirs = sorted(p for p in path.iterdir() if StepFolder(p).finished())
    else:
        raise DataselError(f"{path}: no such folder")
    if not dirs:
        raise DataselError(
            f"{path}: no {MANIFEST} here or in its sub-folders; is it a datasel output?"
        )
    steps = [Step(d, StepFolder(d).read_manifest()) for d in dirs]
    for before, step in zip(steps, steps[1:], strict=False):
        inputs = [Path(f["path"]).parent for f in step.manifest.get("inputs") or []]
        if inputs and all(p == before.dir.resolve() for p in inputs):
            step.previous = before
    return steps


def summary_table(path: str | os.PathLike) -> Table:
    """The funnel as a rich table: step, rows in, kept, removed by reason, seconds."""
    steps = find_steps(path)
    table = Table(title=f"datasel run: {path}", title_justify="left")
    blanks = any(_no_text(s.manifest) for s in steps)
    names = ("step", "rows in", "kept", "kept %", "removed by reason")
    for name in (*names, *(("no text",) if blanks else ()), "seconds"):
        table.add_column(
            name,
            justify="left" if name in ("step", "removed by reason") else "right",
            overflow="fold",  # a narrow terminal wraps a reason, never cuts it
            no_wrap=name != "removed by reason",  # the reasons take what the terminal lacks
        )
    for s in steps:
        m = s.manifest
        removed = s.reasons
        table.add_row(
            s.name,
            s.rows_in_text,
            f"{m['kept']:,}",
            _pct(m["kept"], m["rows_in"]),
            "\n".join([f"{r}: {n:,}" for r, n in removed.items()] + _skipped(m)) or "-",
            *((_no_text(m) or "-",) if blanks else ()),
            f"{m.get('seconds', 0):.1f}",
        )
    if len(steps) > 1:
        first, last = steps[0].manifest, steps[-1].manifest
        table.add_row(
            "[bold]total[/]",
            f"{first['rows_in']:,}",
            f"[bold]{last['kept']:,}[/]",
            _pct(last["kept"], first["rows_in"]),
            f"{first['rows_in'] - last['kept']:,}",
            *(("",) if blanks else ()),
            f"{sum(s.manifest.get('seconds', 0) for s in steps):.1f}",
        )
    return table


def headline(manifest: dict) -> str:
    """What a step did, in one line, from its manifest's statistics ("" when nothing to say).

    >>> headline({"stage": "shift-dsir", "stats": {"kl_before": 0.36, "kl_after": 0.185}})
    'KL to the target 0.36 → 0.185'
    """
    st = manifest.get("stats") or {}

    def pair(before: str, after: str) -> str:
        return f"{st[before]:.4g} → {st[after]:.4g}"

    stage = manifest.get("stage")
    if stage == "dedup" and "clusters" in st:
        n = st["clusters"]
        return f"{n:,} cluster{'' if n == 1 else 's'} of duplicates"
    if stage == "shift-dsir" and "kl_before" in st:
        return "KL to the target " + pair("kl_before", "kl_after")
    if stage == "shift-gotd" and "ot_before" in st:
        return "OT cost to the target " + pair("ot_before", "ot_after")
    if stage == "diversify" and st.get("cluster_entropy_after") is not None:
        return (
            f"cluster entropy {pair('cluster_entropy_before', 'cluster_entropy_after')} nats "
            f"(max {st['cluster_entropy_max']:.4g}, {st['clusters_picked']:,} of "
            f"{st['nonempty_clusters']:,} clusters picked from)"
        )
    if stage == "pick" and "candidates" in st:
        return (
            f"picked {st['picked']:,} of {st['candidates']:,} candidates "
            f"for {st['instructions']:,} instructions"
        )
    cuts = [
        f"{k.removesuffix(':threshold')} ≥ {v:.4g}"
        for k, v in st.items()
        if k.endswith(":threshold")
    ]
    return "cut-offs: " + ", ".join(cuts) if stage == "filter" and cuts else ""


def headlines(path: str | os.PathLike) -> list[str]:
    """`step: headline` for each step of the run at `path` that has one."""
    return [f"{s.name}: {h}" for s in find_steps(path) if (h := headline(s.manifest))]


def _skipped(m: dict) -> list[str]:
    """Input lines skipped as bad rows (--on-bad-rows skip), by reason."""
    return [f"skipped {r}: {n:,}" for r, n in (m.get("skipped") or {}).items()]


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
    plt = _plotter()
    colors = _reason_colors(steps)
    body = [_header(path, steps, plt is None), _funnel_section(steps, plt, colors)]
    prev_schema = None
    for s in steps:
        body.append(_step_section(s, plt, colors, examples, prev_schema))
        prev_schema = _schema(s.kept)
    page = _PAGE.format(
        title=html.escape(f"datasel report: {path}"), css=_CSS, body="\n".join(body)
    )
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
        f"({_pct(last['kept'], first['rows_in'])}) after {len(steps)} step(s) in {seconds:,.1f} s"
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
            f"{html.escape(r)}: {n:,} ({_pct(n, m['rows_in'])})</div>"
            for r, n in removed.items()
        ) + "".join(f"<div>{html.escape(line)}</div>" for line in _skipped(m))
        rows.append(
            f'<tr><td><a href="#{_anchor(s.name)}">{html.escape(s.name)}</a></td>'
            f"<td class=num>{s.rows_in_text}</td><td class=num>{m['kept']:,}</td>"
            f"<td class=num>{_pct(m['kept'], m['rows_in'])}</td><td>{reasons or '–'}</td>"
            f"<td class=num>{m.get('seconds', 0):,.1f}</td></tr>"
        )
    table = (
        "<table><thead><tr><th>step</th><th class=num>rows in</th><th class=num>kept</th>"
        "<th class=num>kept %</th><th>removed by reason</th><th class=num>seconds</th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )
    img = _img(_plot_funnel(plt, steps, colors), "funnel: rows kept and removed by reason per step")
    return f'<section id="funnel"><h2>Funnel</h2>{img}{table}</section>'


def _no_text(manifest: dict) -> str:
    """The null and empty (or whitespace-only) texts a step read, e.g. "3 null, 12 empty"."""
    texts = manifest.get("texts") or {}
    return ", ".join(f"{texts[k]:,} {k}" for k in ("null", "empty") if texts.get(k))


def _step_section(s: Step, plt, colors: dict, examples: int, prev_schema: pa.Schema | None) -> str:
    m = s.manifest
    kept_schema, removed_schema = _schema(s.kept), _schema(s.removed)
    if prev_schema is None:
        prev_schema = _input_schema(m)
    added = _added_columns(kept_schema, removed_schema, prev_schema)
    parts = [
        f'<section id="{_anchor(s.name)}"><h2>{html.escape(s.name)} '
        f"<small>stage {html.escape(str(m.get('stage', '?')))}</small></h2>",
        f"<p>{s.rows_in_text} rows in → {m['kept']:,} kept ({_pct(m['kept'], m['rows_in'])}), "
        f"{m.get('removed_total', m['rows_in'] - m['kept']):,} removed, "
        + "".join(f"{html.escape(line)}, " for line in _skipped(m))
        + f"{m.get('shards', len(s.kept))} shard(s), {m.get('seconds', 0):,.1f} s"
        + (f"; without text: {_no_text(m)}" if _no_text(m) else "")
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
        "<div><h3>Statistics</h3>" + _kv_table(_flatten(m.get("stats") or {})) + "</div>",
        "</div>",
    ]
    plots = []
    scores = [f.name for f in added if _is_score(f)]
    scores += [c for c in _rule_columns(m) if c in kept_schema.names and c not in scores]
    for col in scores:
        kept, n_kept = _sample_column(s.kept, col, MAX_VALUES)
        gone, n_gone = _sample_column(s.removed, col, MAX_VALUES)
        cuts = _thresholds(col, m, only_score=len(scores) == 1)
        alt = f"{col} histogram; thresholds: {', '.join(f'{v:g}' for v, _ in cuts) or 'none'}"
        note = _sampled_note(len(kept) + len(gone), n_kept + n_gone)
        png = _plot_hist(plt, col, (kept, n_kept), (gone, n_gone), cuts)
        plots.append(_img(png, alt, note))
    if any(f.name == "cluster" for f in added):
        plots.append(_cluster_plot(plt, s))
    kl = [(k, b, a) for k, b, a in _before_after(_flatten(m.get("stats") or {})) if "kl" in k]
    if kl:
        text = "; ".join(f"{html.escape(k)}: {b:.4g} → {a:.4g} ({_change(b, a)})" for k, b, a in kl)
        plots.append(_img(_plot_kl(plt, kl), "KL divergence to the target before and after", text))
    if plots:
        parts.append("<h3>Plots</h3>" + "".join(plots))
    if examples > 0:
        parts.append(_examples(s, examples, added, colors))
    parts.append("</section>")
    return "\n".join(parts)


def _cluster_plot(plt, s: Step) -> str:
    kept, n_kept = _sample_column(s.kept, "cluster", MAX_CLUSTER_ROWS, numeric=False)
    gone, n_gone = _sample_column(s.removed, "cluster", MAX_CLUSTER_ROWS, numeric=False)
    # each sampled row stands for n/len rows of its side (kept and removed are sampled apart)
    w_kept, w_gone = n_kept / max(1, len(kept)), n_gone / max(1, len(gone))
    weight = np.r_[np.full(len(kept), w_kept), np.full(len(gone), w_gone)]
    picked = np.r_[np.full(len(kept), w_kept), np.zeros(len(gone))]
    ids = pa.chunked_array([*kept.chunks, *gone.chunks], kept.type if len(kept) else gone.type)
    counts = (
        pa.table({"cluster": ids, "size": weight, "picked": picked})
        .group_by("cluster")
        .aggregate([("size", "sum"), ("picked", "sum")])
        .sort_by([("size_sum", "descending")])
    )
    size, pick = counts["size_sum"].to_numpy(), counts["picked_sum"].to_numpy()
    note = (
        f"{len(size):,} clusters; largest {size[0]:,.0f} rows, smallest {size[-1]:,.0f}; "
        f"picked {pick.sum():,.0f} rows"
        if len(size)
        else "no cluster ids"
    ) + _sampled_note(len(weight), n_kept + n_gone, prefix="; ")
    ids = counts["cluster"].to_pylist()
    return _img(_plot_clusters(plt, size, pick, ids), "cluster sizes and picks", note)


def _examples(s: Step, k: int, added: list[pa.Field], colors: dict) -> str:
    text = s.text_column
    extra = [f.name for f in added if f.name != text and not pa.types.is_nested(f.type)][:6]
    out = [
        f"<h3>Examples</h3><h4>kept <small>({_rows(s.manifest['kept'])}; first {min(k, s.manifest['kept'])})</small></h4>"
    ]
    kept = _first_rows(s.kept, k, ["id", text, *extra])
    out.append(_rows_html(kept, text, KEPT_COLOR) if kept else "<p class=muted>no rows kept</p>")
    groups = s.reasons
    found = _removed_examples(s, k, list(groups), ["id", text, "reason", *extra])
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


# ---------------------------------------------------------------- reading, narrowly


def _schema(files: list[Path]) -> pa.Schema | None:
    for f in files:
        try:
            return pq.read_schema(f)
        except (OSError, pa.ArrowException):
            continue
    return None


def _input_schema(manifest: dict) -> pa.Schema | None:
    for item in manifest.get("inputs") or []:
        p = Path(item.get("path", ""))
        if p.suffix == ".parquet" and p.is_file():
            return _schema([p])
    return None


def _added_columns(kept: pa.Schema | None, removed: pa.Schema | None, before: pa.Schema | None):
    """Columns the step added: those its input lacked; with the input unknown, the columns named
    by convention (scores, `cluster`) and those only its removed rows carry (`duplicate_of`)."""
    kept_names = set(kept.names) if kept is not None else set()
    fields = {f.name: f for schema in (kept, removed) if schema is not None for f in schema}
    fields.pop("reason", None)
    if before is not None:
        return [f for name, f in fields.items() if name not in set(before.names)]
    return [f for n, f in fields.items() if _is_score(f) or n == "cluster" or n not in kept_names]


def _rule_columns(manifest: dict) -> list[str]:
    """The columns a filter step's rules read (COLUMN=VALUE), in rule order."""
    if manifest.get("stage") != "filter":
        return []
    rules = [r for v in (manifest.get("params") or {}).values() if isinstance(v, list) for r in v]
    return list(dict.fromkeys(str(r).partition("=")[0].strip() for r in rules))


def _is_score(f: pa.Field) -> bool:
    numeric = pa.types.is_floating(f.type) or pa.types.is_integer(f.type)
    return numeric and (f.name.endswith(SCORE_SUFFIXES) or f.name in SCORE_NAMES)


def _sample_column(files: list[Path], column: str, cap: int, numeric: bool = True):
    """Values of one column from row groups spread evenly over the shards (all of them when
    they hold at most `cap` rows), as float64 numpy (`numeric`) or an Arrow chunked array;
    returned with the number of rows the shards hold."""
    groups = []
    for f in files:
        meta = pq.read_metadata(f)
        if column in meta.schema.to_arrow_schema().names:
            groups += [(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    total = sum(n for *_, n in groups)
    if total > cap:
        k = max(1, math.ceil(len(groups) * cap / total))
        picks = np.unique(np.linspace(0, len(groups) - 1, k).round().astype(int))
        groups = [groups[i] for i in picks]
    parts, pf, path = [], None, None
    for f, g, _ in groups:
        if path != f:  # one file open at a time
            pf, path = pq.ParquetFile(f), f
        parts += pf.read_row_group(g, columns=[column]).column(0).chunks
    if numeric:
        values = [p.cast(pa.float64()).to_numpy(zero_copy_only=False) for p in parts]
        return (np.concatenate(values) if values else np.zeros(0)), total
    return pa.chunked_array(parts, parts[0].type if parts else pa.null()), total


def _first_rows(files: list[Path], k: int, columns: list[str]) -> list[dict]:
    rows: list[dict] = []
    for f in files:
        pf = pq.ParquetFile(f)
        cols = [c for c in dict.fromkeys(columns) if c in pf.schema_arrow.names]
        for batch in pf.iter_batches(batch_size=k, columns=cols):
            rows += batch.to_pylist()[: k - len(rows)]
            break
        if len(rows) >= k:
            break
    return rows


def _removed_examples(s: Step, k: int, groups: list[str], columns: list[str]) -> dict:
    """The first `k` removed rows of each reason group: the `reason` column is scanned alone,
    then only the row groups holding the chosen rows are read with their text."""
    group_of = _grouper(s.removed_counts)
    want = {g: k for g in groups}
    chosen: dict[str, list[dict]] = {g: [] for g in groups}
    for f in s.removed:
        if not any(want.values()):
            break
        pf = pq.ParquetFile(f)
        if "reason" not in pf.schema_arrow.names:
            continue
        picks: dict[int, list[tuple[int, str]]] = {}  # row group -> (row in it, group)
        for g in range(pf.metadata.num_row_groups):
            if not any(want.values()):
                break
            reasons = pf.read_row_group(g, columns=["reason"]).column(0).to_pylist()
            for i, r in enumerate(reasons):
                grp = group_of(str(r))
                if want.get(grp, 0) > 0:
                    want[grp] -= 1
                    picks.setdefault(g, []).append((i, grp))
        cols = [c for c in dict.fromkeys(columns) if c in pf.schema_arrow.names]
        for g, items in picks.items():
            table = pf.read_row_group(g, columns=cols).take([i for i, _ in items])
            for row, (_, grp) in zip(table.to_pylist(), items, strict=True):
                chosen[grp].append(row)
    return chosen


# ---------------------------------------------------------------- manifest helpers


def _grouper(removed: dict[str, int]):
    """Map a reason to its display group: itself when there are few distinct reasons, else the
    part before "=" (`dedup:near_dup_of=<id>` -> `dedup:near_dup_of`), the rarest as "other"."""
    if len(removed) <= MAX_REASONS:
        return lambda r: r
    cut = Counter()
    for r, n in removed.items():
        cut[r.split("=", 1)[0]] += n
    top = {r for r, _ in cut.most_common(MAX_REASONS - 1)} if len(cut) > MAX_REASONS else set(cut)
    return lambda r: r.split("=", 1)[0] if r.split("=", 1)[0] in top else "other"


def _grouped(removed: dict[str, int]) -> dict[str, int]:
    group_of, out = _grouper(removed), Counter()
    for r, n in removed.items():
        out[group_of(r)] += n
    return dict(out.most_common())


def _reason_colors(steps: list[Step]) -> dict[str, str]:
    colors: dict[str, str] = {}
    for s in steps:
        for r in s.reasons:
            colors.setdefault(r, REASON_COLORS[len(colors) % len(REASON_COLORS)])
    return colors


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and len(v) <= 20:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _before_after(stats: dict) -> list[tuple[str, float, float]]:
    """Numeric pairs like `kl_before` / `kl_after` (or `before_kl` / `after_kl`)."""
    pairs = []
    for key, before in stats.items():
        after = stats.get(key.replace("before", "after", 1))
        if "before" in key and _number(before) is not None and _number(after) is not None:
            name = key.replace("before", "", 1).replace("__", "_").replace("_.", ".").strip("_.")
            pairs.append((name or key, float(before), float(after)))
    return pairs


def _thresholds(column: str, manifest: dict, only_score: bool) -> list[tuple[float, str]]:
    """Cut-offs on `column` named by the step: rules such as "ppl_bpb>1.9" anywhere in the
    parameters or the removal reasons; numbers under a key naming the column; and, when the
    step adds one score column only, its `threshold`/`min`/`max` parameters."""
    found: dict[float, str] = {}

    def walk(obj, keys: tuple[str, ...], in_stats: bool = False) -> None:
        if isinstance(obj, dict):
            names_col = column in obj.values()
            for k, v in obj.items():
                if names_col and _number(v) is not None and str(k) in THRESHOLD_KEYS:
                    found.setdefault(float(v), f"{k} {v:g}")
                else:
                    walk(v, (*keys, str(k)), in_stats)
        elif isinstance(obj, list | tuple):
            for v in obj:
                walk(v, keys, in_stats)
        elif isinstance(obj, str):
            for m in RULE.finditer(obj):
                if m[1] == column:
                    found.setdefault(float(m[3]), m[0].replace(" ", ""))
        elif _number(obj) is not None and keys:
            key = ".".join(keys)
            last = keys[-1]
            cutish = any(w in last for w in ("threshold", "cut", "min", "max"))
            if (column in key and (cutish or not in_stats)) or (
                only_score and not in_stats and last in THRESHOLD_KEYS
            ):
                found.setdefault(float(obj), f"{key} {obj:g}")

    walk(manifest.get("params") or {}, ())
    reasons = [r for r in manifest.get("removed") or {} if column in r]
    walk(reasons[:1000], ())  # reasons like "filter:ppl_bpb>1.9"
    walk(manifest.get("stats") or {}, (), in_stats=True)
    return sorted(found.items())[:6]


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


# ---------------------------------------------------------------- plots (matplotlib, Agg)


def _plotter():
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


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _axes(fig, title: str, grid: str = "y"):
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


def _legend_above(ax) -> None:
    """Legend on the title line, right-aligned, where it never covers the data."""
    ax.legend(loc="lower right", bbox_to_anchor=(1, 1), ncols=2, fontsize=8, frameon=False)


def _plot_funnel(plt, steps: list[Step], colors: dict) -> str | None:
    if plt is None:
        return None
    fig = plt(1.4 + 0.55 * len(steps))
    ax = _axes(fig, "rows kept and removed by reason, per step", grid="x")
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
        label = f"{m['kept']:,} of {s.rows_in_text} kept ({_pct(m['kept'], m['rows_in'])})"
        ax.text(m["rows_in"] + top * 0.01, yi, label, va="center", fontsize=9)
    ax.set_yticks(y, [s.name for s in steps])
    ax.set_xlim(0, top * 1.3)
    ax.set_xlabel("rows")
    longest = max([len(f"removed: {r}") for r in colors] + [4])
    ncols = max(1, min(6, 1 + len(colors), 150 // (longest + 6)))  # ~150 characters a line
    fig.legend(loc="outside lower center", ncols=ncols, fontsize=8, frameon=False)
    return _png(fig)


def _plot_hist(plt, col: str, kept: tuple, gone: tuple, cuts) -> str | None:
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
    ax = _axes(fig, col + (f"  ({'; '.join(notes)})" if notes else ""))
    if finite.size == 0:
        ax.text(0.5, 0.5, "no finite values", ha="center", transform=ax.transAxes)
        return _png(fig)
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
    _legend_above(ax)
    return _png(fig)


def _plot_clusters(plt, size: np.ndarray, pick: np.ndarray, ids: list) -> str | None:
    if plt is None or size.size == 0:
        return None
    fig = plt(3.0)
    ax = _axes(fig, "cluster sizes and rows picked from each")
    x = np.arange(size.size)
    if size.size > 80:  # thousands of bars draw slowly and alias; filled steps read the same
        ax.fill_between(x, size, step="mid", color="#c9d3df", label="cluster size")
        ax.fill_between(x, pick, step="mid", color=KEPT_COLOR, label="picked")
    else:
        ax.bar(x, size, width=0.8, color="#c9d3df", label="cluster size")
        ax.bar(x, pick, width=0.55, color=KEPT_COLOR, label="picked")
    if size.size <= 30:
        ax.set_xticks(x, [str(i) for i in ids], fontsize=8)
        ax.set_xlabel("cluster id, largest first")
    else:
        ax.set_xlabel("clusters, largest first")
    ax.set_ylabel("rows")
    _legend_above(ax)
    return _png(fig)


def _plot_kl(plt, pairs: list[tuple[str, float, float]]) -> str | None:
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
        ax.text(a, yi - 0.18, f" {a:.4g} ({_change(b, a)})", va="center", fontsize=8)
    ax.set_yticks(y, [k for k, _, _ in pairs])
    ax.set_xlim(0, max([*before, *after, 1e-9]) * 1.3)
    ax.set_xlabel("KL divergence (lower is closer to the target)")
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _png(fig)


# ---------------------------------------------------------------- HTML bits


def _img(png: str | None, alt: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    if png is None:
        return f"<figure><p class=muted>[plot: {html.escape(alt)}]</p>{cap}</figure>"
    width = round(FIG_WIDTH * 100)
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


def _pct(n: float, total: float) -> str:
    return f"{100 * n / total:.1f}%" if total else "–"


def _change(before: float, after: float) -> str:
    return f"{100 * (after - before) / before:+.0f}%" if before else f"{after - before:+.3g}"


def _sampled_note(read: int, total: int, prefix: str = "") -> str:
    return (
        f"{prefix}from {read:,} of {total:,} rows (row groups spread over the shards)"
        if read < total
        else ""
    )


def _anchor(name: str) -> str:
    return "step-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


_CSS = """
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

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body><main>
{body}
</main></body></html>
"""
