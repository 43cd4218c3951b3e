"""The stage contract: what each stage declares it needs, the model holder, ctx.texts, and a
torch model stage that forks no worker (tests/test_ray.py runs one on a cluster with a GPU)."""

import pickle
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest

import datasel
from datasel.device import pick_device
from datasel.io import Columns
from datasel.stage import Context, Needs, Stage
from datasel.stages.dedup import Dedup
from datasel.stages.diversify import Diversify
from datasel.stages.embed import Embed
from datasel.stages.pick import Pick
from datasel.stages.score import ScoreFastText, ScorePpl
from datasel.stages.shift import ShiftDsir, ShiftGotd
from tests.conftest import read_dataset, write_parquet
from tests.test_embed import TOPIC_A, TOPIC_B, tiny_bert  # noqa: F401

TORCH = Needs(model=True, gpus=1, single_process=True)


@pytest.mark.parametrize(
    "stage, needs",
    [
        (Dedup(), Needs()),
        (ScoreFastText(model="m.bin", label="hq"), Needs()),
        (
            ScorePpl(model="lm/"),
            Needs(model=True, gpus=1, single_process=True, cut_by_model_size=True),
        ),
        (
            Pick(model="lm/"),
            Needs(text=False, model=True, gpus=1, single_process=True, cut_by_model_size=True),
        ),
        (Embed(), Needs(model=True)),  # hashing: fitted once, no GPU, any number of processes
        (
            Embed(model="minilm"),
            Needs(model=True, gpus=1, single_process=True, cut_by_model_size=True),
        ),
        (Diversify(k=2, size=1, model="minilm"), Needs(model=True)),  # the backend is fit's choice
        (ShiftDsir(target="t", size=1), Needs()),
        (ShiftDsir(target="t", size=1, template="{a} {b}"), Needs(text=False)),
        (ShiftGotd(target="t", size=1), Needs()),
        (ShiftGotd(target="t", size=1, model="hashing"), Needs()),
        (ShiftGotd(target="t", size=1, model="my/encoder"), TORCH),
        (
            ShiftGotd(target="t", size=1, model="minilm", template="{a}"),
            Needs(text=False, model=True, gpus=1, single_process=True),
        ),
    ],
    ids=lambda x: x.name if isinstance(x, Stage) else "",
)
def test_each_stage_declares_what_it_needs(stage, needs):
    assert stage.needs == needs


@pytest.mark.timeout(120)
def test_diversify_needs_a_gpu_once_fit_chose_a_torch_backend(tiny_bert, tmp_path):  # noqa: F811
    rows = [{"id": str(i), "text": f"{TOPIC_A if i % 2 else TOPIC_B} {i}"} for i in range(40)]
    write_parquet(tmp_path / "in.parquet", rows)
    stage = Diversify(k=2, size=10, model=str(tiny_bert), device="cpu")
    assert stage.needs == Needs(model=True)
    m = datasel.run(stage, tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    assert m["rows_in"] == 40
    assert stage.needs == TORCH


def test_gpus_only_on_a_cluster_that_has_them():
    assert Needs(model=True, gpus=1).gpus_on(0) == 0
    assert Needs(model=True, gpus=1).gpus_on(8) == 1
    assert Needs(model=True).gpus_on(8) == 0


@dataclass(kw_only=True)
class Counting(Stage):
    name = "test-counting"

    def __post_init__(self):
        self.loads = 0

    def load(self):
        self.loads += 1
        return np.arange(3)


def test_a_loaded_model_is_kept_in_the_process_and_left_out_of_pickles():
    stage = Counting()
    first = stage.loaded("m", stage.load)
    assert stage.loaded("m", stage.load) is first and stage.loads == 1
    stage.loaded("fitted", stage.load, travels=True)
    copy = pickle.loads(pickle.dumps(stage))
    assert "m" not in copy._loaded.models  # loaded again where the copy runs
    np.testing.assert_array_equal(copy._loaded.models["fitted"], np.arange(3))
    copy.loaded("m", copy.load)
    assert copy.loads == 3  # two loads here, one in the copy
    assert stage.params() == {} and "_loaded" not in repr(stage)  # not a parameter
    stage.unload()
    stage.loaded("m", stage.load)
    assert stage.loads == 3


def test_ctx_texts_reads_the_text_column_with_empty_for_null(tmp_path):
    ctx = Context(columns=Columns(text="body"), work=tmp_path)
    batch = pa.record_batch({"body": ["a", None, ""], "text": ["x", "y", "z"]})
    assert ctx.texts(batch) == ["a", "", ""]


def test_auto_device_is_cpu_without_a_gpu():
    pytest.importorskip("torch")
    import torch

    assert pick_device("auto", "test") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(datasel.DataselError, match="--device cuda: torch sees no CUDA"):
            pick_device("cuda", "test")


@pytest.mark.timeout(60)  # it hung
def test_gotd_with_a_torch_model_runs_in_one_process(tiny_bert, tmp_path):  # noqa: F811
    # forked workers hung on torch, which the driver had used for the target's embeddings
    (tmp_path / "in").mkdir()
    for i in range(3):
        texts = [(TOPIC_A if j % 2 else TOPIC_B)[: 20 + j] for j in range(30)]
        write_parquet(
            tmp_path / "in" / f"p{i}.parquet",
            [{"id": f"{i}-{j}", "text": t} for j, t in enumerate(texts)],
        )
    write_parquet(tmp_path / "target.parquet", [{"id": "t", "text": TOPIC_A[:60]}] * 5)
    stage = ShiftGotd(
        target=str(tmp_path / "target.parquet"), size=20, model=str(tiny_bert), device="cpu"
    )
    m = datasel.run(stage, tmp_path / "in", tmp_path / "out", quiet=True, workers=2, shard_rows=30)
    assert m["kept"] == 20 and m["rows_in"] == 90
    assert read_dataset(tmp_path / "out").num_rows == 20
