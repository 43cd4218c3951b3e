import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import datasel
from datasel.cli import app, register_stages
from datasel.errors import DataselError
from datasel.stages.filter import Filter
from datasel.stages.score import ScoreFastText, ScorePreselect
from datasel.workflows.preselect_fit import preselect_fit
from tests.conftest import read_dataset, read_removed, sample_rows

register_stages()
runner = CliRunner()


def scored_input(tmp_path, n=200):
    rng = np.random.default_rng(0)
    rows = [
        {
            "id": f"d{i}",
            "text": "x" * int(rng.integers(1, 100)),
            "s": float(rng.random()),
            "t": float(i),
        }
        for i in range(n)
    ]
    rows[3]["s"] = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    return rows


def test_filter_rules_and_reasons(tmp_path):
    rows = scored_input(tmp_path)
    m = datasel.run(
        Filter(min=["s=0.2"], max=["t=150"], top=["s=50"]),
        tmp_path / "in.parquet",
        tmp_path / "out",
        quiet=True,
    )
    kept = read_dataset(tmp_path / "out").to_pylist()
    removed = read_removed(tmp_path / "out").to_pylist()
    assert m["rows_in"] == 200 == len(kept) + len(removed)
    eligible = [r for r in rows if r["s"] is not None and r["s"] >= 0.2 and r["t"] <= 150]
    best = sorted(eligible, key=lambda r: -r["s"])[:50]
    assert {r["id"] for r in kept} == {r["id"] for r in best}
    reasons = {r["id"]: r["reason"] for r in removed}
    assert reasons["d3"] == "filter:s missing"
    assert all(
        reasons[r["id"]] == "filter:s<0.2" for r in rows if r["s"] is not None and r["s"] < 0.2
    )
    assert reasons["d199"] in ("filter:t>150", "filter:s<0.2")
    assert any(v == "filter:top:s=50" for v in reasons.values())


