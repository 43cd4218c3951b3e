r"""What each stage buys: held-out loss of the same proxy LM trained on each stage's selection.

    python benchmarks/proxy_eval.py                              # every section, tiny model, CPU
    python benchmarks/proxy_eval.py --only shift --domain man_pages
    python benchmarks/proxy_eval.py --model small --tokens 10000000 --eval-tokens 200000   # GPU
    python benchmarks/proxy_eval.py --tokens 20000 --pick-tokens 100000 --pool 2000 \
        --eval-tokens 2000 --held 40                             # smoke test, ~7 min

Every arm is judged by `datasel.evaluate` (no training loop here): the same model (`--model`,
default `tiny`), tokenizer, token budget (`--tokens`), data order and seeds (`--seeds`, >= 2), on
../shared/data (`--data`). Per section, a table of held-out bits per byte (mean +- sd over
seeds), the difference to the section's reference arm, and whether it exceeds the spread
(larger than the sum of the two arms' sds, as `datasel eval` calls it). `--out`: all as JSON.

Sections (`--only shift,dedup,diversify,filter,pick`):
  shift      pool of whole dev-corpus documents with the target domain at `--share` (3%); target
             set = 300 held-out documents of the domain, eval set = other held-out documents of
             it. Arms: `shift dsir` and `shift gotd` (defaults, size = the domain's pool count),
             perfect (every pool document of the domain), random-same-size, and the evaluator's
             token-matched random baseline. Bars of issue 14: DSIR/GOT-D within 2% of perfect
             and >= 8% below random.
  dedup      pool with injected exact/near duplicates (dedup_quality.inject); `dedup` (defaults)
             vs the pool as is; eval: held-out documents of every domain.
  diversify  10% of a 7-domain mixture, `diversify` (defaults) vs random-same-size and the
             baseline; mean and worst of the 7 held-out domains.
  filter     Gopher rules (`score heuristics` + configs/quickstart.yaml's thresholds) vs random
             of the same size; eval: held-out documents of every domain. The perplexity filter
             and PreSelect need a real scoring model and are not run here (a note says so).
  pick       fine-tuning (`datasel eval --finetune`) on self-instruct-8way split into train and
             held-out instructions: `pick` vs a random candidate per instruction vs each single
             source (the best one is reported). The base and target model is a tiny random GPT-2
             built from a config (tests/lm_fixtures.py): a smoke-level measure only.

Time: `datasel eval` prints its estimate before it starts. `tiny` trains 1M tokens in ~2.4
CPU-minutes, ~4-7 min wall on the shared 2-core CPU under load (docs/benchmarks.md, eval), so at the default
size: shift 10 runs (~1 h), dedup 4 (~25 min), diversify 6 with 7 eval sets (~45 min), filter
6 (~35 min), pick 20 runs of a 50k-parameter model, 300k tokens each (~10 min, plus ~1.5 min
for `pick` itself). The smoke command above (a smoke test, not a result) took, at load: shift
100 s, dedup + filter 100 s, diversify ~90 s, pick ~130 s. The default size has not been run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import datasel
from datasel.eval.report import difference, seed_stats
from datasel.stages.diversify import Diversify
from datasel.stages.heuristics import GOPHER_MAX, GOPHER_MIN, ScoreHeuristics
from datasel.stages.pick import Pick
from datasel.stages.shift import ShiftDsir, ShiftGotd

sys.path.insert(0, str(Path(__file__).parent))  # dedup_quality's inject
sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.lm_fixtures
from dedup_quality import inject  # noqa: E402

DATA = Path(__file__).parents[1] / "../shared/data"
SECTIONS = ("shift", "dedup", "diversify", "filter", "pick")
MIXTURE = [  # the diversify section's 7 domains
    "python_docs",
    "man_pages",
    "bible_kjv",
    "literature_shakespeare",
    "movie_reviews",
    "abc_news_rural",
    "math_word_problems",
]


def write(rows: list[dict], path: Path) -> str:
    """Write `rows` as Parquet, leaving an identical file untouched: its mtime is part of the
    fingerprints by which datasel.run and datasel.evaluate reuse finished work on a rerun."""
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    data = buf.getvalue().to_pybytes()
    if not path.is_file() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return str(path)


def split_held_out(docs: list[dict], per_domain: int, rng: random.Random):
    """(pool documents, {domain: held-out documents}): `per_domain` held out of each domain."""
    by: dict[str, list[dict]] = {}
    for d in docs:
        by.setdefault(d["domain"], []).append(d)
    pool, held = [], {}
    for dom, rows in sorted(by.items()):
        rng.shuffle(rows)
        held[dom], rest = rows[:per_domain], rows[per_domain:]
        pool += rest
    rng.shuffle(pool)
    return pool, held


def cap(rows: list[dict], n: int | None, rng: random.Random) -> list[dict]:
    return rows if n is None or len(rows) <= n else rng.sample(rows, n)


def judge(args, work: Path, train: dict, evals: dict, *, random_pool: str | None = None, **kw):
    """datasel.evaluate with the benchmark's settings (`kw` overrides); eval.json's content."""
    settings = {
        "model_name": args.model,
        "tokens": args.tokens,
        "seeds": args.seeds,
        "baseline": {"random": random_pool} if random_pool else None,
        "eval_tokens": args.eval_tokens,
        "checkpoints": args.checkpoints,
        "quiet": args.quiet,
    }
    return datasel.evaluate(work / "eval", train, evals, **(settings | kw))


def per_seed(result: dict, arm: str, sets: list[str], how) -> dict:
    """Mean and spread over seeds of `how` (mean, max) over the eval sets' final bits per byte."""
    runs = sorted((r for r in result["runs"] if r["arm"] == arm), key=lambda r: r["seed"])
    return seed_stats([how([r["curve"][-1]["eval"][s]["bpb"] for s in sets]) for r in runs])


