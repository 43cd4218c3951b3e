"""Golden outputs: every stage and every shipped config run on fixed inputs, fingerprinted.

`tests/test_golden.py` compares the fingerprints with `tests/golden/fingerprints.json`, so a
refactor that changes any kept row, removed row, reason, score or manifest count fails a test.
Fingerprints hash table *content* (column names, types and every value but the floats) and
sketch the float columns (sums per block of rows), compared within a relative 1e-4: the same
rows computed on another CPU (other SIMD kernels, another summation order: float32 values
differ in their 6th digit) match, one changed score does not. `--exact` hashes file bytes.

Also a tool for a larger before/after check on a benchmark corpus:
    python -m tests.golden --input corpus.parquet --work /tmp/g-before --exact > before.json
    (change the code)
    python -m tests.golden --input corpus.parquet --work /tmp/g-after --exact > after.json
    diff before.json after.json
Update the expected fingerprints only for an intended change:
    DATASEL_GOLDEN_UPDATE=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import datasel

ROOT = Path(__file__).resolve().parents[1]
MANIFEST_KEYS = ("rows_in", "kept", "removed_total", "removed", "texts", "shards")
TARGET = "datasel:target-python-docs"


BLOCK_ROWS = 32  # float values are summed per block of rows: one changed value still shows
RTOL = 1e-4  # float32 noise (summation order, SIMD width) is ~1e-6 of the values: far below


def _round(value):
    if isinstance(value, float):
        return value if not math.isfinite(value) else float(f"{value:.6g}")
    if isinstance(value, list):
        return [_round(v) for v in value]
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    return value


def _float_values(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array] | None:
    """(the row of each value, the values) of a float or list-of-floats column, else None."""
    arr = column.combine_chunks()
    t = arr.type
    if pa.types.is_floating(t):
        return np.arange(len(arr)), arr
    lists = pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)
    if lists and pa.types.is_floating(t.value_type):
        return pc.list_parent_indices(arr).to_numpy(), pc.list_flatten(arr)
    return None


def _float_sketch(rows: np.ndarray, values: pa.Array, n_rows: int) -> tuple[list, dict]:
    """(where the nulls and non-finite values are, and the list lengths: hashed exactly;
    the finite values' sum per block of rows and their total magnitude: compared within
    RTOL, so the same rows computed on another CPU match)."""
    x = values.to_numpy(zero_copy_only=False).astype(np.float64)
    null = values.is_null().to_numpy(zero_copy_only=False)
    finite = np.isfinite(x) & ~null
    odd = [(int(i), "null" if n else repr(float(v))) for i, n, v in zip(
        np.flatnonzero(~finite), null[~finite], x[~finite], strict=True)]  # fmt: skip
    blocks = rows[finite] // BLOCK_ROWS
    sums = np.bincount(blocks, weights=x[finite], minlength=-(-n_rows // BLOCK_ROWS))
    per_row = np.bincount(rows, minlength=n_rows).tolist()
    return [odd, per_row], {
        "abs": float(f"{np.abs(x[finite]).sum():.9g}"),
        "sums": [float(f"{v:.9g}") for v in sums],
    }


def table_digest(table: pa.Table) -> dict:
    """{"rows": a hash of the schema and every value but the floats (and of where the floats
    are null or not finite), "floats": a sketch of each float column's values}."""
    h = hashlib.sha256()
    h.update(repr([(f.name, str(f.type)) for f in table.schema]).encode())
    floats = {}
    for name in table.column_names:
        found = _float_values(table.column(name))
        if found is None:
            values = _round(table.column(name).to_pylist())
        else:
            values, floats[name] = _float_sketch(*found, table.num_rows)
        h.update(json.dumps(values, sort_keys=True, default=str).encode())
    return {"rows": h.hexdigest()[:16], "floats": floats}


def same(want, got) -> bool:
    """Whether two fingerprints of a file (or two manifests' counts) match: exact but for the
    float sketches, whose block sums may differ by RTOL of the column's mean block magnitude."""
    if not (isinstance(want, dict) and "floats" in want and isinstance(got, dict)):
        return want == got
    if want["rows"] != got.get("rows") or want["floats"].keys() != got["floats"].keys():
        return False
    for name, w in want["floats"].items():
        g = got["floats"][name]
        if len(w["sums"]) != len(g["sums"]) or abs(w["abs"] - g["abs"]) > RTOL * w["abs"]:
            return False
        tol = RTOL * w["abs"] / max(1, len(w["sums"])) + 1e-12
        diff = np.abs(np.subtract(w["sums"], g["sums"]))
        if (diff > tol + RTOL * np.abs(w["sums"])).any():
            return False
    return True


def fingerprint(folder: Path, exact: bool = False) -> dict:
    """The rows a step kept and removed (per shard) and its manifest's counts."""
    out = {}
    for sub in ("", "_removed", "_skipped"):
        for f in sorted((folder / sub).glob("*.parquet")):
            name = f"{sub}/{f.name}" if sub else f.name
            if exact:
                out[name] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
            else:
                out[name] = table_digest(pq.read_table(f))
    manifest = json.loads((folder / "_manifest.json").read_text())
    out["manifest"] = {k: manifest.get(k) for k in MANIFEST_KEYS}
    return out


def _steps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if (p / "_manifest.json").is_file())


