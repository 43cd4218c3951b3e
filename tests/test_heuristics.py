import json

import pyarrow as pa
import pytest

import datasel
from datasel.stages.filter import Filter
from datasel.stages.heuristics import GOPHER_MAX, GOPHER_MIN, ScoreHeuristics, gopher_statistics
from tests.conftest import read_dataset, write_jsonl


def stats(*texts):
    return {k: v.to_pylist() for k, v in gopher_statistics(pa.array(list(texts))).items()}


def test_each_statistic_on_texts_built_for_it():
    s = stats(
        "the cat and the dog",  # 5 words, 2 distinct stop words (the, and)
        "# a\n# b\n#### c d",  # 7 words, 6 "#"
        "- one\n\n- two\n* three\nfour",  # 4 non-blank lines, 3 bullets
        "wait...\nmore…\nend",  # 2 of 3 lines end with an ellipsis
        "12 34 56 word",  # 1 of 4 words holds a letter
        "Über straße",  # letters beyond ASCII count
    )
    assert s["words"] == [5, 7, 7, 3, 4, 2]
    assert s["mean_word_length"][0] == pytest.approx(15 / 5)
    assert s["stop_words"] == [2, 0, 0, 0, 0, 0]
    assert s["symbol_ratio"][1] == pytest.approx(6 / 7)  # '#' per word (the larger one)
    assert s["symbol_ratio"][3] == pytest.approx(2 / 3)  # '...' and '…' per word
    assert s["bullet_lines"][2] == pytest.approx(3 / 4)  # the blank line is not counted
    assert s["ellipsis_lines"][3] == pytest.approx(2 / 3)
    assert s["alpha_words"][4] == pytest.approx(1 / 4) and s["alpha_words"][5] == 1.0


def test_stop_words_are_whole_words_any_case():
    s = stats("Theory offered other thesis", "THE end WITH it", "the the the the")
    assert s["stop_words"] == [0, 2, 1]


def test_no_words_give_zero_counts_and_null_ratios():
    s = stats("", None, "   \n\t ")
    assert s["words"] == [0, 0, 0] and s["stop_words"] == [0, 0, 0]
    for name in ("mean_word_length", "symbol_ratio", "alpha_words", "bullet_lines"):
        assert s[name] == [None, None, None], name


def test_stage_and_paper_filter_give_every_row_a_reason(tmp_path):
    good = " ".join(["the quick brown fox jumps over a lazy dog with grace"] * 6)
    rows = [
        {"text": good},  # passes every rule
        {"text": "the short text and nothing more"},  # under 50 words
        {"text": " ".join(["1234 5678 9012 3456"] * 20) + " " + good},  # too few letter words
        {"text": ""},
        {"text": None},
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    steps = [ScoreHeuristics(), Filter(min=GOPHER_MIN, max=GOPHER_MAX)]
    manifests = datasel.Pipeline(steps).run(tmp_path / "in.jsonl", tmp_path / "out", quiet=True)
    assert manifests[0]["kept"] == 5
    m = manifests[1]
    assert m["kept"] == 1 and m["kept"] + m["removed_total"] == 5
    assert m["removed"] == {"filter:gopher_words<50": 3, "filter:gopher_alpha_words<0.8": 1}
    kept = read_dataset(tmp_path / "out" / "02-filter")
    assert kept.column("text").to_pylist() == [good]
    assert kept.column("gopher_words").to_pylist() == [66]


def test_cli_column_prefix(tmp_path):
    from typer.testing import CliRunner

    from datasel.cli import app, register_stages

    register_stages()
    write_jsonl(tmp_path / "in.jsonl", [{"text": "the cat and the dog"}])
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["score", "heuristics", str(tmp_path / "in.jsonl"), str(out), "--column", "h", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "_manifest.json").read_text())["kept"] == 1
    assert read_dataset(out).column("h_stop_words").to_pylist() == [2]


def test_lines_of_unicode_spaces_are_blank():
    """A line of no-break or ideographic spaces (HTML's &nbsp;) holds nothing: it must not
    dilute the bullet and ellipsis shares, and a text of them has no line to share."""
    s = stats(
        "- one\n\u00a0\n- two\n\u3000\u00a0", "\u00a0\u00a0• item\nend…\u00a0", "\u3000\u00a0"
    )
    assert s["bullet_lines"] == [1.0, 0.5, None]
    assert s["ellipsis_lines"] == [0.0, 0.5, None]


def test_stop_words_next_to_letters_beyond_ascii_are_no_words():
    """RE2's \\b knows ASCII only: "éthe" holds no word "the", nor does "thé" written with a
    combining accent."""
    assert stats("éthe andé", "the\u0301 of", "(the) to.")["stop_words"] == [0, 1, 2]