def test_filter_top_over_the_rows_keeps_them_all(tmp_path):
    scored_input(tmp_path)
    m = datasel.run(Filter(top=["t=500"]), tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    assert m["rows_in"] == 200 == m["kept"] + m["removed_total"] and m["kept"] == 200
    m = datasel.run(Filter(top=["s=500"]), tmp_path / "in.parquet", tmp_path / "o2", quiet=True)
    assert m["kept"] == 199 and m["removed"] == {"filter:s missing": 1}


def test_filter_top_chars_keeps_a_share_of_characters(tmp_path):
    rows = scored_input(tmp_path)
    datasel.run(Filter(top_chars=["t=0.25"]), tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    kept = read_dataset(tmp_path / "out").to_pylist()
    total = sum(len(r["text"]) for r in rows)
    share = sum(len(r["text"]) for r in kept) / total
    assert 0.25 <= share < 0.25 + 100 / total
    assert min(r["t"] for r in kept) > max(
        r["t"] for r in rows if r["id"] not in {k["id"] for k in kept}
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--min", "s"], "expected COLUMN=NUMBER"),
        (["--top-fraction", "s=2"], "the fraction must be in (0, 1]"),
        ([], "needs at least one rule"),
        (["--min", "nope=1"], "no column 'nope'"),
    ],
)
def test_filter_errors(tmp_path, args, message):
    scored_input(tmp_path)
    result = runner.invoke(
        app, ["filter", str(tmp_path / "in.parquet"), str(tmp_path / "out"), *args]
    )
    assert result.exit_code == 2 and message in result.output, result.output


def train_domain_model(tmp_path):
    from scorers.fasttext import train_classifier

    docs = sample_rows()
    texts = [d["text"] for d in docs]
    labels = ["__label__py" if d["domain"] == "python_docs" else "__label__other" for d in docs]
    return train_classifier(
        texts, labels, tmp_path / "domain.bin", epoch=5, lr=0.5, dim=20, bucket=50_000
    )


def test_score_fasttext(tmp_path):
    model = train_domain_model(tmp_path)
    m = datasel.run(
        ScoreFastText(model=str(model), label="__label__py"),
        datasel.SAMPLE,
        tmp_path / "out",
        quiet=True,
    )
    t = read_dataset(tmp_path / "out")
    assert m["kept"] == 2250 and "fasttext_py" in t.column_names
    score = np.asarray(t.column("fasttext_py"))
    is_py = np.asarray(t.column("domain")) == "python_docs"
    assert score[is_py].mean() > 0.8 > 0.2 > score[~is_py].mean()
    result = runner.invoke(
        app,
        [
            "score",
            "fasttext",
            str(datasel.SAMPLE),
            str(tmp_path / "o2"),
            "--model",
            str(model),
            "--label",
            "nope",
        ],
    )
    assert result.exit_code == 2 and "nope" in result.output
    result = runner.invoke(
        app,
        [
            "score",
            "fasttext",
            str(datasel.SAMPLE),
            str(tmp_path / "o3"),
            "--model",
            "missing.bin",
            "--label",
            "x",
        ],
    )
    assert result.exit_code == 2 and "missing.bin: no such fastText model file" in result.output


def test_preselect_fit_and_apply(tmp_path):
    # losses under 4 models; python docs are "predictive": their losses fall as benchmark rises
    docs = sample_rows()
    rng = np.random.default_rng(0)
    bench = [10.0, 20.0, 30.0, 40.0]
    rows = []
    for d in docs:
        base = rng.random(4) + 1
        losses = np.sort(base)[::-1] if d["domain"] == "python_docs" else rng.permutation(base)
        rows.append(
            {
                "id": d["id"],
                "text": d["text"],
                **{f"bpb_{k}": float(v) for k, v in enumerate(losses)},
            }
        )
    # a row without text has no losses (score ppl leaves them null): left out of the fit, counted
    rows.append({"id": "blank", "text": " ", **{f"bpb_{k}": None for k in range(4)}})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "losses.parquet")
    cols = [f"bpb_{k}" for k in range(4)]
    card = preselect_fit(
        tmp_path / "losses.parquet",
        tmp_path / "scorer",
        loss_columns=cols,
        benchmark_scores=bench,
        fraction=0.2,
        epoch=5,
        lr=0.5,
        dim=20,
    )
    assert card["counts"]["pos"] == 450 and card["heldout_accuracy"] >= 0.8
    assert card["rows_without_text"] == 1
    assert json.loads((tmp_path / "scorer" / "card.json").read_text())["rows_without_text"] == 1
    datasel.run(
        ScorePreselect(scorer=str(tmp_path / "scorer")),
        datasel.SAMPLE,
        tmp_path / "scored",
        quiet=True,
    )
    t = read_dataset(tmp_path / "scored")
    is_py = np.asarray(t.column("domain")) == "python_docs"
    score = np.asarray(t.column("preselect_score"))
    assert score[is_py].mean() > score[~is_py].mean() + 0.5
    result = runner.invoke(
        app,
        [
            "preselect",
            "fit",
            str(tmp_path / "losses.parquet"),
            str(tmp_path / "s2"),
            "--loss-columns",
            "bpb_0,bpb_1",
            "--benchmark-scores",
            "1,2,3",
        ],
    )
    assert result.exit_code == 2 and "2 loss columns but 3 benchmark scores" in result.output
    result = runner.invoke(
        app,
        [
            "preselect",
            "fit",
            str(tmp_path / "losses.parquet"),
            str(tmp_path / "s2"),
            "--loss-columns",
            "bpb_0,nope",
            "--benchmark-scores",
            "1,2",
        ],
    )
    assert result.exit_code == 2 and "no column 'nope'" in result.output
    assert (
        json.loads((tmp_path / "scorer" / "card.json").read_text())["models"][0]["name"] == "bpb_0"
    )


