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


def test_dsir_chooses_its_bucket_count_by_cross_validation(mixture, tmp_path):
    """The bucket count whose held-out target recall is highest (ties: fewer); its precision is
    as good as the best fixed count's here, and --buckets fixes the count."""
    from datasel.stages.shift import BUCKET_CHOICES

    tmp, n_py, _ = mixture
    run = lambda name, **kw: datasel.run(  # noqa: E731
        ShiftDsir(target=str(tmp / "target.parquet"), size=n_py, **kw),
        tmp / "pool", tmp_path / name, quiet=True,
    )  # fmt: skip
    auto = run("auto")["stats"]
    recall = {int(b.replace(",", "")): r for b, r in auto["cv_recall"].items()}
    assert sorted(recall) == list(BUCKET_CHOICES)
    assert auto["buckets"] == max(BUCKET_CHOICES, key=lambda b: (recall[b], -b))
    fixed = {}
    for b in BUCKET_CHOICES:
        stats = run(str(b), buckets=b)["stats"]
        assert stats["buckets"] == b and stats["cv_recall"] == {}
        fixed[b] = precision(tmp_path / str(b))
    assert precision(tmp_path / "auto") >= max(fixed.values()) - 0.02
    # each pool document is weighed without its own n-grams, so even 300,000 buckets over a
    # 2,000-document pool find the target (weighed with them: precision ~0.8)
    assert fixed[300_000] >= 0.9


def test_dsir_cross_validates_on_a_sample_of_the_pool(mixture, tmp_path, monkeypatch):
    """A pool over the sample's bound (here ~6% of its 2.5M n-grams): the cut of each bucket count
    is placed on the sample, and the selection still finds the target."""
    import datasel.stages.shift as shift

    tmp, n_py, _ = mixture
    monkeypatch.setattr(shift, "CV_POOL_NGRAMS", 150_000)
    stage = ShiftDsir(target=str(tmp / "target.parquet"), size=n_py)
    m = datasel.run(stage, tmp / "pool", tmp_path / "out", quiet=True)
    assert len(m["stats"]["cv_recall"]) == len(shift.BUCKET_CHOICES)
    assert precision(tmp_path / "out") >= 0.9


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
        (["--size", "5", "--buckets", "0"], "--buckets must be >= 1, got 0"),
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


def _vector_pool(folder, shards=4, rows=150, seed=0):
    """Pool shards with an `embedding` column: ~15% of rows near the target's centre, every
    tenth row a copy of its shard's first vector (exact ties), ~3% without text. Returns the
    target's path."""
    rng = np.random.default_rng(seed)
    centre = np.eye(8)[0] * 3
    folder.mkdir()
    for part in range(shards):
        v = rng.normal(size=(rows, 8))
        near = rng.random(rows) < 0.15
        v[near] = v[near] * 0.3 + centre
        v[::10] = v[0]
        texts = [None if rng.random() < 0.03 else f"doc {part}-{i}" for i in range(rows)]
        ids = [f"{part}-{i}" for i in range(rows)]
        _with_vectors(folder / f"{part}.parquet", v, id=ids, text=texts)
    target = folder.parent / "target.parquet"
    _with_vectors(target, rng.normal(size=(40, 8)) * 0.3 + centre, text=["t"] * 40)
    return target


def _grads_in_input_order(out):
    rows = read_dataset(out).to_pylist() + read_removed(out).to_pylist()
    return sorted(rows, key=lambda r: [int(p) for p in r["id"].split("-")])


def test_gotd_on_a_sample_ranks_every_row_by_its_c_transform(tmp_path):
    """A pool larger than --ot-sample: the transport is solved on a seeded sample, every row
    with text gets a gradient, rows without text are removed as empty_text (null gradient), the
    kept rows are those topk keeps over all gradients (exact ties to the earlier row), and the
    same seed gives the same output."""
    from datasel.ops.topk import topk

    target = _vector_pool(tmp_path / "pool")
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        stage = ShiftGotd(target=str(target), size=120, ot_sample=64, seed=3)
        m = datasel.run(stage, tmp_path / "pool", out, quiet=True, workers=2)
        outs.append((m, out))
    m, out = outs[0]
    blank = m["texts"]["null"]
    assert blank > 0 and m["kept"] == 120 and m["rows_in"] == 600
    assert m["removed"] == {"gotd:not_selected": 600 - 120 - blank, "gotd:empty_text": blank}
    assert m["stats"]["ot_rows"] == 64 and m["stats"]["ot_after_rows"] == 64
    rows = _grads_in_input_order(out)
    assert all((r["gotd_grad"] is None) == (r["text"] is None) for r in rows)
    live = [r for r in rows if r["text"] is not None]
    grad = np.array([r["gotd_grad"] for r in live])
    assert len(np.unique(grad)) < len(grad) - 40  # the copies tie exactly
    kept = {r["id"] for r in read_dataset(out).to_pylist()}
    assert kept == {live[j]["id"] for j in topk(grad, 120, largest=False)}
    assert m["cutoffs"]["gotd_grad"][0]["value"] == grad[topk(grad, 120, largest=False)].max()
    again = outs[1][1]
    assert read_dataset(again).equals(read_dataset(out))
    assert outs[1][0]["stats"] == m["stats"]
    near = sum(r["id"] in kept and r["embedding"][0] > 1.5 for r in live)
    assert near >= 0.6 * 120  # ~15% of 582 near the target: ~87 of them, nearly all picked


