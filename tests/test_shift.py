import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import datasel
from datasel.cli import app, register_stages
from datasel.stages.embed import embedding_array
from datasel.stages.shift import ShiftDsir, ShiftGotd
from tests.conftest import read_dataset, read_removed, sample_rows

register_stages()
runner = CliRunner()


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    """The bundled sample as a pool; 100 held-out python_docs documents as the target."""
    tmp = tmp_path_factory.mktemp("mix")
    rows = sample_rows()
    py = [i for i, r in enumerate(rows) if r["domain"] == "python_docs"]
    target = set(py[::6][:100])
    pool = [r for i, r in enumerate(rows) if i not in target]
    (tmp / "pool").mkdir()
    pq.write_table(pa.Table.from_pylist(pool[: len(pool) // 2]), tmp / "pool" / "a.parquet")
    pq.write_table(pa.Table.from_pylist(pool[len(pool) // 2 :]), tmp / "pool" / "b.parquet")
    pq.write_table(pa.Table.from_pylist([rows[i] for i in sorted(target)]), tmp / "target.parquet")
    n_py = sum(r["domain"] == "python_docs" for r in pool)
    return tmp, n_py, len(pool)


def precision(path) -> float:
    dom = read_dataset(path).column("domain").to_pylist()
    return sum(d == "python_docs" for d in dom) / len(dom)


def test_dsir_selects_the_target_domain_and_reports_kl(mixture, tmp_path):
    tmp, n_py, n = mixture
    m = datasel.run(
        ShiftDsir(target=str(tmp / "target.parquet"), size=n_py),
        tmp / "pool",
        tmp_path / "out",
        quiet=True,
    )
    assert m["kept"] == n_py and m["rows_in"] == n == m["kept"] + m["removed_total"]
    assert precision(tmp_path / "out") >= 0.9
    assert m["stats"]["kl_after"] < 0.5 * m["stats"]["kl_before"]
    removed = read_removed(tmp_path / "out")
    assert "dsir_logw" in removed.column_names
    assert set(removed.column("reason").to_pylist()) == {"dsir:not_selected"}


def test_dsir_new_size_reuses_cached_weights(mixture, tmp_path):
    tmp, n_py, _ = mixture
    stage = ShiftDsir(target=str(tmp / "target.parquet"), size=100, deterministic=True)
    datasel.run(stage, tmp / "pool", tmp_path / "out", quiet=True)
    cache = next((tmp_path / "out" / "_cache").iterdir())
    stamp = {p.name: p.stat().st_mtime_ns for p in cache.glob("staged-*")}
    stage2 = ShiftDsir(target=str(tmp / "target.parquet"), size=200, deterministic=True)
    m2 = datasel.run(stage2, tmp / "pool", tmp_path / "out", quiet=True, overwrite=True)
    assert m2["kept"] == 200
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("staged-*")} == stamp  # not recomputed
    top100 = set(
        read_dataset(tmp_path / "out")
        .sort_by([("dsir_logw", "descending")])
        .column("id")
        .to_pylist()[:100]
    )
    first = datasel.run(stage, tmp / "pool", tmp_path / "again", quiet=True)
    assert (
        first["kept"] == 100
        and set(read_dataset(tmp_path / "again").column("id").to_pylist()) == top100
    )


def test_dsir_new_target_reuses_cached_buckets(mixture, tmp_path):
    tmp, _, _ = mixture
    datasel.run(ShiftDsir(target=str(tmp / "target.parquet"), size=100), tmp / "pool", tmp_path / "out", quiet=True)  # fmt: skip
    cache = next((tmp_path / "out" / "_cache").iterdir())
    stamp = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    other = tmp_path / "other-target.parquet"
    pq.write_table(pq.read_table(tmp / "pool" / "a.parquet").slice(0, 50), other)
    m = datasel.run(ShiftDsir(target=str(other), size=100), tmp / "pool", tmp_path / "out", quiet=True, overwrite=True)  # fmt: skip
    assert m["kept"] == 100
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamp  # not recomputed


def test_gotd_selects_the_target_domain(mixture, tmp_path):
    tmp, n_py, _ = mixture
    m = datasel.run(
        ShiftGotd(target=str(tmp / "target.parquet"), size=n_py, fit_sample=3000),
        tmp / "pool",
        tmp_path / "out",
        quiet=True,
    )
    assert precision(tmp_path / "out") >= 0.8
    assert m["stats"]["ot_after"] < m["stats"]["ot_before"]
    grad = read_dataset(tmp_path / "out").column("gotd_grad").to_numpy()
    assert grad.max() <= read_removed(tmp_path / "out").column("gotd_grad").to_numpy().min()


def test_template_joins_columns(tmp_path):
    code, poem = "def f(x): return x + 1", "the sea is wide and blue"
    rows = [
        {"id": str(i), "instruction": "write", "response": code if i % 2 else poem}
        for i in range(40)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    pq.write_table(
        pa.Table.from_pylist([{"instruction": "write", "response": code}] * 30),
        tmp_path / "t.parquet",
    )
    stage = ShiftDsir(
        target=str(tmp_path / "t.parquet"),
        size=20,
        template="{instruction}\n{response}",
        deterministic=True,
    )
    datasel.run(stage, tmp_path / "pool.parquet", tmp_path / "out", quiet=True)
    assert all(int(i) % 2 for i in read_dataset(tmp_path / "out").column("id").to_pylist())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "5", "--fraction", "0.1"], "exactly one of --size and --fraction"),
        (["--size", "5", "--template", "{nope}"], "--template: no column 'nope'"),
    ],
)
def test_shift_errors(mixture, tmp_path, args, message):
    tmp, _, _ = mixture
    result = runner.invoke(
        app,
        [
            "shift",
            "dsir",
            str(tmp / "pool" / "a.parquet"),
            str(tmp_path / "o"),
            "--target",
            str(tmp / "target.parquet"),
            *args,
        ],
    )
    assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(
        app,
        [
            "shift",
            "dsir",
            str(tmp / "pool" / "a.parquet"),
            str(tmp_path / "o2"),
            "--target",
            str(tmp / "nope.parquet"),
            "--size",
            "3",
        ],
    )
    assert result.exit_code == 2 and "nope.parquet: no such file" in result.output


def test_gotd_on_a_pool_smaller_than_the_embedding(tmp_path):
    """Fewer texts than hashing dims: a random projection instead of LSA, not a traceback."""
    rows = [{"id": str(i), "text": f"document {i} about topic {i % 3}"} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:3]), tmp_path / "target.parquet")
    stage = ShiftGotd(target=str(tmp_path / "target.parquet"), size=4)
    m = datasel.run(stage, tmp_path / "pool.parquet", tmp_path / "out", quiet=True)
    assert m["kept"] == 4 and m["rows_in"] == 12 == m["kept"] + m["removed_total"]
    assert set(read_removed(tmp_path / "out").column("reason").to_pylist()) == {"gotd:not_selected"}


