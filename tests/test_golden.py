"""Every stage's and shipped config's outputs are unchanged (see tests/golden.py).

A failure names the case, the step and the file whose rows changed. If the change is intended,
say so in the commit and update: DATASEL_GOLDEN_UPDATE=1 python -m pytest tests/test_golden.py
"""

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("fasttext")

from tests.golden import run_all, same  # noqa: E402

EXPECTED = Path(__file__).parent / "golden" / "fingerprints.json"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("golden")


@pytest.fixture(scope="module")
def got(work):
    return run_all(work)


@pytest.mark.timeout(1800)  # ~1 min on an idle 2-core machine; much longer under load
def test_outputs_match_golden_fingerprints(got):
    if os.environ.get("DATASEL_GOLDEN_UPDATE"):
        EXPECTED.parent.mkdir(exist_ok=True)
        EXPECTED.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(EXPECTED.read_text())
    assert sorted(got) == sorted(want), "cases added or missing"
    changed = [
        f"{case}/{step}/{item}: {want[case][step].get(item)} -> {value}"
        for case in want
        for step, files in got[case].items()
        for item, value in files.items()
        if not same(want[case].get(step, {}).get(item), value)
    ]
    missing = [f"{c}/{s}" for c in want for s in want[c] if s not in got[c]]
    assert not changed and not missing, "outputs changed:\n" + "\n".join(changed + missing)


def test_fingerprint_sees_a_changed_value_not_float_noise(got, work):
    """The check can fail: one score changed by 1% of the column's largest, a score's sign or a
    null changes its shard's fingerprint; float32 rounding noise on every value does not."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.golden import table_digest

    table = pq.read_table(work / "score-ppl" / "01-ScorePpl" / "part-00000.parquet")
    want = got["score-ppl"]["01-ScorePpl"]["part-00000.parquet"]
    assert same(want, table_digest(table))
    x = table.column("ppl_bpb").to_numpy()

    def with_scores(values) -> dict:
        col = table.column_names.index("ppl_bpb")
        return table_digest(table.set_column(col, "ppl_bpb", pa.array(values, pa.float64())))

    noise = np.random.default_rng(0).uniform(-1, 1, len(x)) * 2e-7  # float32's epsilon
    assert same(want, with_scores(x * (1 + noise)))
    one = x.copy()
    one[len(x) // 2] += 0.01 * np.abs(x).max()
    assert not same(want, with_scores(one))
    flipped = x.copy()
    flipped[0] = -flipped[0]
    assert not same(want, with_scores(flipped))
    assert not same(want, with_scores([None, *x[1:]]))