def test_gotd_c_transform_of_the_whole_pool_gives_the_solved_gradients(tmp_path, monkeypatch):
    """The sampled path's potentials (soft c-transform of the target's potential) equal the
    exact solve's when the sample is the whole pool: same gradients, same selection."""
    target = _vector_pool(tmp_path / "pool")
    stage = ShiftGotd(target=str(target), size=120)
    datasel.run(stage, tmp_path / "pool", tmp_path / "exact", quiet=True)
    real = ShiftGotd.gradients
    monkeypatch.setattr(ShiftGotd, "gradients", lambda self, *a, exact: real(self, *a, exact=False))
    datasel.run(stage, tmp_path / "pool", tmp_path / "streamed", quiet=True)
    exact = _grads_in_input_order(tmp_path / "exact")
    streamed = _grads_in_input_order(tmp_path / "streamed")
    a = np.array([r["gotd_grad"] for r in exact if r["text"] is not None])
    b = np.array([r["gotd_grad"] for r in streamed if r["text"] is not None])
    assert np.abs(a - b).max() < 1e-5 * np.abs(a).max()
    ids = lambda out: set(read_dataset(out).column("id").to_pylist())  # noqa: E731
    assert ids(tmp_path / "exact") == ids(tmp_path / "streamed")


def test_gotd_select_never_holds_every_vector(tmp_path, monkeypatch):
    """On a pool above --ot-sample, select reads no side array whole, solves on the sample
    only, and computes the other potentials a block of rows at a time."""
    import datasel.ops.sinkhorn as ot
    import datasel.stages.shift as shift
    from datasel.stage import Staged

    target = _vector_pool(tmp_path / "pool")
    seen = {"solve": [], "c-transform": []}

    def watch(name, fn):
        def wrapper(x, *a, **kw):
            seen[name].append(len(x))
            return fn(x, *a, **kw)

        return wrapper

    monkeypatch.setattr(ot, "sinkhorn", watch("solve", ot.sinkhorn))
    monkeypatch.setattr(ot, "soft_c_transform", watch("c-transform", ot.soft_c_transform))
    monkeypatch.setattr(shift, "BLOCK_ROWS", 50)
    concat = Staged.concat

    def no_vectors(self, name, *a):
        assert name != "gotd_emb", "select concatenated every vector"
        return concat(self, name, *a)

    monkeypatch.setattr(Staged, "concat", no_vectors)
    stage = ShiftGotd(target=str(target), size=300, ot_sample=64)
    m = datasel.run(stage, tmp_path / "pool", tmp_path / "out", quiet=True)
    assert seen["solve"] == [64, 64]  # the pool's sample, then the selection's
    assert max(seen["c-transform"]) == 50 and sum(seen["c-transform"]) == 600 - m["texts"]["null"]


