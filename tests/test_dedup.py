import random

import numpy as np
import pytest

import datasel
from datasel.stages.dedup import Dedup
from tests.conftest import read_dataset, read_removed, sample_rows, write_jsonl, write_parquet


def edit_words(text: str, frac: float, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(frac * len(words)))):
        words[i] = "xq" + str(rng.randrange(10**6))
    return " ".join(words)


def long_docs(n):
    return [r for r in sample_rows() if len(r["text"].split()) > 150][:n]


def test_exact_and_near_duplicates(tmp_path):
    rng = random.Random(0)
    docs = long_docs(60)
    rows = [{"id": r["id"], "text": r["text"]} for r in docs]
    rows.append({"id": "exact", "text": "  " + docs[0]["text"].upper().replace(" ", "  \n") + " "})
    rows.append({"id": "near", "text": edit_words(docs[1]["text"], 0.01, rng)})
    rows.append({"id": "far", "text": edit_words(docs[2]["text"], 0.5, rng)})
    write_jsonl(tmp_path / "in.jsonl", rows)
    m = datasel.run(Dedup(), tmp_path / "in.jsonl", tmp_path / "out", quiet=True)
    removed = {r["id"]: r for r in read_removed(tmp_path / "out").to_pylist()}
    assert set(removed) == {"exact", "near"}
    assert (
        removed["exact"]["reason"] == "exact" and removed["exact"]["duplicate_of"] == docs[0]["id"]
    )
    assert removed["near"]["reason"] == "near" and removed["near"]["duplicate_of"] == docs[1]["id"]
    assert 0.8 < removed["near"]["dedup_jaccard"] < 1.0
    assert m["kept"] == 61 and m["removed"] == {"exact": 1, "near": 1}


@pytest.mark.parametrize("keep, winner", [("first", "a"), ("longest", "b"), ("max:quality", "c")])
def test_keep_policy(tmp_path, keep, winner):
    base = long_docs(1)[0]["text"]
    rows = [
        {"id": "a", "text": base, "quality": 1.0},
        {"id": "b", "text": base + " and a few more words at the end", "quality": 0.5},
        {"id": "c", "text": base.upper(), "quality": 2.0},
    ]
    write_parquet(tmp_path / "in.parquet", rows)
    datasel.run(Dedup(keep=keep), tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    assert read_dataset(tmp_path / "out").column("id").to_pylist() == [winner]
    assert set(read_removed(tmp_path / "out").column("duplicate_of").to_pylist()) == {winner}


def test_incremental_index_across_dumps(tmp_path):
    rng = random.Random(1)
    docs = long_docs(120)
    dump_a = [{"id": f"a{i}", "text": r["text"]} for i, r in enumerate(docs[:80])]
    dump_b = [{"id": f"b{i}", "text": r["text"]} for i, r in enumerate(docs[80:])]
    dup_ids = set()
    for j, i in enumerate(rng.sample(range(80), 10)):  # B repeats 10 documents of A, lightly edited
        dump_b.append({"id": f"bdup{j}", "text": edit_words(docs[i]["text"], 0.01, rng)})
        dup_ids.add(f"bdup{j}")
    write_jsonl(tmp_path / "a" / "dump.jsonl", dump_a)
    write_jsonl(tmp_path / "b" / "dump.jsonl", dump_b)
    index = str(tmp_path / "index")
    ma = datasel.run(Dedup(index=index), tmp_path / "a", tmp_path / "out-a", quiet=True)
    assert ma["kept"] == 80
    mb = datasel.run(Dedup(index=index), tmp_path / "b", tmp_path / "out-b", quiet=True)
    removed = read_removed(tmp_path / "out-b")
    assert set(removed.column("id").to_pylist()) == dup_ids
    assert all(d.startswith("a") for d in removed.column("duplicate_of").to_pylist())
    assert mb["stats"]["index_documents_before"] == 80
    # replaying dump B (same inputs, same settings) changes nothing, output or index
    segments = sorted(p.name for p in (tmp_path / "index").glob("seg-*"))
    mb2 = datasel.run(Dedup(index=index), tmp_path / "b", tmp_path / "out-b2", quiet=True)
    assert mb2["kept"] == mb["kept"] and mb2["removed"] == mb["removed"]
    assert sorted(p.name for p in (tmp_path / "index").glob("seg-*")) == segments
    with pytest.raises(datasel.DataselError, match="other settings"):
        datasel.run(
            Dedup(index=index, num_perm=128), tmp_path / "b", tmp_path / "out-c", quiet=True
        )


def true_jaccard(a: str, b: str, n: int = 5) -> float:
    import re

    def sh(t):
        w = re.findall(r"[0-9a-z\x80-\U0010ffff]+", t.lower())
        return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}

    x, y = sh(a), sh(b)
    return len(x & y) / len(x | y)