def test_rows_without_text_score_null_and_filter_removes_them_by_name(tmp_path):
    """fastText gives "" a probability like any text; a null score is removed with a reason."""
    model = train_domain_model(tmp_path)
    rows = sample_rows(40) + [
        {"id": "empty", "text": ""},
        {"id": "blank", "text": "  \n "},
        {"id": "null", "text": None},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    m = datasel.run(
        ScoreFastText(model=str(model), label="__label__py"),
        tmp_path / "in.parquet",
        tmp_path / "scored",
        quiet=True,
    )
    assert m["texts"] == {"null": 1, "empty": 2}
    t = read_dataset(tmp_path / "scored")
    score = dict(zip(t.column("id").to_pylist(), t.column("fasttext_py").to_pylist(), strict=False))
    assert score["empty"] is None and score["blank"] is None and score["null"] is None
    assert all(score[r["id"]] is not None for r in rows[:40])
    m = datasel.run(Filter(min=["fasttext_py=0"]), tmp_path / "scored", tmp_path / "f", quiet=True)
    assert m["kept"] == 40 and m["removed"] == {"filter:fasttext_py missing": 3}
    assert m["texts"] == {"null": 1, "empty": 2}


def test_no_stage_imports_the_pipeline_a_workflow_or_the_cli():
    """`preselect fit` runs a pipeline: a workflow (datasel/workflows/), not a stage."""
    import ast
    from pathlib import Path

    above = ("datasel.pipeline", "datasel.workflows", "datasel.cli")
    for path in Path("datasel/stages").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n.startswith(above) for n in names), (path, names)


def _reference_filter(rows, rules, within=None):
    """The whole-column select filter did before it streamed: lexsort over every alive row (of
    each group of `within`)."""
    n = len(rows)
    alive, reason = np.ones(n, dtype=bool), [None] * n
    chars = np.array([len(r["text"] or "") for r in rows])
    group = np.array([0 if within is None else r[within] for r in rows], dtype=object)
    if within is not None:
        for i in np.flatnonzero(group == None):  # noqa: E711 - elementwise
            reason[i] = f"filter:{within} missing"
            alive[i] = False
    for kind, col, v in rules:
        values = np.array([np.nan if r[col] is None else r[col] for r in rows], dtype=float)
        for i in np.flatnonzero(np.isnan(values) & alive):
            reason[i] = f"filter:{col} missing"
        alive &= ~np.isnan(values)
        keep = np.zeros(n, dtype=bool)
        sign = -1 if kind.startswith("bottom") else 1
        for g in {group[i] for i in np.flatnonzero(alive)}:
            idx = np.flatnonzero(alive & (group == g))
            order = idx[np.lexsort((idx, -sign * values[idx]))]
            if kind in ("top", "bottom"):
                k = int(v)
            elif kind.endswith("_fraction"):
                k = int(np.floor(v * len(idx) + 0.5))  # half rounds up
            else:
                cum = np.cumsum(chars[order])
                k = int(np.searchsorted(cum, v * (cum[-1] if len(cum) else 0), side="left")) + 1
            keep[order[: min(k, len(order))]] = True
        for i in np.flatnonzero(alive & ~keep):
            reason[i] = f"filter:{kind.replace('_', '-')}:{col}={v:g}"
        alive &= keep
    return {r["id"]: why for r, why in zip(rows, reason, strict=True)}


def test_filter_top_rules_over_many_shards_and_exact_ties_remove_what_a_full_sort_removes(
    tmp_path,
):
    rng = np.random.default_rng(3)
    rows = []
    for i in range(3000):
        s = [None, -0.0, 0.0, 0.5, 1.0, float("inf"), -1.5][int(rng.integers(0, 7))]
        text = "y" * int(rng.integers(0, 30)) if rng.random() > 0.05 else None
        rows.append({"id": f"d{i}", "text": text, "s": s, "t": int(rng.integers(0, 4))})
    (tmp_path / "in").mkdir()
    for part in range(6):  # six files: six staged shards, the ties spread over all of them
        pq.write_table(
            pa.Table.from_pylist(rows[part * 500 : (part + 1) * 500]),
            tmp_path / "in" / f"{part}.parquet",
        )
    rule_sets = [
        [("top", "s", 1234)],
        [("top_fraction", "t", 0.37)],
        [("top_chars", "s", 0.42)],
        [("top", "t", 2500), ("top_fraction", "t", 0.5), ("top_chars", "s", 0.6)],  # as RULES
        [("top", "s", 0)],
    ]
    for n, rules in enumerate(rule_sets):
        flags = {}
        for kind, col, v in rules:
            flags.setdefault(kind, []).append(f"{col}={v:g}")
        out = tmp_path / f"out{n}"
        datasel.run(Filter(**flags), tmp_path / "in", out, quiet=True, workers=2)
        kept = read_dataset(out).column("id").to_pylist()
        removed = read_removed(out).to_pylist()
        got = {i: None for i in kept} | {r["id"]: r["reason"] for r in removed}
        assert got == _reference_filter(rows, rules), rules


