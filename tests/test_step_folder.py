"""StepFolder names every file a step leaves, and an --overwrite clears only those."""

import pytest

import datasel
from datasel.step_folder import StepFolder
from tests.test_engine import make_bad_input


def files(path):
    return {p for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    "stage", [datasel.Dedup(), datasel.Filter(min=["len=300"])], ids=["select", "map"]
)
def test_a_finished_step_holds_only_the_files_its_step_folder_names(tmp_path, stage):
    src, _, _ = make_bad_input(tmp_path)
    m = datasel.run(stage, src, tmp_path / "out", workers=1, quiet=True, on_bad_rows="skip")
    folder = StepFolder(tmp_path / "out")
    named = {folder.manifest}
    for i in range(m["shards"]):
        named |= {folder.shard(i), folder.removed_shard(i), folder.skipped_shard(i)}
    assert files(folder.path) <= named
    assert folder.shards() == [folder.shard(i) for i in range(m["shards"])]
    assert folder.removed_shards() and all(p in named for p in folder.removed_shards())
    assert any(folder.skipped_shard(i).exists() for i in range(m["shards"]))
    assert folder.finished() and folder.read_manifest()["key"] == m["key"]


def test_overwrite_clears_only_what_a_step_wrote(tmp_path):
    src, _, _ = make_bad_input(tmp_path)
    out = tmp_path / "out"
    datasel.run(datasel.Filter(min=["len=300"]), src, out, quiet=True, on_bad_rows="skip")
    (out / "notes.txt").write_text("mine")
    m = datasel.run(
        datasel.Filter(min=["len=900"]), src, out, quiet=True, on_bad_rows="skip", overwrite=True
    )
    assert (out / "notes.txt").read_text() == "mine"
    assert StepFolder(out).read_manifest()["params"]["min"] == ["len=900"] == m["params"]["min"]
