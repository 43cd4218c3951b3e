"""The Ray engine gives the same output as the local one, raises the same errors, and runs
model-loading stages on a pool of actors, which ask for a GPU where the cluster has one. One
local cluster of 2 CPUs that declares 1 GPU (there need be none) serves the whole module."""

import os
import random
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest

ray = pytest.importorskip("ray")

import datasel  # noqa: E402
from datasel.device import pick_device  # noqa: E402
from datasel.engine.ray import RayExecutor  # noqa: E402
from datasel.errors import DataselError  # noqa: E402
from datasel.stage import MapResult, Needs, Stage  # noqa: E402
from datasel.stages.dedup import Dedup  # noqa: E402
from datasel.stages.filter import Filter  # noqa: E402
from datasel.stages.score import ScorePpl  # noqa: E402
from tests.conftest import read_dataset, read_removed, sample_rows, write_parquet  # noqa: E402
from tests.lm_fixtures import make_tiny_lm  # noqa: E402

CPUS = 2
# pytest imports this file as a top-level module that Ray's workers cannot import; ship it
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    # Ray's own resource override (what its autoscaler sets on the nodes it starts), read when
    # the executor starts its local cluster: a GPU resource on a machine without a GPU
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_OVERRIDE_RESOURCES", '{"GPU": 1}')
        ex = RayExecutor(CPUS).start()
    with ex:
        assert ray.cluster_resources().get("GPU") == 1
        yield ex


