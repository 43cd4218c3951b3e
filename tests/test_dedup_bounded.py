"""Dedup's select in bounded memory: a tiny budget (many key-range partitions, many pair runs,
small verification chunks) decides exactly as the unbounded implementation did.

The expected fingerprints were recorded with the unbounded implementation (every band's keys
and every candidate pair in one process) before it was replaced, on the corpora built here.
"""

import hashlib
import json
import random

import pytest

import datasel
import datasel.stages.dedup as dedup_mod
from datasel.stages.dedup import Dedup, parse_bytes
from tests.conftest import read_dataset, read_removed, sample_rows, write_parquet

# recorded with the unbounded implementation (commit 6160124)
EXPECTED = {
    "first": "53946dd6430f1f04",
    "longest": "22d5b12570a28450",
    "index-a": "73979a0577685ea3",
    "index-b": "5b0d76a44ed260b9",
}


def corpus(seed: int, prefix: str, n: int = 3000) -> list[dict]:
    """Documents of 1-4 real paragraphs; a quarter of them copies of earlier ones (exact, with
    ~1-6% of their words edited, or a paragraph dropped), and a few without words."""
    rng = random.Random(seed)
    pars = [p for r in sample_rows() for p in r["text"].split("\n\n") if len(p.split()) >= 8]
    rows: list[dict] = []
    for i in range(n):
        if rows and rng.random() < 0.25:
            src = rng.choice(rows)["text"]
            kind = rng.randrange(4)
            if kind == 1:
                words = src.split(" ")
                for j in rng.sample(
                    range(len(words)), max(1, int(rng.uniform(0.01, 0.06) * len(words)))
                ):
                    words[j] = f"zz{rng.randrange(10**6)}"
                src = " ".join(words)
            elif kind == 2:
                src = "\n\n".join(src.split("\n\n")[:-1]) or src
            elif kind == 3:
                src = src.upper()
            text = src
        elif rng.random() < 0.01:
            text = rng.choice(["", "  ", "!!", "..."])
        else:
            text = "\n\n".join(rng.sample(pars, rng.randint(1, 4)))
        rows.append({"id": f"{prefix}{i:05d}", "text": text})
    return rows


def write_dump(folder, rows, shards: int = 5) -> None:
    for s in range(shards):
        write_parquet(folder / f"f{s}.parquet", rows[s::shards])


def fingerprint(out) -> str:
    kept = sorted(read_dataset(out).column("id").to_pylist())
    removed = read_removed(out)
    gone = sorted(
        (r["id"], r["reason"], r["duplicate_of"], round(r["dedup_jaccard"], 4))
        for r in (removed.to_pylist() if removed is not None else [])
    )
    return hashlib.sha256(json.dumps([kept, gone]).encode()).hexdigest()[:16]


TINY = "64KB"  # a few hundred keys per partition, a few hundred pairs per run


def on_processes(monkeypatch, memory) -> list:
    """With the tiny budget, select's tasks go to worker processes (as for a big corpus).
    Returns the plans select made, as they are made."""
    if memory == TINY:
        monkeypatch.setattr(dedup_mod, "PARALLEL_BANDS_FROM", 0)
    plans, plan = [], dedup_mod._plan
    monkeypatch.setattr(dedup_mod, "_plan", lambda *a: plans.append(plan(*a)) or plans[-1])
    return plans


def assert_cut(plans, memory) -> None:
    for p in plans:
        assert p.ranges >= (8 if memory == TINY else 1)
        assert p.ranges == 1 or memory == TINY


@pytest.mark.parametrize("keep", ["first", "longest"])
@pytest.mark.parametrize("memory", [None, TINY])
def test_bounded_select_decides_as_the_unbounded_one(tmp_path, monkeypatch, keep, memory):
    plans = on_processes(monkeypatch, memory)
    write_dump(tmp_path / "in", corpus(5, "d"))
    opts = {"memory": memory} if memory else {}
    m = datasel.run(Dedup(keep=keep, **opts), tmp_path / "in", tmp_path / "out", quiet=True)
    assert m["removed"]["near"] > 100 and m["removed"]["exact"] > 100
    assert fingerprint(tmp_path / "out") == EXPECTED[keep]
    assert_cut(plans, memory)


@pytest.mark.parametrize("memory", [None, TINY])
def test_bounded_incremental_index_decides_as_the_unbounded_one(tmp_path, monkeypatch, memory):
    plans = on_processes(monkeypatch, memory)
    a = corpus(6, "a")
    b = corpus(7, "b")
    rng = random.Random(8)
    b += [{"id": f"bx{i}", "text": r["text"]} for i, r in enumerate(rng.sample(a, 300))]
    write_dump(tmp_path / "a", a)
    write_dump(tmp_path / "b", b, shards=3)
    opts = {"memory": memory} if memory else {}
    index = str(tmp_path / "index")
    datasel.run(Dedup(index=index, **opts), tmp_path / "a", tmp_path / "out-a", quiet=True)
    mb = datasel.run(Dedup(index=index, **opts), tmp_path / "b", tmp_path / "out-b", quiet=True)
    assert mb["stats"]["index_documents_before"] > 2000
    assert fingerprint(tmp_path / "out-a") == EXPECTED["index-a"]
    assert fingerprint(tmp_path / "out-b") == EXPECTED["index-b"]
    assert len(plans) == 2
    assert_cut(plans, memory)


def test_the_budget_is_not_part_of_the_run(tmp_path):
    """Another --memory gives the same output, so a rerun with it finds the run done."""
    write_dump(tmp_path / "in", corpus(9, "d", n=300), shards=2)
    one = datasel.run(Dedup(), tmp_path / "in", tmp_path / "out", quiet=True)
    two = datasel.run(Dedup(memory="64KB"), tmp_path / "in", tmp_path / "out", quiet=True)
    assert one == two and "memory" not in one["params"]


def test_memory_budget_is_parsed_or_refused():
    assert parse_bytes("64KB") == 64 << 10 and parse_bytes("1.5GB") == 3 << 29
    assert parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match="memory"):
        Dedup(memory="lots")