def table(title: str, result: dict, reference: str, how=statistics.fmean, label="") -> dict:
    """Print one section's table and return its figures {arm: stats + vs reference}."""
    sets = list(result["eval_sets"])
    arms = list(result["arms"])
    stats = {a: per_seed(result, a, sets, how) for a in arms}
    w = max(map(len, arms))
    print(f"\n{title}" + (f" ({label})" if label else ""))
    print(f"{'arm':<{w}} {'held-out bits/byte':>20} {'vs ' + reference:>16}  exceeds spread")
    rows = {}
    for a in arms:
        s = stats[a]
        cell = (
            f"{s['mean']:.4f} ± {s['spread']:.4f}"
            if s["spread"] is not None
            else f"{s['mean']:.4f}"
        )
        if a == reference:
            d, line = None, f"{'(reference)':>16}"
        else:
            d = difference(s, stats[reference])
            line = f"{d['difference']:+16.4f}  {'yes' if d['exceeds_spread'] else 'no'}"
        print(f"{a:<{w}} {cell:>20} {line}")
        rows[a] = {**s, "vs_reference": d}
    return {"reference": reference, "over_eval_sets": how.__name__, "arms": rows}


# ---------------------------------------------------------------------- sections


def shift(args, docs: list[dict], work: Path) -> dict:
    rng = random.Random(0)
    ours = [d for d in docs if d["domain"] == args.domain]
    if len(ours) < 300 + args.held + 30:
        sys.exit(f"shift: {args.domain} has {len(ours):,} documents; 300 target + "
                 f"{args.held} held-out + some for the pool are needed (try --held or "
                 "another --domain)")  # fmt: skip
    other = cap([d for d in docs if d["domain"] != args.domain], args.pool, rng)
    rng.shuffle(ours)
    target, heldout, rest = ours[:300], ours[300 : 300 + args.held], ours[300 + args.held :]
    k = min(len(rest), int(args.share * len(other) / (1 - args.share)))
    pool = other + rng.sample(rest, k)
    rng.shuffle(pool)
    pool_path = write(pool, work / "pool" / "pool.parquet")
    target_path = write([{"text": d["text"]} for d in target], work / "target.parquet")
    print(f"shift: pool {len(pool):,} documents, {k:,} ({k / len(pool):.1%}) {args.domain}; "
          f"target 300, eval {len(heldout)} held-out {args.domain} documents")  # fmt: skip
    info = {"pool": len(pool), "domain_in_pool": k, "target": 300, "eval_docs": len(heldout)}
    arms = {
        "perfect": write([d for d in pool if d["domain"] == args.domain], work / "perfect.parquet"),
        "random-same-size": write(rng.sample(pool, k), work / "random.parquet"),
    }
    for name, stage in (
        ("dsir", ShiftDsir(target=target_path, size=k)),
        ("gotd", ShiftGotd(target=target_path, size=k)),
    ):
        datasel.run(stage, pool_path, work / name, quiet=True, overwrite=True)
        got = pq.read_table(work / name, columns=["domain"]).column("domain").to_pylist()
        info[f"{name}_precision"] = round(got.count(args.domain) / len(got), 4)
        print(f"  {name}: {len(got):,} selected, precision {info[f'{name}_precision']:.3f}")
        arms[name] = str(work / name)
    evals = {args.domain: write(heldout, work / "heldout.parquet")}
    res = judge(args, work, arms, evals, random_pool=pool_path)
    out = table(f"shift toward {args.domain} (held-out target bits per byte)", res, "random")
    m = {a: v["mean"] for a, v in out["arms"].items()}
    for a in ("dsir", "gotd"):
        vs_perfect = m[a] / m["perfect"] - 1
        vs_random = 1 - m[a] / m["random"]
        out["arms"][a]["bars"] = {
            "within_2pct_of_perfect": vs_perfect <= 0.02,
            "8pct_below_random": vs_random >= 0.08,
        }
        print(f"  {a}: {vs_perfect:+.1%} vs perfect (bar <= +2%), "
              f"{vs_random:.1%} below random (bar >= 8%)")  # fmt: skip
    return out | {"info": info}