def test_gotd_on_a_quarter_of_the_pool_selects_as_the_whole_solve(mixture, tmp_path):
    """Solved on a sample of a quarter of the pool, the selection stays the whole solve's."""
    tmp, n_py, n = mixture
    outs = {}
    for name, sample in (("whole", n), ("quarter", n // 4)):
        stage = ShiftGotd(target=str(tmp / "target.parquet"), size=n_py, fit_sample=3000, ot_sample=sample)  # fmt: skip
        m = datasel.run(stage, tmp / "pool", tmp_path / name, quiet=True)
        outs[name] = set(read_dataset(tmp_path / name).column("id").to_pylist())
        assert m["stats"]["ot_rows"] == sample
    assert len(outs["whole"] & outs["quarter"]) >= 0.85 * n_py
    assert precision(tmp_path / "quarter") >= precision(tmp_path / "whole") - 0.05


def test_gotd_on_a_pool_without_text_removes_every_row_as_empty(tmp_path):
    target = _vector_pool(tmp_path / "pool", shards=1, rows=20)
    table = pq.read_table(tmp_path / "pool" / "0.parquet")
    blank = pa.array([None] * 10 + [" "] * 10, pa.string())
    table = table.set_column(table.schema.get_field_index("text"), "text", blank)
    pq.write_table(table, tmp_path / "pool" / "0.parquet")
    m = datasel.run(ShiftGotd(target=str(target), size=5), tmp_path / "pool", tmp_path / "o", quiet=True)  # fmt: skip
    assert m["kept"] == 0 and m["removed"] == {"gotd:empty_text": 20}
    assert m["stats"]["selected"] == 0


def test_gotd_whitening_separates_a_near_domain_that_raw_cosines_do_not(tmp_path):
    """Two news-like domains differ along one direction of little spread (7) and vary along
    the big ones that five far domains spread the pool over (1-5): on raw cosines that
    variation hides the difference; whitened on the pool's covariance the two separate."""
    rng = np.random.default_rng(0)
    d, n = 16, 400
    centres = {f"far{i}": np.eye(d)[1 + i] * 10 for i in range(5)}
    centres["target"] = np.eye(d)[0] * 10 + np.eye(d)[7] * 0.4
    centres["other"] = np.eye(d)[0] * 10 - np.eye(d)[7] * 0.4  # the near domain
    noise = {
        "far": np.full(d, 0.5),
        "news": np.where((np.arange(d) >= 1) & (np.arange(d) <= 5), 2, 0.1),
    }
    domains = [name for name in centres for _ in range(n)]
    v = np.concatenate(
        [
            c + rng.normal(size=(n, d)) * noise["far" if k.startswith("far") else "news"]
            for k, c in centres.items()
        ]
    )
    (tmp_path / "pool").mkdir()
    ids = [str(i) for i in range(len(v))]
    _with_vectors(tmp_path / "pool" / "0.parquet", v, id=ids, text=["x"] * len(v), domain=domains)
    target = centres["target"] + rng.normal(size=(60, d)) * noise["news"]
    _with_vectors(tmp_path / "target.parquet", target, text=["t"] * 60)
    got = {}
    for whiten in (True, False):
        stage = ShiftGotd(target=str(tmp_path / "target.parquet"), size=n, whiten=whiten)
        datasel.run(stage, tmp_path / "pool", tmp_path / str(whiten), quiet=True)
        picked = read_dataset(tmp_path / str(whiten)).column("domain").to_pylist()
        got[whiten] = picked.count("target") / n
    assert got[True] >= 0.85 and got[False] <= 0.65, got


def test_gotd_rows_without_a_vector_are_removed_not_ranked(tmp_path):
    """A row with text but no vector (null: `datasel embed` of punctuation only; or a zero
    vector) was an error, or was whitened to minus the pool's mean and ranked there: now it is
    removed as no_vector. NaN in a vector is a one-line error naming the row."""
    rng = np.random.default_rng(0)
    near = rng.normal(size=(20, 8)) * 0.1 + np.eye(8)[0] * 3
    pool = np.concatenate([near, rng.normal(size=(80, 8))]).astype(np.float32)
    pool[[5, 50]] = 0  # no vector
    ids = [f"r{i}" for i in range(100)]
    table = pa.table({"id": ids, "text": ids, "embedding": embedding_array(pool)})
    none = pa.array([i == 70 for i in range(100)])  # null vector, with text
    table = table.set_column(2, "embedding", pa.compute.if_else(none, None, table["embedding"]))
    pq.write_table(table, tmp_path / "pool.parquet")
    target = (rng.normal(size=(30, 8)) * 0.1 + np.eye(8)[0] * 3).astype(np.float32)
    _with_vectors(tmp_path / "target.parquet", target, text=["t"] * 30)
    stage = ShiftGotd(target=str(tmp_path / "target.parquet"), size=10)
    m = datasel.run(stage, tmp_path / "pool.parquet", tmp_path / "out", quiet=True)
    assert m["kept"] == 10 and m["removed"] == {"gotd:not_selected": 87, "gotd:no_vector": 3}
    gone = read_removed(tmp_path / "out")
    no_vector = gone.filter(pa.compute.equal(gone.column("reason"), "gotd:no_vector"))
    assert sorted(no_vector.column("id").to_pylist()) == ["r5", "r50", "r70"]
    assert no_vector.column("gotd_grad").null_count == 3

    pool[7, 3] = np.nan
    _with_vectors(tmp_path / "nan.parquet", pool, id=ids, text=ids)
    with pytest.raises(datasel.DataselError, match="NaN or infinite values in 1 rows .*'r7'"):
        datasel.run(stage, tmp_path / "nan.parquet", tmp_path / "o2", quiet=True)


@pytest.mark.parametrize("cls", [ShiftDsir, ShiftGotd])
def test_a_fraction_that_rounds_to_no_row_warns(tmp_path, cls):
    """--fraction 0.01 of 12 rows is 0.12 rows: nothing is selected, and the manifest says why
    (it said nothing: an empty selection looked like a result)."""
    rows = [{"id": str(i), "text": f"document {i} about topic {i % 3}"} for i in range(12)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:3]), tmp_path / "target.parquet")
    stage = cls(target=str(tmp_path / "target.parquet"), fraction=0.01)
    m = datasel.run(stage, tmp_path / "pool.parquet", tmp_path / "out", quiet=True)
    assert m["kept"] == 0 and m["removed_total"] == 12
    name = cls.name.replace("-", " ")
    assert m["warnings"] == [f"{name}: --fraction 0.01 of 12 rows rounds to 0 rows: none selected"]