def output_bytes(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*.parquet"))}


def run_both(stage, src, tmp_path, **kw):
    out = {}
    for engine in ("local", "ray"):
        dst = tmp_path / engine
        out[engine] = (datasel.run(stage, src, dst, engine=engine, quiet=True, **kw), dst)
    return out["local"], out["ray"]


def split_parquet(rows, folder, n=4):
    for i in range(n):
        write_parquet(folder / f"f{i}.parquet", rows[i::n])
    return folder


@pytest.mark.timeout(90)
def test_dedup_same_output_as_local(cluster, tmp_path):
    rng = random.Random(0)
    rows = sample_rows()
    copies = [dict(r, id=r["id"] + "-copy") for r in rows[:60]]
    near = []
    for r in [r for r in rows if len(r["text"].split()) > 150][:20]:
        words = r["text"].split(" ")
        words[rng.randrange(len(words))] = "xq" + str(rng.randrange(10**6))
        near.append(dict(r, id=r["id"] + "-near", text=" ".join(words)))
    src = split_parquet(rows + copies + near, tmp_path / "in")
    (m_local, local), (m_ray, via_ray) = run_both(Dedup(), src, tmp_path)

    assert m_ray["removed"] == m_local["removed"]
    assert m_local["removed"]["exact"] >= 50 and m_local["removed"]["near"] >= 15
    assert read_dataset(via_ray).column("id").to_pylist() == (
        read_dataset(local).column("id").to_pylist()
    )
    assert read_removed(via_ray).equals(read_removed(local))
    assert output_bytes(via_ray) == output_bytes(local)
    assert sorted(output_bytes(local)) == [
        *[f"_removed/part-{i:05d}.parquet" for i in range(4)],
        *[f"part-{i:05d}.parquet" for i in range(4)],
    ]


@pytest.mark.timeout(60)
def test_filter_same_output_as_local(cluster, tmp_path):
    rng = random.Random(1)
    rows = [dict(r, score=rng.random()) for r in sample_rows(800)]
    src = split_parquet(rows, tmp_path / "in")
    (m_local, local), (m_ray, via_ray) = run_both(Filter(top=["score=100"]), src, tmp_path)
    assert m_ray["kept"] == m_local["kept"] == 100
    best = sorted(rows, key=lambda r: -r["score"])[:100]
    assert set(read_dataset(via_ray).column("id").to_pylist()) == {r["id"] for r in best}
    assert output_bytes(via_ray) == output_bytes(local)


@pytest.mark.timeout(60)
def test_error_in_a_task_reaches_the_caller(cluster, tmp_path):
    src = split_parquet(sample_rows(200), tmp_path / "in", n=2)
    with pytest.raises(DataselError, match="no column 'missing'") as err:
        datasel.run(Filter(min=["missing=1"]), src, tmp_path / "out", engine="ray", quiet=True)
    assert type(err.value) is DataselError
    assert "\n" not in str(err.value)


LOADS = 0  # models this process has loaded; each actor process has its own


@dataclass(kw_only=True)
class PidStage(Stage):
    """Records which process mapped each row and how many models that process had loaded."""

    name = "test-pid"
    needs = Needs(model=True)

    def map(self, batch, ctx):
        global LOADS
        if getattr(self, "_model", None) is None:
            LOADS += 1
            self._model = object()  # what a real stage would keep: its weights
        n = batch.num_rows
        batch = batch.append_column("pid", pa.array([os.getpid()] * n, pa.int64()))
        return batch.append_column("loads", pa.array([LOADS] * n, pa.int64()))


@pytest.mark.timeout(60)
def test_model_stage_runs_on_actors_loaded_once(cluster, tmp_path):
    src = split_parquet(sample_rows(400), tmp_path / "in", n=4)
    m = datasel.run(PidStage(), src, tmp_path / "out", engine="ray", quiet=True, batch_rows=50)
    assert m["kept"] == 400
    out = read_dataset(tmp_path / "out")
    pids = set(out.column("pid").to_pylist())
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= max(1, CPUS - 1)
    assert set(out.column("loads").to_pylist()) == {1}  # 4 shards x 2 batches, one load each


@pytest.mark.timeout(30)
def test_actor_stage_needing_a_missing_gpu_fails_fast(cluster, tmp_path):
    class GpuStage(PidStage):
        needs = Needs(model=True, gpus=1000)

    src = split_parquet(sample_rows(40), tmp_path / "in", n=2)
    with pytest.raises(DataselError, match="needs 1000 GPU per worker but the Ray cluster has 1"):
        datasel.run(GpuStage(), src, tmp_path / "out", engine="ray", quiet=True)


@dataclass(kw_only=True)
class ProbedPpl(ScorePpl):
    """`score ppl`, with the GPUs Ray gave the process that mapped each row and the device the
    model runs on there (-1 GPUs: mapped in the driver)."""

    name = "test-probed-ppl"

    def map(self, batch, ctx):
        kept = super().map(batch, ctx).kept
        context = ray.get_runtime_context()
        gpus = context.get_assigned_resources().get("GPU", 0.0) if context.get_actor_id() else -1
        n = kept.num_rows
        kept = kept.append_column("gpus", pa.array([gpus] * n, pa.float64()))
        return MapResult(kept.append_column("device", pa.array([self.lm().device] * n)))


@pytest.mark.timeout(180)
def test_model_stage_asks_for_the_gpu_of_a_cluster_that_has_one(cluster, tmp_path):
    lm = make_tiny_lm(tmp_path / "lm", n_positions=64)
    src = split_parquet(sample_rows(60), tmp_path / "in", n=2)
    assert ScorePpl(model=str(lm)).needs.gpus == 1
    datasel.run(ScorePpl(model=str(lm)), src, tmp_path / "local", quiet=True)
    m = datasel.run(ProbedPpl(model=str(lm)), src, tmp_path / "ray", engine="ray", quiet=True)
    assert m["kept"] == 60
    local, via_ray = read_dataset(tmp_path / "local"), read_dataset(tmp_path / "ray")
    assert set(via_ray.column("gpus").to_pylist()) == {1.0}  # each actor holds the one GPU
    # on the GPU where there is a real one, else (as here) on CPU
    assert set(via_ray.column("device").to_pylist()) == {pick_device("auto", "test")}
    assert via_ray.column("id").equals(local.column("id"))
    np.testing.assert_allclose(
        via_ray.column("ppl_bpb").to_numpy(), local.column("ppl_bpb").to_numpy(), rtol=1e-5
    )
