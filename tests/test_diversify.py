import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import datasel
from datasel.cli import app, register_stages
from datasel.ops.quotas import allocate, allocate_nested, kids_weights
from datasel.stages.diversify import Diversify
from datasel.stages.embed import Embed
from tests.conftest import read_dataset, read_removed, sample_rows, write_parquet

register_stages()
runner = CliRunner()
K = 20


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The bundled sample (2,250 real documents, 7 domains) with 64-dim hashing embeddings."""
    root = tmp_path_factory.mktemp("div")
    write_parquet(root / "raw.parquet", sample_rows())
    datasel.run(Embed(dim=64), root / "raw.parquet", root / "emb", quiet=True)
    table = read_dataset(root / "emb")
    rng = np.random.default_rng(0)
    extra = {
        "score": rng.random(table.num_rows),
        "fb": (np.array(table.column("domain").to_pylist()) == "math_word_problems") * 1.0,
        "selected": rng.random(table.num_rows) < 0.1,
    }
    for name, values in extra.items():
        table = table.append_column(name, pa.array(values))
    pq.write_table(table, root / "scored.parquet")
    return root


def run(stage, src, dst, **kw):
    return datasel.run(stage, src, dst, quiet=True, **kw)


def output(folder) -> tuple[pa.Table, pa.Table]:
    return read_dataset(folder), read_removed(folder)


def per_cluster(table: pa.Table, k: int = K) -> np.ndarray:
    return np.bincount(table.column("cluster").to_numpy(), minlength=k)


def test_selects_the_budget_and_writes_cluster_columns(embedded, tmp_path):
    m = run(Diversify(k=K, fraction=0.1), embedded / "emb", tmp_path / "o")
    kept, removed = output(tmp_path / "o")
    assert (
        m["rows_in"] == 2250 == m["kept"] + m["removed_total"] == kept.num_rows + removed.num_rows
    )
    assert kept.num_rows == 225
    assert set(removed.column("reason").to_pylist()) == {"diversify:not_sampled"}
    assert kept.schema.field("cluster").type == pa.int32()
    assert kept.schema.field("cluster_dist").type == pa.float32()
    assert "cluster" in removed.schema.names
    x = np.stack(kept.column("embedding").to_numpy(zero_copy_only=False))
    c = kept.column("cluster").to_numpy()
    # every row's cluster is its nearest centroid: the rows of a cluster are closer to their
    # own mean than to the mean of any other cluster, on average
    means = np.stack([x[c == j].mean(0) for j in np.unique(c)])
    assert (np.argmax(x @ means.T, axis=1) == np.searchsorted(np.unique(c), c)).mean() > 0.8
    stats = json.loads((tmp_path / "o" / "_manifest.json").read_text())["stats"]
    assert stats["k"] == K and sum(stats["largest_clusters"]["picked"]) == 225
    assert sum(stats["groups"]["picked"]) == 225


@pytest.mark.parametrize("quota", ["equal", "proportional"])
def test_quotas_per_cluster(embedded, tmp_path, quota):
    stage = Diversify(k=K, size=300, levels=1, quota=quota, quota_by="rows", max_similarity=1.0)
    run(stage, embedded / "emb", tmp_path / "o")
    kept, removed = output(tmp_path / "o")
    sizes = per_cluster(kept) + per_cluster(removed)
    want = allocate(sizes, 300, sizes if quota == "proportional" else None)
    np.testing.assert_array_equal(per_cluster(kept), want)
    if quota == "equal":  # small clusters are taken whole, the rest share the leftover equally
        assert np.all((want == sizes) | (want >= want[want < sizes].min()))
        assert want[want < sizes].max() - want[want < sizes].min() <= 1


@pytest.mark.parametrize("quota", ["equal", "sqrt"])
def test_levels_2_quotas_over_groups_exactly(embedded, tmp_path, quota):
    stage = Diversify(k=K, size=300, quota=quota, quota_by="rows", max_similarity=1.0)
    run(stage, embedded / "emb", tmp_path / "o")
    g = json.loads((tmp_path / "o" / "_manifest.json").read_text())["stats"]["groups"]
    assert g["count"] >= 2
    size = np.array(g["size"])
    want = allocate(size, 300, None if quota == "equal" else np.sqrt(size))
    assert g["picked"] == want.tolist()
    if quota == "sqrt":  # between equal and proportional: large groups get more, not all
        assert want[0] > want[-1] and want[0] / want[-1] < size[0] / size[-1]


def test_seed_determinism_and_cached_map(embedded, tmp_path, monkeypatch):
    ids = lambda f: sorted(read_dataset(f).column("id").to_pylist())  # noqa: E731
    run(Diversify(k=K, size=200, seed=3), embedded / "emb", tmp_path / "a", workers=2)
    run(Diversify(k=K, size=200, seed=3), embedded / "emb", tmp_path / "b", workers=1)
    run(Diversify(k=K, size=200, seed=4), embedded / "emb", tmp_path / "c")
    assert ids(tmp_path / "a") == ids(tmp_path / "b") != ids(tmp_path / "c")
    # a new --size reuses the cached clusters: no k-means, no map
    import datasel.ops.kmeans as km

    monkeypatch.setattr(km, "fit_kmeans", lambda *a, **k: pytest.fail("k-means refitted"))
    monkeypatch.setattr(Diversify, "map", lambda *a: pytest.fail("map rerun"))
    run(Diversify(k=K, size=150, seed=3), embedded / "emb", tmp_path / "a", overwrite=True)
    assert len(ids(tmp_path / "a")) == 150


def test_weight_by_samples_by_score(embedded, tmp_path):
    stage = Diversify(
        k=K,
        size=300,
        levels=1,
        quota="equal",
        weight_by="score",
        temperature=1e-4,
        max_similarity=1.0,
    )
    run(stage, embedded / "scored.parquet", tmp_path / "o")
    kept, removed = output(tmp_path / "o")
    # a near-zero temperature: the highest-scored rows of each cluster
    for c in range(K):
        mine = kept.filter(pa.compute.equal(kept.column("cluster"), c)).column("score")
        rest = removed.filter(pa.compute.equal(removed.column("cluster"), c)).column("score")
        if len(mine) and len(rest):
            assert pa.compute.min(mine).as_py() > pa.compute.max(rest).as_py()
    stats = json.loads((tmp_path / "o" / "_manifest.json").read_text())["stats"]
    assert stats["mean_score"]["picked"] > stats["mean_score"]["all"] + 0.2


def test_near_duplicates_are_not_picked_twice(tmp_path):
    rows = sample_rows(400)
    dups = [
        {**rows[i], "id": f"{rows[i]['id']}-copy{j}", "text": rows[i]["text"] + f" copy {j}"}
        for i in range(0, 400, 10)
        for j in range(4)
    ]
    write_parquet(tmp_path / "in.parquet", rows + dups)

    def repeated(folder) -> int:
        base = [i.split("-copy")[0] for i in read_dataset(folder).column("id").to_pylist()]
        return len(base) - len(set(base))

    stage = Diversify(k=K, size=150, dim=64, reduce="random", max_similarity=1.0)
    run(stage, tmp_path / "in.parquet", tmp_path / "a")
    stage = Diversify(k=K, size=150, dim=64, reduce="random")
    run(stage, tmp_path / "in.parquet", tmp_path / "b")
    assert read_dataset(tmp_path / "b").num_rows == 150
    assert repeated(tmp_path / "a") >= 3 and repeated(tmp_path / "b") == 0


def test_kids_feedback_shifts_the_next_round(embedded, tmp_path):
    t = 0.5
    stage = Diversify(
        k=K,
        size=400,
        levels=1,
        quota="equal",
        quota_by="rows",
        feedback="fb",
        feedback_temperature=t,
        max_similarity=1.0,
    )
    run(stage, embedded / "scored.parquet", tmp_path / "o")
    kept, removed = output(tmp_path / "o")
    table = pa.concat_tables(
        [kept.drop_columns(["diversify_round"]), removed.drop_columns(["reason"])]
    )
    cluster = table.column("cluster").to_numpy()
    fb = table.column("fb").to_numpy()
    before = table.column("selected").to_numpy(zero_copy_only=False)
    new = (
        np.isin(
            table.column("id").to_numpy(zero_copy_only=False),
            kept.column("id").to_numpy(zero_copy_only=False),
        )
        & ~before
    )
    assert kept.num_rows == before.sum() + 400 and new.sum() == 400
    ids = table.column("id").to_pylist()
    rounds = dict(
        zip(kept.column("id").to_pylist(), kept.column("diversify_round").to_pylist(), strict=True)
    )
    assert {rounds[i] for i, b in zip(ids, before, strict=True) if b} == {0}
    # reference weights: softmax over clusters of the mean feedback of previously picked rows
    mean = np.array([fb[before & (cluster == c)].mean() for c in range(K)])
    w = np.exp(mean / t) / np.exp(mean / t).sum()
    np.testing.assert_allclose(kids_weights(cluster, fb, before, K, t), w)
    avail = np.bincount(cluster[~before], minlength=K)
    got = np.bincount(cluster[new], minlength=K)
    np.testing.assert_array_equal(got, allocate(avail, 400, w))
    # clusters not capped by their rows get the budget left by the capped ones in proportion
    # to their weights, to within rounding
    free = got < avail
    share = (400 - got[~free].sum()) * w[free] / w[free].sum()
    assert np.abs(got[free] - share).max() < 1
    # the math clusters (feedback 1) have e^(1/T) = 7.4x the weight of the others
    math = np.bincount(cluster, weights=fb, minlength=K) > 0.5 * np.bincount(cluster, minlength=K)
    assert 0 < math.sum() < K
    in_math = np.isin(cluster, np.flatnonzero(math))
    assert (new & in_math).sum() / 400 > (before & in_math).sum() / before.sum() + 0.15


@pytest.mark.parametrize("quota, cluster_quota", [("sqrt", "proportional"), ("equal", "equal")])
def test_kids_weights_multiply_the_levels_2_shares(quota, cluster_quota):
    # uniform feedback weights change nothing: kIDS allocates by the quota rule's own shares
    sizes, groups = np.array([100, 100, 10, 90]), np.array([0, 0, 0, 1])
    stage = Diversify(size=60, quota=quota, cluster_quota=cluster_quota)
    q = stage._quotas(sizes, groups, 60, np.full(4, 0.25), None)
    p = {"equal": 0.0, "sqrt": 0.5, "proportional": 1.0}
    want = allocate_nested(sizes, groups, 60, p[quota], p[cluster_quota])
    assert q.tolist() == want.tolist() == ([17, 17, 2, 24] if quota == "sqrt" else [10, 10, 10, 30])
    # a cluster with twice the feedback weight gets about twice its share
    w = np.array([0.4, 0.2, 0.2, 0.2])
    q2 = stage._quotas(sizes, groups, 60, w, None)
    assert q2[0] > q[0] and q2.sum() == 60


def test_kids_rounds_inside_one_selection(embedded, tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pq.read_table(embedded / "scored.parquet").drop_columns(["selected"]), src)
    stage = Diversify(
        k=K,
        size=301,
        levels=1,
        quota="equal",
        quota_by="rows",
        feedback="fb",
        rounds=2,
        feedback_temperature=0.5,
        max_similarity=1.0,
    )
    run(stage, src, tmp_path / "o")
    kept, removed = output(tmp_path / "o")
    sizes = per_cluster(kept) + per_cluster(removed)
    r = kept.column("diversify_round").to_numpy()
    c = kept.column("cluster").to_numpy()
    first = np.bincount(c[r == 1], minlength=K)
    np.testing.assert_array_equal(first, allocate(sizes, 151))  # round 1: plain kMQ
    labels = np.concatenate([c, removed.column("cluster").to_numpy()])
    fb = np.concatenate([kept.column("fb").to_numpy(), removed.column("fb").to_numpy()])
    mask = np.concatenate([r == 1, np.zeros(removed.num_rows, bool)])
    w = kids_weights(labels, fb, mask, K, 0.5)
    np.testing.assert_array_equal(
        np.bincount(c[r == 2], minlength=K), allocate(sizes - first, 150, w)
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "10", "--weight-by", "nope"], "--weight-by: no column 'nope'"),
        (["--size", "10", "--feedback", "nope", "--rounds", "2"], "--feedback: no column 'nope'"),
        (["--size", "10", "--feedback", "fb"], "--feedback needs a previous selection"),
        (["--size", "10", "--model", "column", "--embedding-column", "vec"], "no column 'vec'"),
        (["--size", "10", "--fraction", "0.1"], "exactly one of --size and --fraction"),
        (["--size", "10", "--cluster-quota", "flat"], "cluster_quota must be equal, sqrt or"),
        (["--size", "10", "--rounds", "3"], "rounds > 1 needs --feedback"),
    ],
)
def test_errors(embedded, tmp_path, args, message):
    src = embedded / "scored.parquet"
    if "fb" in args:
        src = tmp_path / "nosel.parquet"
        pq.write_table(pq.read_table(embedded / "scored.parquet").drop_columns(["selected"]), src)
    r = runner.invoke(app, ["diversify", str(src), str(tmp_path / "o"), "--quiet", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_k_larger_than_the_rows_clamps_with_a_warning(embedded, tmp_path):
    src = tmp_path / "few.parquet"
    pq.write_table(pq.read_table(embedded / "scored.parquet").slice(0, 30), src)
    r = runner.invoke(
        app, ["diversify", str(src), str(tmp_path / "o"), "--k", "50", "--size", "10"]
    )
    warning = "diversify: --k 50 is larger than the number of rows (30): using k=30"
    assert r.exit_code == 0 and warning in " ".join(r.output.split()), r.output
    m = json.loads((tmp_path / "o" / "_manifest.json").read_text())
    assert m["warnings"] == [warning] and m["stats"]["k"] == 30 and m["kept"] == 10
    kept, removed = output(tmp_path / "o")
    assert max(kept.column("cluster").to_pylist() + removed.column("cluster").to_pylist()) < 30
    # the cached map (another --size only) clamps alike
    m = run(Diversify(k=50, size=5), src, tmp_path / "o", overwrite=True)
    assert m["warnings"] == [warning] and m["stats"]["k"] == 30 and m["kept"] == 5


def test_a_size_over_the_rows_selects_them_all_with_a_warning(embedded, tmp_path):
    src = tmp_path / "few.parquet"
    pq.write_table(pq.read_table(embedded / "scored.parquet").slice(0, 30), src)
    warning = "diversify: --size 100 is more than the 30 rows available: using 30"
    m = run(Diversify(k=5, size=100, max_similarity=1), src, tmp_path / "o")
    assert m["warnings"] == [warning] and m["kept"] == 30 == m["rows_in"]
    assert m["removed_total"] == 0
    # with near-duplicate skipping on, some may be left out, each with a reason
    m = run(Diversify(k=5, size=100), src, tmp_path / "o2")
    assert m["warnings"] == [warning] and m["kept"] + m["removed_total"] == 30


def test_mixed_dimension_embeddings(tmp_path):
    rows = [
        {"id": str(i), "text": "t", "embedding": [1.0] * (4 if i % 2 else 5)} for i in range(40)
    ]
    write_parquet(tmp_path / "in.parquet", rows)
    r = runner.invoke(
        app,
        [
            "diversify",
            str(tmp_path / "in.parquet"),
            str(tmp_path / "o"),
            "--k",
            "2",
            "--size",
            "5",
            "--quiet",
        ],
    )
    assert r.exit_code == 2 and "mixes vectors of dimensions 4, 5" in r.output, r.output


# --- the kernels behind --levels 2 and --max-similarity -----------------------------------------


def test_spectral_groups_recover_blocks_of_unequal_spread():
    from datasel.ops.kmeans import cluster_graph, spectral_groups

    # 3 "domains" of 12, 3 and 5 clusters: dense links inside a domain, a few across
    rng = np.random.default_rng(0)
    domain = np.repeat([0, 1, 2], [12, 3, 5])
    a = rng.integers(0, 20, 20_000)  # each row's nearest cluster ...
    b = rng.integers(0, 20, a.size)  # ... and second-nearest: 99% in the same domain
    same = rng.random(a.size) < 0.99
    b[same] = [rng.choice(np.flatnonzero(domain == domain[x])) for x in a[same]]
    groups = spectral_groups(cluster_graph(a, b, 20))
    assert groups.max() + 1 == 3
    assert all(len(set(groups[domain == d])) == 1 for d in range(3))


def test_spectral_groups_keep_a_domain_of_linked_parts_whole():
    """A domain of 6 parts, 30% of whose links cross between its parts, and 3 other domains
    (1% of links across domains): the largest eigengap alone split it into its 6 parts (9
    groups), which equal quotas per group then weighted 6 times; its parts are not separated
    (conductance above 1/8), so it stays one group."""
    from datasel.ops.kmeans import cluster_graph, spectral_groups

    rng = np.random.default_rng(0)
    domain = np.repeat([0, 1, 2, 3], [24, 4, 4, 4])
    part = np.where(domain == 0, np.arange(36) % 6, 10 + domain)
    a = rng.integers(0, 36, 30_000)
    r = rng.random(a.size)
    b = np.empty_like(a)
    for i, x in enumerate(a):
        if r[i] < 0.01:
            pool = np.flatnonzero(domain != domain[x])
        elif domain[x] == 0 and r[i] < 0.31:
            pool = np.flatnonzero((domain == 0) & (part != part[x]))
        else:
            pool = np.flatnonzero((part == part[x]) & (np.arange(36) != x))
        b[i] = rng.choice(pool)
    graph = cluster_graph(a, b, 36)
    groups = spectral_groups(graph)
    assert groups.max() + 1 == 4
    assert all(len(set(groups[domain == d])) == 1 for d in range(4))
    assert spectral_groups(graph, separated=1.0).max() + 1 == 9  # the bare largest gap


def test_spectral_groups_without_structure_make_one_group():
    from datasel.ops.kmeans import cluster_graph, spectral_groups

    rng = np.random.default_rng(1)
    a = rng.integers(0, 30, 20_000)
    b = (a + rng.integers(1, 30, a.size)) % 30  # every pair of clusters linked alike
    assert (spectral_groups(cluster_graph(a, b, 30)) == 0).all()


def test_sample_distinct_is_sample_within_without_duplicates():
    from datasel.ops.quotas import sample_distinct, sample_within

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 6, 500)
    x = rng.standard_normal((500, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    scores = rng.random(500)
    q = allocate(np.bincount(labels), 120)
    want = sample_within(labels, q, 7, scores, 0.5, exclude=np.arange(10))
    got = sample_distinct(
        labels, lambda s: allocate(s, 120), 7, lambda r: x[r], 0.99, scores, 0.5, np.arange(10)
    )
    np.testing.assert_array_equal(got, want)
    # now 100 copies of row 0: at most one copy is picked, and the budget is still met
    x[400:] = x[0]
    labels[400:] = labels[0]
    got = sample_distinct(labels, lambda s: allocate(s, 120), 7, lambda r: x[r], 0.95)
    assert got.size == 120 and np.isin(got, np.r_[0, 400:500]).sum() <= 1


def test_a_named_embedding_column_that_is_missing_is_an_error(embedded, tmp_path):
    """--model auto embeds the texts when there is no `embedding` column, but a column the user
    named (here a typo) must exist rather than be silently replaced by hashing."""
    with pytest.raises(datasel.DataselError, match="no column 'embeding'"):
        run(Diversify(k=K, size=100, embedding_column="embeding"), embedded / "emb", tmp_path / "o")


BLANK_ROWS = [
    {"id": "empty", "text": "", "domain": "none"},
    {"id": "blank", "text": " \t\n ", "domain": "none"},
    {"id": "null", "text": None, "domain": "none"},
]


def diversify_all_with(tmp_path, n: int, inserted: list[dict], embed_first: bool) -> dict:
    """Diversify keeping every row of `n` sample rows with `inserted` in their middle, the
    vectors computed here or by `datasel embed` first; the manifest."""
    rows = [{k: r[k] for k in ("id", "text", "domain")} for r in sample_rows(n)]
    write_parquet(tmp_path / "in.parquet", rows[: n // 2] + inserted + rows[n // 2 :])
    src = tmp_path / "in.parquet"
    if embed_first:
        run(Embed(dim=32), src, tmp_path / "emb")
        src = tmp_path / "emb"
    return run(Diversify(k=5, fraction=1.0, max_similarity=1.0, dim=32), src, tmp_path / "out")


@pytest.mark.parametrize("embed_first", [False, True])
def test_rows_without_text_are_removed_not_selected(tmp_path, embed_first):
    """A text with nothing in it has no place among clusters: removed as empty_text, whether
    the vectors are computed here or come from `datasel embed` (null there)."""
    m = diversify_all_with(tmp_path, 300, BLANK_ROWS, embed_first)
    assert m["rows_in"] == 303 and m["kept"] == 300
    assert m["removed"] == {"diversify:empty_text": 3} and m["texts"] == {"null": 1, "empty": 2}
    gone = read_removed(tmp_path / "out")
    assert sorted(gone.column("id").to_pylist()) == ["blank", "empty", "null"]


def test_rows_without_text_beside_unsampled_rows_of_one_file(tmp_path):
    """Rows set aside as empty_text and rows select leaves out share a file's _removed/ shard:
    before, the second kind had cluster columns the first had not, and writing it failed."""
    rows = [{k: r[k] for k in ("id", "text", "domain")} for r in sample_rows(100)]
    write_parquet(tmp_path / "in.parquet", rows[:50] + BLANK_ROWS + rows[50:])
    m = run(Diversify(k=5, size=40, dim=32), tmp_path / "in.parquet", tmp_path / "out")
    assert m["rows_in"] == 103 and m["kept"] == 40
    assert m["removed"] == {"diversify:not_sampled": 60, "diversify:empty_text": 3}
    gone = read_removed(tmp_path / "out")
    blank = gone.filter(pa.compute.equal(gone.column("reason"), "diversify:empty_text"))
    assert blank.column("cluster").null_count == 3 and gone.column("cluster").null_count == 3


@pytest.mark.parametrize("embed_first", [False, True])
def test_texts_without_a_word_have_no_vector_and_are_not_selected(tmp_path, embed_first):
    """Punctuation only: no word for the hashing embedder, whose vector is then zero. A zero
    vector joined whichever centroid was shortest and was sampled there; now such a row is
    removed as no_vector, whether embedded here or by `datasel embed` (null there)."""
    marks = [{"id": f"p{i}", "text": t, "domain": "none"} for i, t in enumerate(["!!!", "* * *"])]
    m = diversify_all_with(tmp_path, 200, marks, embed_first)
    assert m["kept"] == 200 and m["removed"] == {"diversify:no_vector": 2}
    assert sorted(read_removed(tmp_path / "out").column("id").to_pylist()) == ["p0", "p1"]


@pytest.mark.parametrize("levels", [1, 2])
def test_identical_rows_leave_clusters_empty_and_still_select(tmp_path, levels):
    """k-means on copies of one text leaves all but one cluster empty: the near-duplicate
    sampler took its cluster count from the largest label and failed on the quota rule's k."""
    write_parquet(tmp_path / "in.parquet", [{"id": str(i), "text": "one text"} for i in range(30)])
    m = run(Diversify(k=5, size=10, levels=levels), tmp_path / "in.parquet", tmp_path / "out")
    assert m["kept"] == 1 and m["removed"] == {"diversify:not_sampled": 29}  # copies of one row


