"""The Ray engine gives the same output as the local one, raises the same errors, and runs
model-loading stages on a pool of actors. One local 2-CPU cluster serves the whole module."""

import os
import random
import sys
from dataclasses import dataclass
from typing import ClassVar

import pyarrow as pa
import pytest

ray = pytest.importorskip("ray")

import datasel  # noqa: E402
from datasel.engine.ray import RayExecutor  # noqa: E402
from datasel.errors import DataselError  # noqa: E402
from datasel.stage import Stage  # noqa: E402
from datasel.stages.dedup import Dedup  # noqa: E402
from datasel.stages.filter import Filter  # noqa: E402
from tests.conftest import read_dataset, read_removed, sample_rows, write_parquet  # noqa: E402

CPUS = 2
# pytest imports this file as a top-level module that Ray's workers cannot import; ship it
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def cluster():
    with RayExecutor(CPUS).start() as ex:
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
    loads_model: ClassVar[bool] = True
    num_gpus: ClassVar[float] = 0

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
        num_gpus: ClassVar[float] = 1000

    src = split_parquet(sample_rows(40), tmp_path / "in", n=2)
    with pytest.raises(DataselError, match="needs 1000 GPU per worker"):
        datasel.run(GpuStage(), src, tmp_path / "out", engine="ray", quiet=True)
