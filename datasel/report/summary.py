"""What a run did, for the terminal: the funnel as a rich table and one headline per step,
read from the step folders' manifests."""

from __future__ import annotations

import os

from rich.table import Table
from rich.text import Text

from datasel.report.read import find_steps, pct


def summary_table(path: str | os.PathLike) -> Table:
    """The funnel as a rich table: step, rows in, kept, removed by reason, seconds."""
    steps = find_steps(path)
    table = Table(title=f"datasel run: {path}", title_justify="left")
    blanks = any(no_text(s.manifest) for s in steps)
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
            pct(m["kept"], m["rows_in"]),
            # Text, not markup: "filter:top:s=1" would show rich's :top: emoji
            Text("\n".join([f"{r}: {n:,}" for r, n in removed.items()] + skipped(m)) or "-"),
            *((no_text(m) or "-",) if blanks else ()),
            f"{m.get('seconds', 0):.1f}",
        )
    if len(steps) > 1:
        first, last = steps[0].manifest, steps[-1].manifest
        table.add_row(
            "[bold]total[/]",
            f"{first['rows_in']:,}",
            f"[bold]{last['kept']:,}[/]",
            pct(last["kept"], first["rows_in"]),
            f"{first['rows_in'] - last['kept']:,}",
            *(("",) if blanks else ()),
            f"{sum(s.manifest.get('seconds', 0) for s in steps):.1f}",
        )
    return table


def headline(manifest: dict) -> str:
    """What a step did, in one line, from its manifest's statistics ("" when nothing to say).

    >>> headline({"stage": "shift-dsir", "stats": {"kl_before": 0.36, "kl_after": 0.185}})
    'KL to the target 0.36 → 0.185'
    >>> headline({"stage": "shift-dsir", "stats": {"kl_before": 0.36, "kl_after": 0.185,
    ...           "buckets": 30000, "cv_recall": {"10,000": 0.9, "30,000": 0.95}}})
    'KL to the target 0.36 → 0.185; 30,000 buckets (held-out target recall 0.95)'
    """
    st = manifest.get("stats") or {}

    def pair(before: str, after: str) -> str:
        return f"{st[before]:.4g} → {st[after]:.4g}"

    stage = manifest.get("stage")
    if stage == "dedup" and "clusters" in st:
        n = st["clusters"]
        return f"{n:,} cluster{'' if n == 1 else 's'} of duplicates"
    if stage == "shift-dsir" and "kl_before" in st:
        line = "KL to the target " + pair("kl_before", "kl_after")
        if st.get("cv_recall"):
            recall = st["cv_recall"][f"{st['buckets']:,}"]
            line += f"; {st['buckets']:,} buckets (held-out target recall {recall:.3g})"
        return line
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
    cuts = []
    for k, v in st.items():
        if not k.endswith(":threshold"):
            continue
        rule = k.removesuffix(":threshold")
        sign = "≤" if rule.startswith("bottom") else "≥"  # the --bottom rules keep the lowest
        if isinstance(v, dict):  # --within: a cut per group
            within = st.get("within") or {}
            groups = within.get("groups", len(v))
            cuts.append(
                f"{rule} {sign} a cut per {within.get('column', 'group')} ({groups:,} groups)"
            )
        else:
            cuts.append(f"{rule} {sign} {v:.4g}")
    return "cut-offs: " + ", ".join(cuts) if stage == "filter" and cuts else ""


def headlines(path: str | os.PathLike) -> list[str]:
    """`step: headline` for each step of the run at `path` that has one."""
    return [f"{s.name}: {h}" for s in find_steps(path) if (h := headline(s.manifest))]


def skipped(m: dict) -> list[str]:
    """Input lines skipped as bad rows (--on-bad-rows skip), by reason."""
    return [f"skipped {r}: {n:,}" for r, n in (m.get("skipped") or {}).items()]


def no_text(manifest: dict) -> str:
    """The null and empty (or whitespace-only) texts a step read, e.g. "3 null, 12 empty"."""
    texts = manifest.get("texts") or {}
    return ", ".join(f"{texts[k]:,} {k}" for k in ("null", "empty") if texts.get(k))