def test_sample_distinct_with_the_last_clusters_empty():
    from datasel.ops.quotas import sample_distinct

    x = np.eye(4, dtype=np.float32)
    labels = np.array([0, 0, 1, 1])  # clusters 2 and 3 of 4 hold no row
    got = sample_distinct(
        labels, lambda s: allocate(s, 3, np.ones(4)), 0, lambda r: x[r], 0.95, k=4
    )
    assert got.size == 3


def test_a_previous_selection_behind_an_empty_first_file_is_kept(embedded, tmp_path):
    """kIDS reads the --selected-column's presence from the staged shards: an empty first file
    (a shard without columns) hid it, and the previous picks were silently dropped."""
    table = pq.read_table(embedded / "scored.parquet").slice(0, 400)
    (tmp_path / "in").mkdir()
    pq.write_table(table.slice(0, 0), tmp_path / "in" / "a.parquet")
    pq.write_table(table, tmp_path / "in" / "b.parquet")
    before = sum(table.column("selected").to_pylist())
    stage = Diversify(k=5, size=30, feedback="fb", max_similarity=1.0)
    m = run(stage, tmp_path / "in", tmp_path / "out")
    assert m["kept"] == before + 30
    kept = pq.read_table(tmp_path / "out" / "part-00001.parquet")  # part 0: the empty file's
    rounds = kept.column("diversify_round").to_pylist()
    assert rounds.count(0) == before and rounds.count(1) == 30