@pytest.mark.parametrize("n_groups", [3, 40])  # up to 16 groups: 16-bit digits; more: 8-bit
def test_filter_within_groups_ranks_inside_each_group_as_a_full_sort_of_it_does(tmp_path, n_groups):
    rng = np.random.default_rng(5)
    rows = []
    for i in range(3000):
        s = [None, -0.0, 0.0, 0.5, 1.0, float("inf"), -1.5, 2.0][int(rng.integers(0, 8))]
        s = s if s is None or rng.random() < 0.5 else float(rng.normal())
        g = None if rng.random() < 0.03 else f"g{int(rng.zipf(1.5)) % n_groups}"
        text = "y" * int(rng.integers(0, 30))
        rows.append({"id": f"d{i}", "text": text, "s": s, "g": g, "t": int(rng.integers(0, 4))})
    (tmp_path / "in").mkdir()
    for part in range(5):
        pq.write_table(
            pa.Table.from_pylist(rows[part * 600 : (part + 1) * 600]),
            tmp_path / "in" / f"{part}.parquet",
            row_group_size=128,  # several chunks a shard, each with its own dictionary
        )
    rule_sets = [
        [("bottom_fraction", "s", 0.4)],
        [("top_chars", "s", 0.3)],
        [("bottom_chars", "t", 0.5)],
        [("top", "s", 7), ("bottom", "t", 5)],
        [("top_fraction", "t", 0.05)],  # small groups round to no row: all of them removed
    ]
    for n, rules in enumerate(rule_sets):
        flags = {}
        for kind, col, v in rules:
            flags.setdefault(kind, []).append(f"{col}={v:g}")
        out = tmp_path / f"out{n}"
        m = datasel.run(Filter(**flags, within="g"), tmp_path / "in", out, quiet=True, workers=2)
        kept = read_dataset(out).column("id").to_pylist()
        removed = read_removed(out).to_pylist()
        got = {i: None for i in kept} | {r["id"]: r["reason"] for r in removed}
        assert got == _reference_filter(rows, rules, within="g"), rules
        assert m["rows_in"] == 3000 == m["kept"] + m["removed_total"]
        assert m["stats"]["within"]["groups"] == len({r["g"] for r in rows} - {None})
    assert m["removed"]["filter:g missing"] == sum(r["g"] is None for r in rows)
    labels = [c["label"] for c in m["cutoffs"]["t"]]  # one cut per group (the largest six)
    assert 1 < len(labels) <= 6 and all(" in g=g" in label for label in labels), labels


def test_a_fraction_rounds_half_up_in_every_group(tmp_path):
    """Half of a group of 1, 3 and 5 rows keeps 1, 2 and 3 (round-half-to-even kept 0, 2, 2:
    a group of one lost its row, and a fifth of the rows went missing)."""
    rows = [{"id": f"{g}{i}", "text": "x", "s": float(i), "g": g}
            for g, n in (("a", 1), ("b", 3), ("c", 5)) for i in range(n)]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    datasel.run(
        Filter(top_fraction=["s=0.5"], within="g"),
        tmp_path / "in.parquet",
        tmp_path / "o",
        quiet=True,
    )
    kept = sorted(read_dataset(tmp_path / "o").column("id").to_pylist())
    assert kept == ["a0", "b1", "b2", "c2", "c3", "c4"]


