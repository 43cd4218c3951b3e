"""A two-node Ray cluster on one machine (`ray.cluster_utils.Cluster`) gives byte-identical
output to the local engine: dedup (whose select spreads its tasks over the cluster) and a
pipeline of three stages. Input and output sit on a folder both "nodes" see, as on a cluster
with shared storage."""

import random
import sys

import pytest

ray = pytest.importorskip("ray")

import datasel  # noqa: E402
from datasel.stages.dedup import Dedup  # noqa: E402
from datasel.stages.filter import Filter  # noqa: E402
from datasel.stages.heuristics import ScoreHeuristics  # noqa: E402
from tests.conftest import sample_rows, write_parquet  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def task_nodes(tmp_path, monkeypatch):
    """Where the engine's Ray tasks ran: every task passes through `_call`, wrapped here to note
    (node id, what ran) in a file before it runs. Returns a reader of {what: set of nodes}."""
    import datasel.engine.ray as engine_ray

    log = tmp_path / "task-nodes.tsv"
    run = engine_ray._call

    def noted(fn, *args):
        what = f"unit:{args[0].kind}" if fn.__name__ == "do_unit" else fn.__name__
        node = ray.get_runtime_context().get_node_id()
        with open(log, "a") as f:  # one short line per append: whole lines, whatever the order
            f.write(f"{node}\t{what}\n")
        return run(fn, *args)

    monkeypatch.setattr(engine_ray, "_call", noted)

    def nodes() -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for line in log.read_text().splitlines() if log.exists() else []:
            node, what = line.split("\t")
            out.setdefault(what, set()).add(node)
        return out

    return nodes


def files(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*.parquet"))}


def pool(folder):
    rng = random.Random(1)
    rows = sample_rows()
    near = []
    for r in rows[:300:3]:
        words = r["text"].split(" ")
        words[rng.randrange(len(words))] = "zq" + str(rng.randrange(10**6))
        near.append(dict(r, id=r["id"] + "-near", text=" ".join(words)))
    rows = rows + [dict(r, id=r["id"] + "-copy") for r in rows[:40]] + near
    for i in range(4):
        write_parquet(folder / f"f{i}.parquet", rows[i::4])
    return folder


@pytest.mark.timeout(300)
@pytest.mark.parametrize("memory", ["1GB", "64KB"])
def test_dedup_on_two_nodes_equals_local(two_nodes, tmp_path, monkeypatch, memory, task_nodes):
    """With a 64KB budget and no small-corpus shortcut, select's scatter, group and verify
    tasks run as Ray tasks on the cluster, many key ranges of them, on both nodes."""
    import datasel.stages.dedup as dedup

    if memory == "64KB":
        monkeypatch.setattr(dedup, "PARALLEL_BANDS_FROM", 0)
    src = pool(tmp_path / "in")
    out = {}
    for engine in ("local", "ray"):
        stage = Dedup(memory=memory)
        m = datasel.run(stage, src, tmp_path / engine, engine=engine, workers=2, quiet=True)
        out[engine] = (m["removed"], files(tmp_path / engine))
    assert out["local"][0]["near"] >= 90 and out["local"][0]["exact"] >= 40
    assert out["ray"] == out["local"]
    ran = task_nodes()
    both = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(both) == 2
    units = ran["unit:stage"] | ran["unit:apply"] | ran["save_unit_decision"]
    # map tasks, writes and each unit's decision, by tasks on both nodes (SPREAD is best effort:
    # all four map tasks landed on one node in one run of hundreds)
    assert ran["unit:stage"] and units == both
    if memory == "64KB":  # select's own tasks, on both nodes
        select = ran["_scatter"] | ran["_group"] | ran["_verify_pairs"]
        assert select == both and ran["_group"] == both


@pytest.mark.timeout(300)
def test_three_stage_pipeline_on_two_nodes_equals_local(two_nodes, tmp_path, task_nodes):
    src = pool(tmp_path / "in")
    steps = [
        Dedup(),
        ScoreHeuristics(),
        Filter(min=["gopher_words=50"], top_fraction=["gopher_alpha_words=0.5"]),
    ]
    out = {}
    for engine in ("local", "ray"):
        datasel.Pipeline(steps).run(src, tmp_path / engine, engine=engine, workers=2, quiet=True)
        out[engine] = files(tmp_path / engine)
    assert len(out["local"]) >= 6
    assert out["ray"] == out["local"]
    both = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert task_nodes()["unit:map"] == both  # heuristics' map tasks ran on both nodes