def test_non_finite_vectors_are_a_one_line_error(tmp_path):
    rows = [{"id": str(i), "text": "t", "embedding": [1.0, float(i)]} for i in range(20)]
    rows[7]["embedding"] = [float("nan"), 1.0]
    write_parquet(tmp_path / "in.parquet", rows)
    with pytest.raises(datasel.DataselError, match="column 'embedding' .*NaN or infinite.*'7'"):
        run(Diversify(k=2, size=5), tmp_path / "in.parquet", tmp_path / "o")


def test_byte_quotas_share_out_text_not_rows(embedded, tmp_path):
    # the sample's math problems are ~480 bytes, its speeches ~5,500: equal quotas in rows give
    # a short-document domain a sliver of the text; the defaults give every group about as much
    # text (the held-out loss over domains beat random's only with shares of text: methods.md)
    got = {}
    for by, stage in (
        ("rows", Diversify(k=K, size=300, quota="equal", quota_by="rows", max_similarity=1.0)),
        ("bytes", Diversify(k=K, size=300, max_similarity=1.0)),  # the defaults
    ):
        run(stage, embedded / "emb", tmp_path / by)
        g = json.loads((tmp_path / by / "_manifest.json").read_text())["stats"]["groups"]
        room = np.array(g["picked"]) < np.array(g["size"])  # groups not taken whole
        got[by] = np.array(g["picked_text_bytes"])[room]
        assert sum(g["picked"]) == 300
    assert got["bytes"].max() / got["bytes"].min() < 1.5
    assert got["rows"].max() / got["rows"].min() > 3


def test_allocate_nested_in_bytes_gives_each_group_its_text_share():
    sizes, groups = np.array([400, 400, 50, 150]), np.array([0, 0, 1, 2])
    row_bytes = np.array([500.0, 500.0, 5000.0, 2000.0])
    q = allocate_nested(sizes, groups, 200, 0.0, 1.0, row_bytes)
    text = np.bincount(groups, weights=q * row_bytes)
    assert q.sum() == 200 and np.ptp(text) / text.mean() < 0.05  # equal text, not equal rows
    # power 1 in bytes is a random sample's shares: the same as power 1 in rows
    assert allocate_nested(sizes, groups, 200, 1.0, 1.0, row_bytes).tolist() == (
        allocate_nested(sizes, groups, 200, 1.0, 1.0).tolist()
    )