def make_inputs(work: Path, src: str | None = None) -> dict[str, Path]:
    """A pool with injected near-duplicates in 3 shards, and an instruction table."""
    rows = pq.read_table(src or datasel.SAMPLE).to_pylist()[::2]
    dups = [
        dict(r, id=f"{r['id']}-copy", text=r["text"].replace(" the ", " a ", 3)) for r in rows[::10]
    ]
    pool = rows + dups
    pool_dir = work / "pool"
    pool_dir.mkdir(parents=True, exist_ok=True)
    third = -(-len(pool) // 3)
    for i in range(3):
        part = pool[i * third : (i + 1) * third]
        pq.write_table(pa.Table.from_pylist(part), pool_dir / f"pool-{i}.parquet")
    texts = [r["text"] for r in rows]
    instructions = []
    for i in range(40):
        responses = [texts[(7 * i + j) % len(texts)][: 200 + 40 * j] for j in range(3)]
        responses.append("" if i % 5 == 0 else texts[i][:80])  # empty candidates are removed
        instructions.append(
            {"id": f"q{i}", "instruction": texts[-1 - i][:120], "responses": responses}
        )
    sft = work / "instructions.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in instructions))
    return {"pool": pool_dir, "instructions": sft}


MODELS = Path(__file__).parent / "golden" / "models"  # fastText training is not reproducible


def make_models(work: Path) -> dict[str, Path]:
    """A tiny causal LM (seeded, built here), and the committed fastText domain classifier and
    PreSelect scorer (made once by `train_fasttext_models`: fastText's training is not
    reproducible, so they are files, not code)."""
    from tests.lm_fixtures import make_tiny_lm

    lm = make_tiny_lm(work / "tiny-lm", n_positions=128)
    return {"lm": lm, "fasttext": MODELS / "domain.bin", "preselect": MODELS / "preselect"}


def train_fasttext_models(out: Path = MODELS) -> None:
    from scorers.fasttext import train_classifier
    from scorers.preselect import fit_preselect

    rows = pq.read_table(datasel.SAMPLE).to_pylist()[::3]
    texts, domains = [r["text"] for r in rows], [r["domain"] for r in rows]
    small = {"dim": 10, "bucket": 2_000}
    train_classifier(texts, domains, out / "domain.bin", epoch=5, min_count=3, **small)
    n_models = 4
    losses = [[(len(t) % (97 + 13 * m)) / 10 for m in range(n_models)] for t in texts]
    fit_preselect(
        texts, np.asarray(losses), np.asarray([30.0, 40.0, 45.0, 60.0]), out / "preselect",
        model_names=[f"m{m}" for m in range(n_models)], **small,
    )  # fmt: skip


def stage_cases(models: dict[str, Path]) -> dict[str, list]:
    """Each case: a chain of stages, each run on the previous one's output."""
    from datasel.stages.dedup import Dedup
    from datasel.stages.diversify import Diversify
    from datasel.stages.embed import Embed
    from datasel.stages.filter import Filter
    from datasel.stages.heuristics import ScoreHeuristics
    from datasel.stages.score import ScoreFastText, ScorePpl, ScorePreselect
    from datasel.stages.shift import ShiftDsir, ShiftGotd

    return {
        "dedup": [Dedup(threshold=0.8)],
        "heuristics-filter": [
            ScoreHeuristics(),
            Filter(min=["gopher_words=50", "gopher_alpha_words=0.8"], top=["gopher_words=900"]),
        ],
        "shift-dsir": [ShiftDsir(target=TARGET, fraction=0.2)],
        "shift-gotd": [ShiftGotd(target=TARGET, size=200, model="hashing", dim=64)],
        "embed-diversify": [
            Embed(model="hashing", dim=32),
            Diversify(k=10, size=250, model="hashing", dim=32),
        ],
        "diversify-fraction": [Diversify(k=12, fraction=0.1, model="hashing", dim=48, levels=1)],
        "score-fasttext": [
            ScoreFastText(model=str(models["fasttext"]), label="python_docs"),
            Filter(top_fraction=["fasttext_python_docs=0.3"]),
        ],
        "score-preselect": [ScorePreselect(scorer=str(models["preselect"]))],
        "score-ppl": [ScorePpl(model=str(models["lm"])), Filter(max=["ppl_bpb=12.4"])],
    }


def config_cases(inputs: dict[str, Path], models: dict[str, Path]) -> dict[str, list[str]]:
    """Each shipped config: `datasel run` arguments that point it at local inputs and models."""
    configs = ROOT / "configs"
    pool, lm = str(inputs["pool"]), str(models["lm"])
    return {
        "config-quickstart": [str(configs / "quickstart.yaml")],
        "config-domain-target": [
            str(configs / "domain-target.yaml"), "--input", pool, "--set", f"2.target={TARGET}",
        ],
        "config-sft-instructions": [
            str(configs / "sft-instructions.yaml"), "--input", str(inputs["instructions"]),
            "--set", f"2.model={lm}", "--set", "3.k=5", "--set", "3.model=hashing",
        ],
        "config-pretrain-web": [
            str(configs / "pretrain-web.yaml"), "--input", pool, "--set", f"2.model={lm}",
            "--set", f"3.scorer={models['preselect']}", "--set", "4.max=[ppl_bpb=12.9]",
            "--set", "5.k=10",
            "--set", "5.model=hashing",
        ],
    }  # fmt: skip


def _pick_case(models: dict[str, Path]):
    from datasel.stages.pick import Pick

    return [Pick(model=str(models["lm"]), normalize="mean")]


def run_all(work: Path, src: str | None = None, exact: bool = False) -> dict:
    """Run every case under `work` and return {case: {step: fingerprint}}."""
    from typer.testing import CliRunner

    from datasel.cli import app, register_stages

    work.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs(work, src)
    models = make_models(work)
    results = {}
    for name, chain in stage_cases(models).items():
        results[name] = _run_chain(chain, inputs["pool"], work / name, exact)
    results["pick"] = _run_chain(_pick_case(models), inputs["instructions"], work / "pick", exact)
    register_stages()
    runner = CliRunner()
    for name, args in config_cases(inputs, models).items():
        out = work / name
        res = runner.invoke(app, ["run", *args, "--output", str(out), "--quiet"])
        if res.exit_code != 0:
            raise RuntimeError(f"{name}: datasel run failed:\n{res.output}")
        results[name] = {p.name: fingerprint(p, exact) for p in _steps(out)}
    return results


def _run_chain(chain: list, src: Path, out: Path, exact: bool) -> dict:
    got = {}
    for i, stage in enumerate(chain, 1):
        dst = out / f"{i:02d}-{type(stage).__name__}"
        datasel.run(stage, src, dst, quiet=True)
        got[dst.name] = fingerprint(dst, exact)
        src = dst
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", help="a Parquet file with id, text, domain (default: the sample)")
    ap.add_argument("--work", required=True, help="an empty scratch folder")
    ap.add_argument("--exact", action="store_true", help="hash file bytes, not content")
    ap.add_argument("--train-models", action="store_true", help="remake tests/golden/models")
    args = ap.parse_args()
    if args.train_models:
        return train_fasttext_models()
    json.dump(run_all(Path(args.work), args.input, args.exact), sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