@pytest.mark.parametrize("cls", [ShiftDsir, ShiftGotd])
def test_a_size_over_the_rows_selects_them_all_with_a_warning(tmp_path, cls):
    """A small cron day: --size 50 on 12 rows keeps the 12, warns, and records the warning."""
    rows = [{"id": str(i), "text": f"document {i} about topic {i % 3}"} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:3]), tmp_path / "target.parquet")
    stage = cls(target=str(tmp_path / "target.parquet"), size=50)
    m = datasel.run(stage, tmp_path / "pool.parquet", tmp_path / "out", quiet=True)
    assert m["rows_in"] == 12 == m["kept"] and m["removed_total"] == 0
    assert m["stats"]["selected"] == 12
    name = cls.name.replace("-", " ")
    assert m["warnings"] == [f"{name}: --size 50 is more than the 12 rows available: using 12"]
    assert sorted(read_dataset(tmp_path / "out").column("id").to_pylist(), key=int) == [
        r["id"] for r in rows
    ]


def _with_vectors(path, vectors, **columns):
    table = pa.table({"embedding": embedding_array(vectors), **columns})
    pq.write_table(table, path)


def test_gotd_uses_the_embedding_columns_of_pool_and_target(tmp_path):
    """A pool from `datasel embed` is selected on its own vectors (--model auto), against the
    target's; vectors of two dimensions, or a target without them, are one-line errors."""
    rng = np.random.default_rng(0)
    near = rng.normal(size=(20, 8)) * 0.1 + np.eye(8)[0] * 3  # like the target
    far = rng.normal(size=(180, 8))
    pool = np.concatenate([near, far]).astype(np.float32)
    ids = [f"near{i}" for i in range(20)] + [f"far{i}" for i in range(180)]
    _with_vectors(tmp_path / "pool.parquet", pool, id=ids, text=ids)
    target = (rng.normal(size=(30, 8)) * 0.1 + np.eye(8)[0] * 3).astype(np.float32)
    _with_vectors(tmp_path / "target.parquet", target, text=["t"] * 30)
    stage = ShiftGotd(target=str(tmp_path / "target.parquet"), size=20)
    datasel.run(stage, tmp_path / "pool.parquet", tmp_path / "out", quiet=True)
    picked = read_dataset(tmp_path / "out").column("id").to_pylist()
    assert sum(i.startswith("near") for i in picked) >= 18

    _with_vectors(tmp_path / "wide.parquet", target[:, :4], text=["t"] * 30)
    with pytest.raises(datasel.DataselError, match="8 dimensions and the target's 4"):
        datasel.run(
            ShiftGotd(target=str(tmp_path / "wide.parquet"), size=20),
            tmp_path / "pool.parquet",
            tmp_path / "o2",
            quiet=True,
        )
    pq.write_table(pa.table({"text": ["t"] * 30}), tmp_path / "plain.parquet")
    with pytest.raises(datasel.DataselError, match="no `embedding` column, while the pool has"):
        datasel.run(
            ShiftGotd(target=str(tmp_path / "plain.parquet"), size=20),
            tmp_path / "pool.parquet",
            tmp_path / "o3",
            quiet=True,
        )


