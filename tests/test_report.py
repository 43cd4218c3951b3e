import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from rich.console import Console

import datasel
from datasel.report import build_report, find_steps, summary_table

HOSTILE = '<script>alert("x")</script> Tom & Jerry <b>bold</b> ' + "lorem ipsum " * 60
KL_BEFORE, KL_AFTER = 0.8125, 0.3125


def _synthetic_step(prev, dst, rng) -> dict:
    """A hand-made step after dedup: adds `ppl_bpb` and `cluster`, removes ppl_bpb > 1.2 with
    quotas per cluster, and reports a KL drop, written in the engine's layout (shards, _removed/,
    _manifest.json with the facts the engine and a stage record: added columns, cut-offs)."""
    src = sorted(prev.glob("part-*.parquet"))[0]
    table = pq.read_table(src)
    n = table.num_rows
    table = table.append_column("ppl_bpb", pa.array(rng.normal(1.0, 0.15, n)))
    table = table.append_column("cluster", pa.array(rng.integers(0, 12, n) ** 2 % 23, pa.int32()))
    drop = pc.greater(table["ppl_bpb"], 1.2)
    kept, gone = table.filter(pc.invert(drop)), table.filter(drop)
    gone = gone.append_column("reason", pa.array(["filter:ppl_bpb>1.2"] * gone.num_rows))
    (dst / "_removed").mkdir(parents=True)
    pq.write_table(kept, dst / "part-00000.parquet", row_group_size=500)
    pq.write_table(gone, dst / "_removed" / "part-00000.parquet")
    manifest = {
        "stage": "filter",
        "params": {"max": ["ppl_bpb=1.2"], "min": []},
        "columns": {"text": "text", "id": "id"},
        "added_columns": ["ppl_bpb", "cluster"],
        "version": datasel.__version__,
        "inputs": [{"path": str(src), "size": src.stat().st_size, "mtime_ns": 0}],
        "rows_in": n,
        "kept": kept.num_rows,
        "removed_total": gone.num_rows,
        "removed": {"filter:ppl_bpb>1.2": gone.num_rows},
        "shards": 1,
        "seconds": 1.25,
        "stats": {"kl_before": KL_BEFORE, "kl_after": KL_AFTER, "nested": {"a": 1}},
        "cutoffs": {
            "ppl_bpb": [{"value": 1.2, "label": "max 1.2"}],
            "cluster": [{"value": {str(c): 40 for c in range(23)}, "label": "quota"}],
        },
        "finished_at": "2026-01-01T00:00:00Z",
    }
    (dst / "_manifest.json").write_text(json.dumps(manifest))
    return manifest


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Dedup (the real engine) over the sample with a hostile row put first, twice (so one copy
    is kept and one removed as an exact duplicate), then a synthetic scoring step."""
    tmp = tmp_path_factory.mktemp("report")
    rows = pq.read_table(datasel.SAMPLE).to_pylist()
    bad = {**rows[0], "id": "hostile-1", "text": HOSTILE}
    src = tmp / "input.parquet"
    pq.write_table(pa.Table.from_pylist([bad, {**bad, "id": "hostile-2"}, *rows]), src)
    out = tmp / "run"
    manifests = datasel.Pipeline([datasel.Dedup()]).run(src, out, quiet=True)
    manifests.append(_synthetic_step(out / "01-dedup", out / "02-filter", np.random.default_rng(0)))
    report = build_report(out)
    return out, manifests, report, report.read_text()


def _pngs(page: str) -> list[bytes]:
    return [
        base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    ]


def test_report_is_self_contained_with_plots(run):
    out, manifests, report, page = run
    assert report == out / "report.html"
    from PIL import Image

    pngs = _pngs(page)
    assert len(pngs) == 5  # funnel, dedup_jaccard, ppl_bpb, clusters, KL
    for png in pngs:
        assert Image.open(io.BytesIO(png)).size[0] >= 800
    # nothing fetched from elsewhere
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)
    # the funnel table holds every step's numbers
    dedup, filt = manifests
    for m in manifests:
        assert f"{m['rows_in']:,}" in page and f"{m['kept']:,}" in page
    assert dedup["removed"].get("exact", 0) >= 1
    assert "filter:ppl_bpb&gt;1.2" in page


def test_examples_are_escaped_and_cut(run):
    _, manifests, _, page = run
    escaped = (
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; Tom &amp; Jerry &lt;b&gt;bold&lt;/b&gt;"
    )
    assert page.count(escaped) >= 2  # kept in dedup, removed as exact duplicate in dedup
    assert "hostile-1" in page and "hostile-2" in page
    assert f"({len(HOSTILE):,} characters)" in page  # cut to 300 characters
    assert "lorem ipsum " * 30 not in page
    # removed examples come from the _removed shards, with their reason's extra columns
    removed = pq.read_table(run[0] / "01-dedup" / "_removed" / "part-00000.parquet")
    near = [r for r in removed.to_pylist() if r["reason"] == "near"]
    assert near and near[0]["id"] in page and "duplicate_of" in page


def test_thresholds_and_kl(run):
    _, _, _, page = run
    alts = re.findall(r'alt="([^"]*)"', page)
    assert "ppl_bpb histogram; thresholds: 1.2" in alts
    assert "dedup_jaccard histogram; thresholds: 0.8" in alts  # Dedup's threshold parameter
    assert "cluster sizes and picks" in alts
    assert "12 clusters;" in page and "quotas 480" in page  # 40 each, from the manifest
    assert f"kl: {KL_BEFORE:.4g} → {KL_AFTER:.4g} (-62%)" in page
    assert "nested.a" in page  # nested stats are flattened into the table


def test_big_steps_are_sampled_and_reweighted(run, tmp_path, monkeypatch):
    from datasel.report import read as mod

    out, manifests, _, _ = run
    filt = manifests[1]
    monkeypatch.setattr(mod, "MAX_VALUES", 600)  # 02-filter's kept shard has 500-row groups
    monkeypatch.setattr(mod, "MAX_CLUSTER_ROWS", 600)
    page = build_report(out / "02-filter", out=tmp_path).read_text()
    assert re.search(rf"from [\d,]+ of {filt['rows_in']:,} rows", page)
    # sampled cluster counts are weighted back to the true number of kept rows
    assert f"picked {filt['kept']:,} rows" in page


def test_single_step_folder_and_out(run, tmp_path):
    out, manifests, _, _ = run
    report = build_report(out / "02-filter", out=tmp_path / "x", examples=1)
    assert report == tmp_path / "x" / "report.html"
    page = report.read_text()
    assert len(_pngs(page)) == 4 and "01-dedup" not in page
    assert f"{manifests[1]['kept']:,}" in page
    assert build_report(out / "01-dedup", out=tmp_path / "r.html") == tmp_path / "r.html"


def test_without_matplotlib_still_writes_tables(run, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    page = build_report(run[0], out=tmp_path).read_text()
    assert "data:image/png" not in page
    assert "datasel[report]" in page and "&lt;script&gt;" in page
    assert f"{run[1][1]['kept']:,}" in page


def test_summary_table(run):
    out, manifests, _, _ = run
    console = Console(record=True, width=200)
    console.print(summary_table(out))
    text = console.export_text()
    dedup, filt = manifests
    assert re.search(rf"01-dedup\s+│\s+{dedup['rows_in']:,}\s+│\s+{dedup['kept']:,}", text)
    assert f"filter:ppl_bpb>1.2: {filt['removed_total']:,}" in text
    assert re.search(rf"total\s+│\s+{dedup['rows_in']:,}\s+│\s+{filt['kept']:,}", text)
    assert [s.name for s in find_steps(out)] == ["01-dedup", "02-filter"]


def test_empty_step_and_many_reasons(tmp_path):
    """Nothing kept (the engine then writes an id-only empty shard), 40 distinct reasons grouped
    by their part before "=", and a manifest without stats or timings."""
    step = tmp_path / "03-dedup"
    (step / "_removed").mkdir(parents=True)
    pq.write_table(pa.schema([("id", pa.string())]).empty_table(), step / "part-00000.parquet")
    reasons = [f"dedup:near_dup_of=d{i}" for i in range(38)] + ["exact", "<odd>"]
    gone = pa.table({"id": [f"r{i}" for i in range(40)], "text": ["x & y"] * 40, "reason": reasons})
    pq.write_table(gone, step / "_removed" / "part-00000.parquet")
    manifest = {"stage": "dedup", "params": {}, "rows_in": 40, "kept": 0,
                "removed": {r: 1 for r in reasons}}  # fmt: skip
    (step / "_manifest.json").write_text(json.dumps(manifest))
    page = build_report(step).read_text()
    assert "<odd>" not in page
    text = re.sub(r"<[^>]+>", "", page)
    assert "removed: dedup:near_dup_of (38 rows; showing 3)" in text
    assert "removed: &lt;odd&gt; (1 row; showing 1)" in text
    assert "no rows kept" in page and "r0" in page and "r38" in page
    assert len(_pngs(page)) == 1


def test_not_an_output(tmp_path):
    with pytest.raises(datasel.DataselError, match="no _manifest.json"):
        build_report(tmp_path)


def test_screenshot_in_headless_chromium(run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    from PIL import Image

    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,2000", run[2].as_uri()],
        check=True,
        capture_output=True,
        timeout=60,
    )
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2000, 1200)
    top = img[:700]
    assert len(np.unique(top.reshape(-1, 3), axis=0)) > 50  # text, plot, antialiasing
    # the funnel plot's "kept" bars (#4c78a8) are drawn near the top
    blue = np.all(np.abs(top.astype(int) - [0x4C, 0x78, 0xA8]) <= 6, axis=-1)
    assert blue.sum() > 2000


def test_funnel_rows_in_are_the_previous_steps_rows_out(tmp_path):
    """A step that counts other units (pick: candidates, 8 to a row) shows the rows it read,
    with its own count beside; a step that read another folder keeps its own count."""
    first = tmp_path / "run" / "01-dedup"
    first.mkdir(parents=True)
    pq.write_table(pa.table({"id": ["a", "b", "c"]}), first / "part-00000.parquet")
    part = first / "part-00000.parquet"

    def step(name, stage, rows_in, kept, inputs):
        (tmp_path / "run" / name).mkdir(exist_ok=True)
        manifest = {"stage": stage, "params": {}, "rows_in": rows_in, "kept": kept,
                    "removed": {"x": rows_in - kept} if rows_in > kept else {},
                    "inputs": [{"path": str(p)} for p in inputs]}  # fmt: skip
        (tmp_path / "run" / name / "_manifest.json").write_text(json.dumps(manifest))

    step("01-dedup", "dedup", 5, 3, [tmp_path / "in.jsonl"])
    step("02-pick", "pick", 24, 3, [part])
    step("03-filter", "filter", 7, 2, [tmp_path / "elsewhere" / "part-00000.parquet"])
    steps = find_steps(tmp_path / "run")
    assert [s.rows_in for s in steps] == [5, 3, 7]
    console = Console(record=True, width=200)
    console.print(summary_table(tmp_path / "run"))
    text = console.export_text()
    assert re.search(r"02-pick\s+│\s+3 \(24 candidates\)\s+│\s+3\s+│\s+12.5%", text)
    assert re.search(r"03-filter\s+│\s+7\s+│\s+2", text)
    page = build_report(tmp_path / "run").read_text()
    assert "3 (24 candidates)" in page


def test_headline_of_each_stage_from_its_statistics():
    from datasel.report import headline

    def h(stage, **stats):
        return headline({"stage": stage, "stats": stats})

    assert h("dedup", clusters=1200) == "1,200 clusters of duplicates"
    assert h("shift-gotd", ot_before=0.51234, ot_after=0.4) == "OT cost to the target 0.5123 → 0.4"
    assert h("pick", picked=252, candidates=2016, instructions=252) == (
        "picked 252 of 2,016 candidates for 252 instructions"
    )
    assert h(
        "diversify",
        cluster_entropy_before=2.5,
        cluster_entropy_after=2.9,
        cluster_entropy_max=3.0,
        clusters_picked=19,
        nonempty_clusters=20,
    ) == ("cluster entropy 2.5 → 2.9 nats (max 3, 19 of 20 clusters picked from)")
    assert h("filter", **{"top_chars:preselect_score:threshold": 0.73}) == (
        "cut-offs: top_chars:preselect_score ≥ 0.73"
    )
    assert h("filter") == "" and h("score-ppl") == "" and headline({"stage": "dedup"}) == ""


def test_null_and_empty_texts_are_shown(tmp_path):
    """Each step's count of rows without text (from the manifest) is in the table and the page."""
    rows = pq.read_table(datasel.SAMPLE).slice(0, 50).to_pylist()
    rows += [{**rows[0], "id": "e", "text": " "}, {**rows[0], "id": "n", "text": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    datasel.Pipeline([datasel.Dedup()]).run(tmp_path / "in.parquet", tmp_path / "run", quiet=True)
    console = Console(record=True, width=200)
    console.print(summary_table(tmp_path / "run"))
    text = console.export_text()
    assert "no text" in text and re.search(r"01-dedup .*│ 1 null, 1 empty │", text)
    page = build_report(tmp_path / "run").read_text()
    assert "without text: 1 null, 1 empty" in page


def test_a_histogram_of_one_distinct_value_is_drawn_around_it(monkeypatch):
    """Two removed rows at Jaccard 0.996: the bins were [0.996, 1.996], and 0.8 'off the scale'."""
    import matplotlib.axes

    from datasel.report.plots import histogram, plotter

    seen = {}
    real_hist = matplotlib.axes.Axes.hist

    def hist(self, data, bins=None, **kw):
        seen["bins"] = np.asarray(bins)
        return real_hist(self, data, bins=bins, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "hist", hist)
    values = np.array([0.99609375, 0.99609375])
    png = histogram(plotter(), "dedup_jaccard", (np.array([]), 0), (values, 2), [(0.8, "t")])
    assert png is not None
    bins = seen["bins"]
    assert bins[0] <= 0.8 and bins[-1] < 1.2  # the cut-off is on the scale, the value inside
    assert ((bins[:-1] <= 0.99609375) & (0.99609375 < bins[1:])).sum() == 1


def _alts(page: str) -> list[str]:
    return re.findall(r'alt="([^"]*)"', page)


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    """Gopher statistics under a prefix no name rule knows (`qx7_`), then a filter on one."""
    tmp = tmp_path_factory.mktemp("odd")
    pq.write_table(pq.read_table(datasel.SAMPLE).slice(0, 300), tmp / "in.parquet")
    from datasel.stages.heuristics import ScoreHeuristics

    steps = [ScoreHeuristics(column="qx7"), datasel.Filter(max=["qx7_words=200"])]
    manifests = datasel.Pipeline(steps).run(tmp / "in.parquet", tmp / "run", quiet=True)
    return tmp / "run", manifests


def test_columns_a_step_added_get_histograms_with_the_manifests_cut_offs(
    odd_run, tmp_path, monkeypatch
):
    out, (scored, filtered) = odd_run
    odd = [f"qx7_{s}" for s in ("words", "mean_word_length", "symbol_ratio", "bullet_lines")]
    assert scored["added_columns"][:4] == odd and scored["cutoffs"] == {}
    assert filtered["added_columns"] == []
    assert filtered["cutoffs"] == {"qx7_words": [{"value": 200.0, "label": "max 200"}]}
    alts = _alts(build_report(out).read_text())
    assert "qx7_mean_word_length histogram; thresholds: none" in alts  # added by step 1
    # the column step 2 cuts is drawn once, there, with its cut-off
    assert alts.count("qx7_words histogram; thresholds: 200") == 1
    assert not any(a.startswith("qx7_words histogram; thresholds: none") for a in alts)

    # the line drawn is the one the manifest records, whatever the parameters say
    import shutil

    step = shutil.copytree(out / "02-filter", tmp_path / "02-filter")
    edited = json.loads((step / "_manifest.json").read_text())
    edited["cutoffs"]["qx7_words"] = [{"value": 321, "label": "recorded 321"}]
    (step / "_manifest.json").write_text(json.dumps(edited))
    from datasel.report import plots

    drawn = {}
    real = plots.histogram

    def histogram(plt, col, kept, gone, cuts):
        drawn[col] = cuts
        return real(plt, col, kept, gone, cuts)

    monkeypatch.setattr(plots, "histogram", histogram)
    alts = _alts(build_report(step).read_text())
    assert "qx7_words histogram; thresholds: 321" in alts
    assert drawn["qx7_words"] == [(321, "recorded 321")]


def test_a_manifest_without_the_facts_reads_its_schema_not_names(odd_run, tmp_path):
    """A manifest from before `added_columns` and `cutoffs`: the added columns are those of its
    shards that its input lacked (the input file, or the previous step's shards), and no
    cut-off is drawn (none is guessed from the parameters or the reasons)."""
    import shutil

    out, _ = odd_run
    old = tmp_path / "old"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns("*.html"))
    for step in ("01-score-heuristics", "02-filter"):
        m = json.loads((old / step / "_manifest.json").read_text())
        del m["added_columns"], m["cutoffs"]
        (old / step / "_manifest.json").write_text(json.dumps(m))
    steps = find_steps(old)
    assert [f.name for f in steps[0].added][:2] == ["qx7_words", "qx7_mean_word_length"]
    assert steps[1].previous is None  # it read the original run's folder, not this copy
    alts = _alts(build_report(old).read_text())
    assert "qx7_words histogram; thresholds: none" in alts
    assert not any("thresholds: 200" in a for a in alts)


def test_cut_offs_survive_a_run_killed_after_its_selection(tmp_path):
    """Killed after `select`, a resumed run writes the cut-offs that selection recorded."""
    out = tmp_path / "out"
    code = f"import datasel; datasel.run(datasel.Dedup(threshold=0.7), datasel.SAMPLE, {str(out)!r}, quiet=True)"  # fmt: skip
    env = dict(os.environ, DATASEL_KILL_AT="select")
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == -9
    env.pop("DATASEL_KILL_AT")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    m = json.loads((out / "_manifest.json").read_text())
    assert m["cutoffs"] == {"dedup_jaccard": [{"value": 0.7, "label": "threshold 0.7"}]}
    assert m["added_columns"] == ["duplicate_of", "dedup_jaccard"]


def test_filter_within_and_bottom_cuts_and_reasons_print_as_they_are(tmp_path):
    """--within records a cut per group (a dict): the headline says so instead of failing on
    it; a --bottom cut keeps values at or below it; a reason `filter:top:s=1` is not rich's
    :top: emoji."""
    from datasel.progress import summary_table as step_table
    from datasel.report import headline
    from datasel.stages.filter import Filter

    rows = [{"text": "a", "s": 1.0, "g": "x"}, {"text": "b", "s": 2.0, "g": "x"}]
    rows.append({"text": "c", "s": 3.0, "g": "y"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    m = datasel.run(
        Filter(top="s=1", within="g"), tmp_path / "in.parquet", tmp_path / "w", quiet=True
    )
    assert headline(m) == "cut-offs: top:s ≥ a cut per g (2 groups)"
    console = Console(record=True, width=200)
    console.print(step_table(m))
    console.print(summary_table(tmp_path / "w"))
    text = console.export_text()
    assert "removed: filter:top:s=1" in text and "filter:top:s=1: 1" in text
    assert "\N{TOP WITH UPWARDS ARROW ABOVE}" not in text
    m = {"stage": "filter", "stats": {"bottom_fraction:s:threshold": 0.25}}
    assert headline(m) == "cut-offs: bottom_fraction:s ≤ 0.25"