def test_filter_bottom_rules_keep_the_lowest_and_the_manifest_says_so(tmp_path):
    rows = scored_input(tmp_path)
    m = datasel.run(
        Filter(bottom_fraction="s=0.25"), tmp_path / "in.parquet", tmp_path / "out", quiet=True
    )
    kept = read_dataset(tmp_path / "out").to_pylist()
    valid = sorted(r["s"] for r in rows if r["s"] is not None)
    assert len(kept) == int(np.floor(0.25 * len(valid) + 0.5))
    assert max(r["s"] for r in kept) == valid[len(kept) - 1]
    assert m["stats"]["bottom_fraction:s:threshold"] == valid[len(kept) - 1]


def test_filter_within_errors(tmp_path):
    with pytest.raises(ValueError, match="--within applies to the --top and --bottom rules"):
        Filter(max="s=1", within="g")
    rows = [{"text": "a", "s": 1.0, "g": [1, 2]}, {"text": "b", "s": 2.0, "g": [3]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    result = runner.invoke(
        app,
        ["filter", str(tmp_path / "in.parquet"), str(tmp_path / "out"), "--top", "s=1",
         "--within", "g"],
    )  # fmt: skip
    assert result.exit_code == 2 and "--within: column 'g' holds list" in result.output, (
        result.output
    )


def test_filter_on_integers_beyond_2_53_keeps_them(tmp_path):
    """An int64 column of times in ns or hashes (over 2**53) rounds to doubles, no traceback."""
    ns = pa.array([1_700_000_000_000_000_001, 1_600_000_000_000_000_000], pa.int64())
    pq.write_table(
        pa.table({"id": ["new", "old"], "text": ["a", "b"], "ts": ns}), tmp_path / "in.parquet"
    )
    m = datasel.run(Filter(min="ts=1.65e18"), tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    assert m["kept"] == 1 and m["removed"] == {"filter:ts<1.65e+18": 1}
    assert read_dataset(tmp_path / "out").column("id").to_pylist() == ["new"]


def test_preselect_fit_names_the_file_and_row_of_a_missing_or_non_numeric_loss(tmp_path):
    rows = [
        {"id": f"r{i}", "text": f"document {i}", "a": float(i), "b": float(-i)} for i in range(20)
    ]
    rows[13]["b"] = None
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:10]), tmp_path / "in" / "p0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[10:]), tmp_path / "in" / "p1.parquet")
    with pytest.raises(DataselError, match=r"p1\.parquet: the row with id 'r13' has text but no"):
        preselect_fit(
            tmp_path / "in", tmp_path / "s", loss_columns=["a", "b"], benchmark_scores=[1, 2]
        )
    for r in rows:
        r["b"] = "n/a" if r["b"] is None else str(r["b"])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "words.parquet")
    with pytest.raises(DataselError, match="words.parquet: loss column 'b' holds string"):
        preselect_fit(
            tmp_path / "words.parquet",
            tmp_path / "s",
            loss_columns=["a", "b"],
            benchmark_scores=[1, 2],
        )


def test_a_rule_column_null_in_every_row_removes_every_row_as_missing(tmp_path):
    """JSONL rows none of which has the score: the column is Arrow's null type, no error."""
    (tmp_path / "in.jsonl").write_text('{"text": "a", "s": null}\n{"text": "b", "s": null}\n')
    m = datasel.run(Filter(min="s=0"), tmp_path / "in.jsonl", tmp_path / "out", quiet=True)
    assert m["kept"] == 0 and m["removed"] == {"filter:s missing": 2}


def test_a_column_missing_from_a_later_file_names_that_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.table({"text": ["a b", "c d"], "s": [1.0, 2.0]}), src / "a.parquet")
    pq.write_table(pa.table({"text": ["e f"]}), src / "b.parquet")
    with pytest.raises(DataselError, match=r"b\.parquet: filter: no column 's'") as err:
        datasel.run(Filter(min="s=0"), src, tmp_path / "out", quiet=True)
    assert "a.parquet" not in str(err.value)