def test_precision_and_recall_on_injected_duplicates(tmp_path):
    rng = random.Random(2)
    docs = [r for r in sample_rows() if len(r["text"].split()) > 60]
    rows = [{"id": r["id"], "text": r["text"]} for r in docs]
    originals = {r["id"]: r["text"] for r in rows}
    injected = {}
    for j, src in enumerate(rng.sample(docs, 300)):
        kind = j % 3
        if kind == 0:
            text = src["text"]
        elif kind == 1:
            text = edit_words(src["text"], rng.uniform(0.01, 0.03), rng)
        else:
            paras = src["text"].split("\n\n")
            text = (
                src["text"] + "\n\n" + rng.choice(docs)["text"][:200]
                if len(paras) < 3
                else "\n\n".join(paras[:-1])
            )
        injected[f"dup{j}"] = (src["id"], true_jaccard(src["text"], text))
        rows.append({"id": f"dup{j}", "text": text})
    write_jsonl(tmp_path / "in.jsonl", rows)
    datasel.run(Dedup(), tmp_path / "in.jsonl", tmp_path / "out", quiet=True)
    removed = read_removed(tmp_path / "out").to_pylist()
    texts = {
        **originals,
        **{k: r["text"] for k, r in zip(injected, rows[len(docs) :], strict=False)},
    }
    precise = [true_jaccard(texts[r["id"]], texts[r["duplicate_of"]]) >= 0.7 for r in removed]
    assert np.mean(precise) >= 0.99
    gone = {r["id"] for r in removed}
    should = [k for k, (_, j) in injected.items() if j >= 0.8]
    assert len(should) > 150
    recall = np.mean([k in gone for k in should])
    assert recall >= 0.95, recall


def test_bands_spread_over_workers_give_the_same_result(tmp_path, monkeypatch):
    import datasel.stages.dedup as dedup_mod

    rng = random.Random(3)
    docs = long_docs(90)
    rows = [{"id": r["id"], "text": r["text"]} for r in docs]
    rows += [
        {"id": f"n{i}", "text": edit_words(d["text"], 0.02, rng)} for i, d in enumerate(docs[:20])
    ]
    for i in range(3):
        write_jsonl(tmp_path / "in" / f"f{i}.jsonl", rows[i::3])
    one = datasel.run(Dedup(), tmp_path / "in", tmp_path / "one", workers=1, quiet=True)
    threads = datasel.run(Dedup(), tmp_path / "in", tmp_path / "threads", workers=2, quiet=True)
    monkeypatch.setattr(dedup_mod, "PARALLEL_BANDS_FROM", 0)
    two = datasel.run(Dedup(), tmp_path / "in", tmp_path / "two", workers=2, quiet=True)
    assert one["removed"] == two["removed"] == threads["removed"]
    assert one["removed"]["near"] >= 15
    pairs = lambda out: sorted(  # noqa: E731
        (r["id"], r["duplicate_of"]) for r in read_removed(out).to_pylist()
    )
    assert pairs(tmp_path / "one") == pairs(tmp_path / "two") == pairs(tmp_path / "threads")


# pairs from every band in one run, or cut by key range into many runs merged by pair range
@pytest.mark.parametrize("memory", ["1GB", "64KB"])
def test_a_pair_found_in_many_bands_is_verified_once(tmp_path, monkeypatch, memory):
    import datasel.stages.dedup as dedup_mod

    rng = random.Random(4)
    docs = long_docs(30)
    rows = [{"id": r["id"], "text": r["text"]} for r in docs]
    rows += [{"id": f"n{i}", "text": edit_words(d["text"], 0.01, rng)} for i, d in enumerate(docs)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    verified = []
    similar = dedup_mod._similar

    def spy(store, u, v, accept):
        verified.extend(zip(u.tolist(), v.tolist(), strict=True))
        return similar(store, u, v, accept)

    monkeypatch.setattr(dedup_mod, "_similar", spy)
    m = datasel.run(
        Dedup(memory=memory), tmp_path / "in.jsonl", tmp_path / "out", workers=1, quiet=True
    )
    # each copy shares most of its 32 bands with its original, yet the pair is checked once
    assert m["removed"]["near"] >= 25
    assert len(verified) == len(set(verified)) >= 25


def test_large_string_text_dedups_as_string_text(tmp_path):
    """Polars writes large_string; past its first 256 KB a batch is hashed in slices, where
    Arrow's cast to string once gave ascii_lower an array it turned into zeros."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sample_rows()
    rows = [{"id": r["id"], "text": r["text"]} for r in rows] + [
        {"id": f"copy{i}", "text": r["text"].upper()} for i, r in enumerate(rows[::50])
    ]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "small.parquet")
    large = table.set_column(1, "text", table.column("text").cast(pa.large_string()))
    pq.write_table(large, tmp_path / "large.parquet")
    out = {}
    for name in ("small", "large"):
        datasel.run(Dedup(), tmp_path / f"{name}.parquet", tmp_path / name, quiet=True)
        out[name] = sorted(
            (r["id"], r["duplicate_of"]) for r in read_removed(tmp_path / name).to_pylist()
        )
    assert out["large"] == out["small"] and len(out["small"]) >= len(rows[::50])


def test_runs_sharing_an_index_take_turns(tmp_path):
    import threading

    from datasel.lock import FolderLock

    write_jsonl(tmp_path / "in.jsonl", [{"id": r["id"], "text": r["text"]} for r in long_docs(40)])
    index = tmp_path / "index"
    index.mkdir()
    done = {}

    def dedup():
        stage = Dedup(index=str(index))
        done["m"] = datasel.run(stage, tmp_path / "in.jsonl", tmp_path / "out", quiet=True)

    with FolderLock(index / "_lock"):  # another run is in its select
        worker = threading.Thread(target=dedup)
        worker.start()
        worker.join(timeout=3)
        assert worker.is_alive()  # it waits for its turn
    worker.join(timeout=60)
    assert done["m"]["kept"] == 40
