from typer.testing import CliRunner

from datasel.cli import app, register_stages
from tests.conftest import write_jsonl, write_parquet

register_stages()
runner = CliRunner()


def inspect(*args):
    # a wide terminal, so that values are not folded across lines
    return runner.invoke(app, ["inspect", *map(str, args)], env={"COLUMNS": "250"})


def test_a_dataset_without_any_text_column(tmp_path):
    write_parquet(tmp_path / "n.parquet", [{"a": i, "b": i * 0.5} for i in range(5)])
    result = inspect(tmp_path / "n.parquet", "--rows", "2")
    assert result.exit_code == 0, result.output
    assert "5 rows" in result.output and "a (int64), b (double)" in result.output
    assert "1.5" not in result.output and "0.5" in result.output  # rows 0 and 1 only


def test_every_column_of_removed_rows_with_reason_and_duplicate_of(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in ["a b c", "A  b c", "d e f"]])
    out = tmp_path / "out"
    assert (
        runner.invoke(app, ["dedup", str(tmp_path / "in.jsonl"), str(out), "--quiet"]).exit_code
        == 0
    )
    result = inspect(out / "_removed", "--columns", "all")
    assert result.exit_code == 0, result.output
    for name in ("reason", "duplicate_of", "dedup_jaccard"):
        assert name in result.output
    assert "exact" in result.output and "in.jsonl:0" in result.output.replace(" ", "")
    assert "the rows removed by step" in result.output  # the step's manifest, from its parent


def test_a_list_of_columns_in_its_order_and_a_typo(tmp_path):
    rows = [
        {
            "id": f"r{i}",
            "text": "x" * 10,
            "pick_rank": i + 1,
            "pick_scores": [-1.5, -2.0],
            **{f"c{j}": j for j in range(6)},
        }
        for i in range(3)
    ]
    write_parquet(tmp_path / "p.parquet", rows)
    result = inspect(tmp_path / "p.parquet")
    assert result.exit_code == 0, result.output
    assert "showing 6 of 10 columns; --columns all shows every one" in result.output
    assert (
        "c1" in result.output.split("showing")[1] and "c2" not in result.output.split("showing")[1]
    )
    result = inspect(tmp_path / "p.parquet", "--columns", "pick_scores,pick_rank")
    assert result.exit_code == 0, result.output
    table = result.output.split("┏")[1]
    assert table.index("pick_scores") < table.index("pick_rank") and "c0" not in table
    assert "[-1.5, -2.0]" in table
    result = inspect(tmp_path / "p.parquet", "--columns", "pick_score")
    assert result.exit_code == 2
    assert "--columns: no column 'pick_score'; columns are: id, text, pick_rank" in result.output
