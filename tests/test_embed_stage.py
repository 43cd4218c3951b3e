import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import datasel
from datasel.cli import app, register_stages
from datasel.stages.embed import Embed, read_embeddings
from scorers.embed import HashingEmbedder
from tests.conftest import read_dataset, sample_rows, write_parquet
from tests.test_embed import TOPIC_A, TOPIC_B, mean_pool_reference, tiny_bert  # noqa: F401

register_stages()
runner = CliRunner()


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    path = tmp_path_factory.mktemp("embed") / "in.parquet"
    write_parquet(path, sample_rows(600))
    return path


def vectors(folder) -> tuple[list[str], np.ndarray]:
    table = read_dataset(folder)
    return table.column("id").to_pylist(), read_embeddings(table.column("embedding"))


@pytest.mark.parametrize("reduce", ["svd", "random"])
def test_embed_adds_unit_vectors_deterministically(docs, tmp_path, reduce):
    m = datasel.run(Embed(dim=48, reduce=reduce), docs, tmp_path / "a", quiet=True, workers=2)
    assert m["rows_in"] == 600 == m["kept"] and m["removed_total"] == 0
    field = pq.read_schema(sorted((tmp_path / "a").glob("part-*.parquet"))[0]).field("embedding")
    assert str(field.type) == "fixed_size_list<element: float>[48]"
    ids, x = vectors(tmp_path / "a")
    assert x.shape == (600, 48) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    # the same as the embedder fitted by hand on the same rows (all 600: fit_sample > rows)
    rows = {r["id"]: r["text"] for r in sample_rows(600)}
    ref = HashingEmbedder(dim=48, reduce=reduce).fit(list(rows.values()))
    np.testing.assert_allclose(x, ref.encode([rows[i] for i in ids]), atol=1e-5)
    # one worker or two, same seed: the same vectors; another seed: other vectors
    datasel.run(Embed(dim=48, reduce=reduce), docs, tmp_path / "b", quiet=True, workers=1)
    np.testing.assert_array_equal(vectors(tmp_path / "b")[1], x)
    datasel.run(Embed(dim=48, reduce=reduce, seed=1), docs, tmp_path / "c", quiet=True)
    assert not np.allclose(vectors(tmp_path / "c")[1], x)


def test_embed_neighbours_share_a_domain(docs, tmp_path):
    datasel.run(Embed(dim=64), docs, tmp_path / "a", quiet=True)
    table = read_dataset(tmp_path / "a")
    x = read_embeddings(table.column("embedding"))
    domain = np.array(table.column("domain").to_pylist())
    sim = x @ x.T
    np.fill_diagonal(sim, -2)
    assert (domain[sim.argmax(1)] == domain).mean() > 0.9  # LSA on real text: 0.98 here


def test_embed_hf_encoder_folder(tiny_bert, tmp_path):  # noqa: F811
    texts = [TOPIC_A, TOPIC_B, "the river and the kernel", "water"]
    write_parquet(tmp_path / "in.parquet", [{"id": str(i), "text": t} for i, t in enumerate(texts)])
    stage = Embed(model=str(tiny_bert), device="cpu", batch_size=2)
    datasel.run(stage, tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    _, x = vectors(tmp_path / "out")
    np.testing.assert_allclose(x, mean_pool_reference(tiny_bert, texts), atol=2e-5)
    assert stage.needs.single_process and not Embed().needs.single_process


def test_embed_cli(docs, tmp_path):
    r = runner.invoke(app, ["embed", str(docs), str(tmp_path / "o"), "--dim", "16", "--quiet"])
    assert r.exit_code == 0, r.output
    assert vectors(tmp_path / "o")[1].shape == (600, 16)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reduce", "pca"], "reduce must be svd or random"),
        (["--model", "no/such/folder"], "--model no/such/folder: unknown embedding model"),
        (["--device", "tpu"], "device must be auto, cpu or cuda"),
    ],
)
def test_embed_errors(docs, tmp_path, args, message):
    r = runner.invoke(app, ["embed", str(docs), str(tmp_path / "o"), "--quiet", *args])
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_rows_without_text_get_a_null_vector(tmp_path):
    """The encoder's vector of "" is a vector of nothing: null, counted in the manifest."""
    rows = sample_rows(60) + [
        {"id": "empty", "text": ""},
        {"id": "blank", "text": " \n "},
        {"id": "null", "text": None},
    ]
    write_parquet(tmp_path / "in.parquet", rows)
    m = datasel.run(Embed(dim=16), tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    assert m["kept"] == 63 and m["texts"] == {"null": 1, "empty": 2}
    table = read_dataset(tmp_path / "out")
    is_null = dict(
        zip(
            table.column("id").to_pylist(),
            table.column("embedding").is_null().to_pylist(),
            strict=False,
        )
    )
    assert [i for i, v in is_null.items() if v] == ["empty", "blank", "null"]
    x = read_embeddings(table.column("embedding").filter(table.column("embedding").is_valid()))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("reduce", ["svd", "random"])
def test_a_text_without_a_word_gets_a_null_vector(tmp_path, reduce):
    """Punctuation only: the hashing embedder finds no word, and its vector was zero, not of unit
    length (diversify then clustered and sampled it): null, as for a blank text."""
    rows = sample_rows(60) + [{"id": "dots", "text": "... !!!"}, {"id": "rule", "text": "* * *"}]
    write_parquet(tmp_path / "in.parquet", rows)
    m = datasel.run(
        Embed(dim=16, reduce=reduce), tmp_path / "in.parquet", tmp_path / "o", quiet=True
    )
    assert m["kept"] == 62
    table = read_dataset(tmp_path / "o")
    nulls = table.filter(table.column("embedding").is_null()).column("id").to_pylist()
    assert nulls == ["dots", "rule"]
    x = read_embeddings(table.column("embedding").filter(table.column("embedding").is_valid()))
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