def test_rows_without_text_are_removed_not_selected(mixture, tmp_path):
    """A document with no words has log-weight 0 under DSIR (above every off-target document)
    and a zero vector under GOT-D: both remove it as empty_text instead of selecting it."""
    tmp, n_py, n = mixture
    blank = [
        {"id": "empty", "text": "", "domain": "none"},
        {"id": "blank", "text": "  \n ", "domain": "none"},
        {"id": "null", "text": None, "domain": "none"},
    ]
    pool = pa.concat_tables(
        [pq.read_table(tmp / "pool" / "a.parquet"), pa.Table.from_pylist(blank)],
        promote_options="permissive",
    )
    (tmp_path / "pool").mkdir()
    pq.write_table(pool, tmp_path / "pool" / "a.parquet")
    target = pq.read_table(tmp / "target.parquet")
    target = pa.concat_tables(
        [target, pa.Table.from_pylist(blank[:1])], promote_options="permissive"
    )
    pq.write_table(target, tmp_path / "target.parquet")
    real = pool.num_rows - 3
    for stage, prefix in (
        (
            ShiftDsir(target=str(tmp_path / "target.parquet"), size=real - 5, deterministic=True),
            "dsir",
        ),
        (ShiftGotd(target=str(tmp_path / "target.parquet"), size=real - 5, fit_sample=500), "gotd"),
    ):
        out = tmp_path / prefix
        m = datasel.run(stage, tmp_path / "pool", out, quiet=True)
        assert m["rows_in"] == real + 3 and m["kept"] == real - 5
        assert m["removed"] == {f"{prefix}:not_selected": 5, f"{prefix}:empty_text": 3}
        assert m["texts"] == {"null": 1, "empty": 2}
        assert m["stats"]["target_rows_without_text"] == 1
        assert not {"empty", "blank", "null"} & set(read_dataset(out).column("id").to_pylist())


def test_gotd_on_embed_output_with_rows_without_text(tmp_path):
    """`datasel embed` leaves a null vector where there is no text; GOT-D on its own vectors
    removes those pool rows as empty_text and leaves such target rows out."""
    from datasel.stages.embed import Embed

    rows = [{"id": r["id"], "text": r["text"]} for r in sample_rows(200)]
    rows += [{"id": "empty", "text": ""}, {"id": "null", "text": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:40] + rows[-1:]), tmp_path / "target.parquet")
    datasel.run(Embed(dim=16), tmp_path / "pool.parquet", tmp_path / "pe", quiet=True)
    datasel.run(Embed(dim=16), tmp_path / "target.parquet", tmp_path / "te", quiet=True)
    m = datasel.run(
        ShiftGotd(target=str(tmp_path / "te"), size=50), tmp_path / "pe", tmp_path / "o", quiet=True
    )
    assert m["removed"] == {"gotd:not_selected": 150, "gotd:empty_text": 2}
    assert m["stats"]["target_rows_without_text"] == 1


@pytest.mark.parametrize("deterministic", [False, True])
def test_dsir_streamed_selection_takes_what_topk_over_all_weights_takes(tmp_path, deterministic):
    """Few words, so many exactly tied weights, spread over four shards with null texts: the
    streamed cut keeps the rows gumbel_topk / topk over every row's weight keep, ties included."""
    from datasel.ops.topk import gumbel_topk, topk

    rng = np.random.default_rng(0)
    (tmp_path / "pool").mkdir()
    rows = []
    for part in range(4):
        chunk = [
            {
                "id": f"{part}-{i}",
                "text": " ".join(rng.choice(list("abcdef"), size=int(rng.integers(0, 4))))
                if rng.random() > 0.05
                else None,
            }
            for i in range(400)
        ]
        pq.write_table(pa.Table.from_pylist(chunk), tmp_path / "pool" / f"{part}.parquet")
        rows += chunk
    pq.write_table(pa.table({"text": ["a b", "a", "c a b"] * 5}), tmp_path / "target.parquet")
    for size in (1, 500, 1200):
        out = tmp_path / f"out{size}"
        stage = ShiftDsir(
            target=str(tmp_path / "target.parquet"), size=size, seed=7, deterministic=deterministic
        )
        datasel.run(stage, tmp_path / "pool", out, quiet=True, workers=2)
        kept = read_dataset(out).to_pylist()
        weight = {r["id"]: r["dsir_logw"] for r in kept + read_removed(out).to_pylist()}
        live = [r["id"] for r in rows if weight[r["id"]] is not None]  # in input order
        logw = np.array([weight[i] for i in live])
        assert len(np.unique(logw)) < len(logw) / 4  # the ties are there
        pick = topk(logw, size) if deterministic else gumbel_topk(logw, size, seed=7)
        assert {r["id"] for r in kept} == {live[j] for j in pick}