def heldout_all(held: dict[str, list[dict]], work: Path) -> dict[str, str]:
    """One eval set: the held-out documents of every domain together."""
    return {"all": write([d for rows in held.values() for d in rows], work / "heldout.parquet")}


def dedup(args, docs: list[dict], work: Path) -> dict:
    rng = random.Random(1)
    pool, held = split_held_out(docs, args.held // 4, rng)
    pool = cap(pool, args.pool, rng)
    rows, _ = inject([{"id": d["id"], "text": d["text"]} for d in pool], len(pool) // 3, rng)
    rng.shuffle(rows)
    pool_path = write(rows, work / "pool" / "pool.parquet")
    m = datasel.run(datasel.Dedup(), pool_path, work / "dedup", quiet=True, overwrite=True)
    print(f"dedup: pool {len(rows):,} documents ({len(rows) - len(pool):,} injected "
          f"duplicates); dedup removed {m['removed_total']:,}")  # fmt: skip
    res = judge(args, work, {"duplicated": pool_path, "dedup": str(work / "dedup")},
                heldout_all(held, work))  # fmt: skip
    out = table("dedup (held-out documents of every domain)", res, "duplicated")
    return out | {"info": {"pool": len(rows), "injected": len(rows) - len(pool),
                           "removed": m["removed_total"]}}  # fmt: skip


def diversify(args, docs: list[dict], work: Path) -> dict:
    rng = random.Random(2)
    pool, held = split_held_out([d for d in docs if d["domain"] in MIXTURE], args.held // 4, rng)
    pool = cap(pool, args.pool, rng)
    pool_path = write(pool, work / "pool" / "pool.parquet")
    size = len(pool) // 10
    datasel.run(Diversify(size=size), pool_path, work / "diversify", quiet=True, overwrite=True)
    arms = {"diversify": str(work / "diversify"),
            "random-same-size": write(rng.sample(pool, size), work / "random.parquet")}  # fmt: skip
    print(f"diversify: pool {len(pool):,} documents of 7 domains; select {size:,} (10%)")
    evals = {dom: write(rows, work / "heldout" / f"{dom}.parquet") for dom, rows in held.items()}
    res = judge(args, work, arms, evals, random_pool=pool_path)
    return {
        "mean": table("diversify", res, "random", statistics.fmean, "mean of the 7 domains"),
        "worst": table("diversify", res, "random", max, "worst of the 7 domains"),
        "info": {"pool": len(pool), "selected": size, "domains": MIXTURE},
    }


def filter_(args, docs: list[dict], work: Path) -> dict:
    print("filter: the perplexity filter and PreSelect are not run: they need a real scoring "
          "model (score ppl --model, score preselect) that does not train in CPU minutes "
          "here")  # fmt: skip
    rng = random.Random(3)
    pool, held = split_held_out(docs, args.held // 4, rng)
    pool = cap(pool, args.pool, rng)
    pool_path = write(pool, work / "pool" / "pool.parquet")
    datasel.run(ScoreHeuristics(), pool_path, work / "scored", quiet=True, overwrite=True)
    m = datasel.run(datasel.Filter(min=GOPHER_MIN, max=GOPHER_MAX), work / "scored",
                    work / "gopher", quiet=True, overwrite=True)  # fmt: skip
    print(f"filter: pool {len(pool):,} documents; Gopher rules keep {m['kept']:,}")
    arms = {"gopher": str(work / "gopher"),
            "random-same-size": write(rng.sample(pool, m["kept"]),
                                      work / "random.parquet")}  # fmt: skip
    res = judge(args, work, arms, heldout_all(held, work), random_pool=pool_path)
    out = table("filter: Gopher rules (held-out documents of every domain)", res, "random")
    return out | {"info": {"pool": len(pool), "gopher_kept": m["kept"],
                           "not_run": ["perplexity filter", "PreSelect"]}}  # fmt: skip


def pick(args, docs: list[dict], work: Path) -> dict:
    if args.base is None:
        print("pick: SMOKE-LEVEL measure: base and target model are a tiny random GPT-2 built "
              "from a config (no real instruction model offline; give one with "
              "--base)")  # fmt: skip
    rows = [json.loads(line) for line in open(args.data / "self-instruct-8way.jsonl")]
    rng = random.Random(4)
    rng.shuffle(rows)
    n_held = max(len(rows) // 5, 20)
    held, train = rows[:n_held], rows[n_held:]

    def prompt(r: dict) -> str:
        return r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")

    model = args.base
    if model is None and (work / "model" / "config.json").is_file():
        model = work / "model"  # built by an earlier run: reused, so finished runs are too
    elif model is None:
        from tests.lm_fixtures import make_tiny_lm

        model = make_tiny_lm(work / "model", corpus=[prompt(r) for r in train] + [
            c["text"] for r in train for c in r["responses"]])  # fmt: skip
    cands = write([{"id": r["id"], "instruction": prompt(r), "responses": r["responses"]}
                   for r in train], work / "candidates.parquet")  # fmt: skip
    datasel.run(Pick(model=str(model)), cands, work / "pick", quiet=True, overwrite=True)
    arms = {"pick": str(work / "pick")}
    arms["random-pick"] = write(
        [{"instruction": prompt(r), "response": rng.choice(r["responses"])["text"]} for r in train],
        work / "random-pick.parquet",
    )
    sources = sorted({c["model"] for r in train for c in r["responses"]})
    for s in sources:
        arms[f"only-{s}"] = write(
            [{"instruction": prompt(r), "response": c["text"]}
             for r in train for c in r["responses"] if c["model"] == s and c["text"]],
            work / f"only-{s}.parquet",
        )  # fmt: skip
    evals = {"heldout": write([{"instruction": prompt(r), "response": r["target"]} for r in held],
                              work / "heldout.parquet")}  # fmt: skip
    res = judge(args, work, arms, evals, finetune=str(model), tokens=args.pick_tokens)
    smoke = " [smoke-level]" if args.base is None else ""
    out = table(f"pick (fine-tuning; held-out reference bits per byte){smoke}", res,
                "random-pick")  # fmt: skip
    best = min((a for a in arms if a.startswith("only-")), key=lambda a: out["arms"][a]["mean"])
    out["best_single_source"] = best
    out["info"] = {"train_instructions": len(train), "heldout_instructions": len(held),
                   "base": str(model), "smoke_level": args.base is None}  # fmt: skip
    print(f"  best single source: {best} ({out['arms'][best]['mean']:.4f}); note that picking it "
          "uses the held-out set, so it is an optimistic ceiling")  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    ap.add_argument("--only", default=",".join(SECTIONS), help="sections, comma-separated")
    ap.add_argument("--model", default="tiny", help="datasel eval preset (tiny, small, base)")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="training tokens per arm")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--eval-tokens", type=int, default=50_000)
    ap.add_argument("--checkpoints", type=int, default=2)
    ap.add_argument("--pick-tokens", type=int, default=300_000,
                    help="pick: fine-tuning tokens per arm (~4 epochs of an arm)")  # fmt: skip
    ap.add_argument("--base", default=None, help="pick: a local HF model folder as the pick "
                    "target and fine-tuning base (default: a tiny random GPT-2)")  # fmt: skip
    ap.add_argument("--domain", default="python_docs", help="shift: the target domain")
    ap.add_argument("--share", type=float, default=0.03, help="shift: the domain's pool share")
    ap.add_argument("--held", type=int, default=300, help="held-out eval documents (shift); "
                    "a quarter of it per domain in the other sections")  # fmt: skip
    ap.add_argument("--pool", type=int, default=None, help="cap on pool documents (smoke runs)")
    ap.add_argument("--work", type=Path, default=Path("out/proxy_eval"),
                    help="working folder (resumable: finished runs are reused)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="JSON of the results")
    ap.add_argument("--quiet", action="store_true", help="no evaluator progress lines")
    args = ap.parse_args()
    only = args.only.split(",")
    unknown = set(only) - set(SECTIONS)
    if unknown or args.seeds < 2:
        ap.error(f"unknown section(s) {sorted(unknown)}" if unknown else "--seeds must be >= 2")
    docs = [json.loads(line) for line in gzip.open(args.data / "dev-corpus.jsonl.gz", "rt")]
    run = {"shift": shift, "dedup": dedup, "diversify": diversify, "filter": filter_, "pick": pick}
    results = {"settings": {k: str(v) for k, v in vars(args).items()}}
    for name in only:
        results[name] = run[name](args, docs, args.work / name)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
