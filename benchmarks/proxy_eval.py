r"""What each stage buys: held-out loss of the same proxy LM trained on each stage's selection.

    python benchmarks/proxy_eval.py                              # every section, tiny model, CPU
    python benchmarks/proxy_eval.py --only shift --domain man_pages
    python benchmarks/proxy_eval.py --model small --tokens 10000000 --eval-tokens 200000   # GPU
    python benchmarks/proxy_eval.py --only pick --base smollm2/ --picks pick --pick-tokens 100000
        # GRAPE's setting with a real 135M target (~80 min on 2 CPU cores; docs/benchmarks.md)
    python benchmarks/proxy_eval.py --tokens 20000 --pick-tokens 100000 --base-tokens 20000 \
        --pool 2000 --eval-tokens 2000 --held 40 --ref-tokens 20000 --set-tokens 2000 \
        --held-per-domain 10 --val-per-domain 10 --fit-docs 200  # smoke test

Every arm is judged by `datasel.evaluate` (no training loop here): the same model (`--model`,
default `tiny`), tokenizer, token budget (`--tokens`), data order and seeds (`--seeds`, >= 2), on
../shared/data (`--data`). Per section, a table of held-out bits per byte (mean +- sd over
seeds), the difference to the section's reference arm, and whether it exceeds the spread
(larger than the sum of the two arms' sds, as `datasel eval` calls it). `--out`: all as JSON.

Sections (`--only shift,dedup,diversify,filter,pick,diversify-sft`):
  shift      pool of whole dev-corpus documents with the target domain at `--share` (3%); target
             set = 300 held-out documents of the domain, eval set = other held-out documents of
             it. Arms: `shift dsir` and `shift gotd` (defaults, size = the domain's pool count),
             perfect (every pool document of the domain), random-same-size, and the evaluator's
             token-matched random baseline. Bars of issue 14: DSIR/GOT-D within 2% of perfect
             and >= 8% below random.
  dedup      a pool of about `--tokens` unique tokens (training sees each document about once)
             plus copies of a few of its documents, `--dup-copies` each (exact, lightly edited
             or a paragraph dropped), a third of the documents: heavy-tailed repetition, as in
             web crawls. Copies follow their sources, so `dedup` keeps the originals. `dedup`
             (defaults) vs the pool as is.
  diversify  10% of a 7-domain mixture, `diversify` (defaults) vs random-same-size and the
             baseline; mean and worst of the 7 held-out domains.
  filter     quality filters vs the token-matched random baseline, on a pool of 3x `--tokens`:
             Gopher rules (`score heuristics` + configs/quickstart.yaml's thresholds); CCNet's
             perplexity filter (`score ppl` under a reference LM, keep the lowest-bits-per-byte
             documents holding `--keep` of the characters: `filter --bottom-chars`, over the
             pool (ppl), inside each domain (ppl-domain, `--within domain`: CCNet's quantiles
             per language) or each k-means cluster (ppl-cluster)); PreSelect (`preselect fit` on the
             losses of `--fit-docs` pool documents under 5 LMs and their benchmark scores, then
             `score preselect` and `filter --top-chars`, `--keep`; over the pool, or inside each k-means
             cluster: preselect-cluster, preselect-e50-cluster). The 5 LMs are trained here by
             `datasel eval --save-model` on disjoint reference documents (every domain; prose;
             technical; old literature; math); CCNet's reference LM is the every-domain one;
             a model's benchmark score is minus its bits per byte on validation documents of
             every domain (disjoint from the eval sets).
  pick       fine-tuning (`datasel eval --finetune`) on self-instruct-8way split into train and
             held-out instructions: `pick` (`--normalize mean`, the default, and `sum`) vs a
             random candidate per instruction vs each single source (the best one is
             reported). The base and target model is `--base`, or a `--model` GPT-2 pre-trained
             here on `--base-tokens` of dev-corpus documents: real, but far weaker than GRAPE's.
  diversify-sft  instruction data (Diversify-and-Conquer's setting): the pool is every (prompt,
             candidate response) pair of pick's training instructions; `diversify` (defaults)
             vs a random draw of the same size (`--sft-fraction`, 1/8), each seed its own draw
             and selection, fine-tuning pick's base; eval set = pick's held-out answers.

Dedup and filter score one held-out set per domain (`--held-per-domain` documents), diversify
one per mixture domain (`--held` / 4), each up to `--set-tokens` tokens; they report the mean
and the worst domain.

Time: `datasel eval` prints its estimate before it starts. `tiny` trains 1M tokens in ~2.4
CPU-minutes (83 s wall on the idle 2-core CPU); on the shared CPU at load average ~14 a step
took 3.4-4.3 s instead of ~0.34 s, so 1M tokens took ~15-18 min per arm and seed there. Runs
per section: shift 10, dedup 4, diversify 6, filter 8 plus 5 reference LMs (`--ref-tokens`),
`score ppl` of the pool and of `--fit-docs` documents under 5 models; pick one pre-training
run of `--base-tokens` and 22 fine-tuning runs of `--pick-tokens` (~20 min idle);
diversify-sft 4 fine-tuning runs (pick's base, reused from `--work`/pick). Measured wall times
are in docs/benchmarks.md. The smoke
command above (a smoke test, not a result) took, at load: shift 100 s, dedup ~4 min, filter
> 15 min at load average 14 (its reference LMs and scoring), diversify ~90 s, pick ~130 s.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import datasel
from datasel.eval.report import difference, pooled_spread, seed_stats
from datasel.stages.diversify import Diversify
from datasel.stages.heuristics import GOPHER_MAX, GOPHER_MIN, ScoreHeuristics
from datasel.stages.pick import Pick
from datasel.stages.score import ScorePpl, ScorePreselect
from datasel.stages.shift import ShiftDsir, ShiftGotd
from datasel.workflows.preselect_fit import preselect_fit

sys.path.insert(0, str(Path(__file__).parent))  # dedup_quality's inject
sys.path.insert(0, str(Path(__file__).parents[1]))  # tests.lm_fixtures
from dedup_quality import inject  # noqa: E402

DATA = Path(__file__).parents[1] / "../shared/data"
# PreSelect arms: fastText (epochs, learning rate). The paper's 3 epochs at 0.1 are for millions
# of documents; on ~10^3 they leave the classifier at chance (held-out accuracy 0.54, every pool
# score 0.500), so a second arm fits longer on the same examples (accuracy 1.0 on 24 held out)
PRESELECT_FITS = {"preselect": (3, 0.1), "preselect-e50": (50, 0.5)}
PPL_STRIDE = 224  # of the tiny model's 256-token context: windows overlap by 32 tokens
SECTIONS = ("shift", "dedup", "diversify", "filter", "pick", "diversify-sft")
PICK_ARMS = ("pick", "pick-sum", "sources")  # --picks, besides only-SOURCE
MIXTURE = [  # the diversify section's 7 domains
    "python_docs",
    "man_pages",
    "bible_kjv",
    "literature_shakespeare",
    "movie_reviews",
    "abc_news_rural",
    "math_word_problems",
]
# the filter section's reference LMs, each trained on its reference documents of these domains:
# "all" is CCNet's reference LM; the five differ in what they know, as PreSelect's models do
REFERENCE_GROUPS = {
    "all": None,
    "prose": ["movie_reviews", "abc_news_rural", "abc_news_science", "us_speeches"],
    "tech": ["python_docs", "man_pages"],
    "old": ["bible_kjv", "literature_shakespeare", "literature_milton"],
    "math": ["math_word_problems"],
}


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


def take_tokens(rows: list[dict], tokens: int) -> list[dict]:
    """The first rows holding about `tokens` tokens (4 characters a token)."""
    out, chars = [], 0
    for r in rows:
        if chars >= 4 * tokens:
            break
        out.append(r)
        chars += len(r["text"])
    return out


def heldout_sets(held: dict[str, list[dict]], work: Path) -> dict[str, str]:
    """One eval set per domain: the section's figure is the mean (and worst) over domains."""
    return {dom: write(rows, work / "heldout" / f"{dom}.parquet") for dom, rows in held.items()}


def composition(path, domains: list[str]) -> dict:
    """Documents, characters and each domain's share of the characters of a selection."""
    t = pq.read_table(path, columns=["domain", "text"]).to_pydict()
    chars = {dom: 0 for dom in domains}
    for dom, text in zip(t["domain"], t["text"], strict=True):
        chars[dom] += len(text)
    total = sum(chars.values())
    return {"docs": len(t["text"]), "chars": total,
            "share": {d: round(c / total, 4) for d, c in chars.items()}}  # fmt: skip


def per_domain(result: dict, arm: str) -> dict[str, float]:
    """Final bits per byte of `arm` on each eval set, mean over seeds."""
    runs = [r for r in result["runs"] if r["arm"] == arm]
    return {s: round(statistics.fmean(r["curve"][-1]["eval"][s]["bpb"] for r in runs), 4)
            for s in result["eval_sets"]}  # fmt: skip


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
    if len(evals) > 1:  # one set per domain: each gets its share of the eval budget
        settings["eval_tokens"] = args.set_tokens
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
    noise = pooled_spread(list(stats.values()))
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
            d = difference(s, stats[reference], noise)
            lower = f"lower in {d['lower_in_seeds']}/{len(s['values'])} seeds"
            line = f"{d['difference']:+16.4f}  {'yes' if d['exceeds_spread'] else 'no':3s}  {lower}"
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


def dedup(args, docs: list[dict], work: Path) -> dict:
    """A pool of about `--tokens` unique tokens, so that training sees each document about once,
    plus copies of a few documents, `--dup-copies` each on average (exact, lightly edited or a
    paragraph dropped; dedup_quality.inject) making a third of the documents: the heavy-tailed
    repetition of web crawls (boilerplate, mirrors) that dedup is for. Copies come after their
    sources, so `dedup` (keep first) keeps the original; the evaluator draws its own order."""
    rng = random.Random(1)
    pool, held = split_held_out(docs, args.held_per_domain, rng)
    pool = take_tokens(pool, args.tokens)
    copies = len(pool) // 2
    long = [d for d in pool if len(d["text"].split()) >= 50]
    sources = rng.sample(long, max(1, copies // args.dup_copies))
    injected, truth = inject([{"id": d["id"], "text": d["text"]} for d in sources], copies, rng)
    domain = {d["id"]: d["domain"] for d in pool}
    rows = [{"id": d["id"], "domain": d["domain"], "text": d["text"]} for d in pool] + [
        r | {"domain": domain[truth[r["id"]][1]]} for r in injected[len(sources) :]
    ]
    pool_path = write(rows, work / "pool" / "pool.parquet")
    m = datasel.run(datasel.Dedup(), pool_path, work / "dedup", quiet=True, overwrite=True)
    kept = set(pq.read_table(work / "dedup", columns=["id"]).column("id").to_pylist())
    info = {
        "unique_docs": len(pool), "sources": len(sources), "injected": copies,
        "removed": m["removed_total"],
        "removed_injected": sum(1 for i in truth if i not in kept),
        "removed_original": sum(1 for d in pool if d["id"] not in kept),
        "sources_kept": sum(1 for d in sources if d["id"] in kept),
    }  # fmt: skip
    print(f"dedup: {len(pool):,} unique documents + {copies:,} copies of {len(sources)} of them; "
          f"dedup removed {info['removed']:,} ({info['removed_injected']:,} injected copies, "
          f"{info['removed_original']:,} originals); kept {info['sources_kept']} of "
          f"{len(sources)} sources")  # fmt: skip
    arms = {"duplicated": pool_path, "dedup": str(work / "dedup")}
    info["composition"] = {a: composition(p, sorted(held)) for a, p in arms.items()}
    res = judge(args, work, arms, heldout_sets(held, work))
    out = {
        "mean": table("dedup", res, "duplicated", statistics.fmean, "mean of the domains"),
        "worst": table("dedup", res, "duplicated", max, "worst domain"),
        "per_domain": {a: per_domain(res, a) for a in res["arms"]},
    }
    return out | {"info": info}


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


def split_filter_data(docs: list[dict], args, rng: random.Random):
    """Per domain, disjoint: held-out eval documents, validation documents (the benchmark that
    orders PreSelect's models), reference documents (what the reference LMs train on), and the
    rest as the pool, cut to 3x `--tokens` so that keeping `--keep` of it still fills the
    training budget once."""
    pool, held = split_held_out(docs, args.held_per_domain, rng)
    by: dict[str, list[dict]] = {}
    for d in pool:
        by.setdefault(d["domain"], []).append(d)
    val, ref, rest = {}, {}, []
    for dom, rows in sorted(by.items()):
        n_ref = int(args.ref_share * len(rows))
        val[dom] = rows[: args.val_per_domain]
        ref[dom] = rows[args.val_per_domain : args.val_per_domain + n_ref]
        rest += rows[args.val_per_domain + n_ref :]
    rng.shuffle(rest)
    return take_tokens(rest, 3 * args.tokens), held, val, ref


def reference_models(args, ref: dict, val: dict, work: Path) -> tuple[dict, dict]:
    """One small LM per REFERENCE_GROUPS entry, trained by `datasel eval` on its reference
    documents and saved; its benchmark score is minus its mean bits per byte over the
    validation domains. Returns ({group: model folder}, {group: benchmark score})."""
    arms = {
        g: write([d for dom, rows in ref.items() if doms is None or dom in doms for d in rows],
                 work / "reference" / f"{g}.parquet")
        for g, doms in REFERENCE_GROUPS.items()
    }  # fmt: skip
    sets = {dom: write(rows, work / "validation" / f"{dom}.parquet") for dom, rows in val.items()}
    res = judge(args, work / "reference", arms, sets, tokens=args.ref_tokens, seeds=1,
                checkpoints=1, save_models=True)  # fmt: skip
    folders = {g: str(work / "reference" / "eval" / "models" / f"{g}.seed0") for g in arms}
    bench = {g: -statistics.fmean(per_domain(res, g).values()) for g in arms}
    print("  reference LMs (mean validation bits/byte): "
          + ", ".join(f"{g} {-b:.3f}" for g, b in bench.items()))  # fmt: skip
    return folders, bench


def score_ppl(models: dict[str, str], src: str, dst: Path, quiet: bool) -> Path:
    """`score ppl` under each model in turn (columns <name>_bpb); the last step's folder."""
    steps = [ScorePpl(model=m, column=g, stride=PPL_STRIDE) for g, m in models.items()]
    pipe = datasel.Pipeline(steps)
    pipe.run(src, dst, quiet=quiet, overwrite=True)
    return pipe.step_dirs(dst)[-1]


def with_clusters(src: Path, dst: Path) -> Path:
    """The rows of src with a k-means `cluster` label: diversify keeping every row."""
    datasel.run(Diversify(fraction=1.0), src, dst, quiet=True, overwrite=True)
    return dst


def fit_once(src: Path, out: Path, columns: list[str], bench: list[float], **fasttext) -> dict:
    """`preselect fit`, or the card of an earlier fit with the same inputs and settings: the fit
    is multi-threaded fastText, not bit-reproducible, and a new scorer would retrain every run
    of its arm."""
    card_path = out / "card.json"
    if card_path.is_file():
        card = json.loads(card_path.read_text())
        settings = [card["fasttext"]["epoch"], card["fasttext"]["lr"]]
        scores = [m["benchmark"] for m in card["models"]]
        if settings == [fasttext["epoch"], fasttext["lr"]] and scores == bench:
            return card
    return preselect_fit(src, out, loss_columns=columns, benchmark_scores=bench, fraction=0.2,
                         **fasttext)  # fmt: skip


def quantiles(values: list[float]) -> list[float]:
    """5th, 50th and 95th percentiles."""
    v = sorted(values)
    return [v[int(q * (len(v) - 1))] for q in (0.05, 0.5, 0.95)]


def filter_(args, docs: list[dict], work: Path) -> dict:
    """Quality filters against a random selection, judged on held-out documents of every domain:
    Gopher rules; CCNet's perplexity filter (Wenzek et al. 2019: keep the documents a reference
    LM finds likeliest); PreSelect (Shum et al. 2025: keep what a fastText classifier says is
    predictive, fitted on documents whose losses under several models order them as a benchmark
    does). The reference LMs are trained here on disjoint reference documents of the corpus."""
    rng = random.Random(3)
    pool, held, val, ref = split_filter_data(docs, args, rng)
    pool_path = write(pool, work / "pool" / "pool.parquet")
    print(f"filter: pool {len(pool):,} documents; reference "
          f"{sum(map(len, ref.values())):,}, validation {sum(map(len, val.values())):,}, "
          f"held-out {sum(map(len, held.values())):,}")  # fmt: skip

    info: dict = {"pool": len(pool), "keep": args.keep}
    arms, wanted = {}, args.filters.split(",")
    if "gopher" in wanted:
        datasel.run(ScoreHeuristics(), pool_path, work / "scored", quiet=True, overwrite=True)
        m = datasel.run(datasel.Filter(min=GOPHER_MIN, max=GOPHER_MAX), work / "scored",
                        work / "gopher", quiet=True, overwrite=True)  # fmt: skip
        arms["gopher"] = str(work / "gopher")
        info["gopher"] = {"kept": m["kept"]}

    models, bench = reference_models(args, ref, val, work)
    info["reference_bpb"] = {g: round(-b, 4) for g, b in bench.items()}
    scored = score_ppl({"ref": models["all"]}, pool_path, work / "ppl-scored", args.quiet)
    if "ppl-cluster" in wanted:
        with_clusters(scored, work / "ppl-clustered")
    for arm, within, src in (("ppl", None, scored), ("ppl-domain", "domain", scored),
                             ("ppl-cluster", "cluster", work / "ppl-clustered")):  # fmt: skip
        if arm not in wanted:
            continue
        m = datasel.run(datasel.Filter(bottom_chars=f"ref_bpb={args.keep}", within=within), src,
                        work / arm, quiet=True, overwrite=True)  # fmt: skip
        arms[arm] = str(work / arm)
        info[arm] = {"kept": m["kept"], "cut_bpb": m["stats"]["bottom_chars:ref_bpb:threshold"]}
        print(f"  {arm}: kept {m['kept']:,}")  # fmt: skip
    if not any(a.startswith("preselect") for a in wanted):
        return filter_results(args, work, arms, held, pool_path, info)

    fit_src = write(rng.sample(pool, min(args.fit_docs, len(pool))), work / "fit.parquet")
    losses = score_ppl(models, fit_src, work / "fit-scored", args.quiet)
    for arm, (epoch, lr) in PRESELECT_FITS.items():
        if arm not in wanted and f"{arm}-cluster" not in wanted:
            continue
        card = fit_once(losses, work / f"{arm}-scorer", [f"{g}_bpb" for g in models],
                        [bench[g] for g in models], epoch=epoch, lr=lr)  # fmt: skip
        datasel.run(ScorePreselect(scorer=str(work / f"{arm}-scorer")), pool_path,
                    work / f"{arm}-scored", quiet=True, overwrite=True)  # fmt: skip
        m = datasel.run(datasel.Filter(top_chars=f"preselect_score={args.keep}"),
                        work / f"{arm}-scored", work / arm, quiet=True, overwrite=True)  # fmt: skip
        arms[arm] = str(work / arm)
        if f"{arm}-cluster" in wanted:
            clustered = with_clusters(work / f"{arm}-scored", work / f"{arm}-clustered")
            mc = datasel.run(datasel.Filter(top_chars=f"preselect_score={args.keep}",
                                            within="cluster"),
                             clustered, work / f"{arm}-cluster", quiet=True, overwrite=True)  # fmt: skip
            arms[f"{arm}-cluster"] = str(work / f"{arm}-cluster")
            info[f"{arm}-cluster"] = {"kept": mc["kept"]}
            print(f"  {arm}-cluster: kept {mc['kept']:,}")
        scores = pq.read_table(work / f"{arm}-scored", columns=["preselect_score"])
        spread = [round(float(q), 4) for q in quantiles(scores.column(0).to_pylist())]
        info[arm] = {"kept": m["kept"], "fasttext_epoch": epoch, "fasttext_lr": lr,
                     "strength": card["strength"], "counts": card["counts"],
                     "classifier_heldout_accuracy": card["heldout_accuracy"],
                     "pool_score_5_50_95": spread}  # fmt: skip
        print(f"  {arm} (fastText {epoch} epochs, lr {lr}): classifier held-out accuracy "
              f"{card['heldout_accuracy']:.2f}, pool scores 5/50/95% {spread}; "
              f"kept {m['kept']:,}")  # fmt: skip
    return filter_results(args, work, arms, held, pool_path, info)


def filter_results(args, work: Path, arms: dict, held: dict, pool_path: str, info: dict) -> dict:
    """Train and judge the filter arms against the token-matched random baseline."""
    arms = {a: p for a, p in arms.items() if a in args.filters.split(",")}
    info["composition"] = {a: composition(p, sorted(held)) for a, p in arms.items()}
    info["composition"]["pool"] = composition(pool_path, sorted(held))
    res = judge(args, work, arms, heldout_sets(held, work), random_pool=pool_path)
    out = {
        "mean": table("filter", res, "random", statistics.fmean, "mean of the domains"),
        "worst": table("filter", res, "random", max, "worst domain"),
        "per_domain": {a: per_domain(res, a) for a in res["arms"]},
    }
    return out | {"info": info}


def pretrained_base(args, docs: list[dict], work: Path) -> str:
    """A `--model` GPT-2 pre-trained here (`datasel eval --save-model`) on `--base-tokens` of
    dev-corpus documents: a real, if weak, target for `pick` and base for its fine-tuning."""
    rng = random.Random(5)
    pool, held = split_held_out(docs, 10, rng)
    train = {"base": write(take_tokens(pool, args.base_tokens), work / "train.parquet")}
    val = {"val": write([d for rows in held.values() for d in rows], work / "val.parquet")}
    res = judge(args, work, train, val, tokens=args.base_tokens, seeds=1, checkpoints=1,
                save_models=True)  # fmt: skip
    print(f"  base LM: {args.base_tokens:,} tokens of dev-corpus documents, validation bits per "
          f"byte {per_domain(res, 'base')['val']:.3f}")  # fmt: skip
    return str(work / "eval" / "models" / "base.seed0")


def picked_sources(folder: Path) -> Counter:
    """How many instructions' picks came from each source model (`pick_source`)."""
    return Counter(pq.read_table(folder, columns=["pick_source"])["pick_source"].to_pylist())


def sft_split(args) -> tuple[list[dict], list[dict], random.Random]:
    """self-instruct-8way as (train, held-out) instructions, each with its `prompt` (instruction,
    and its input after a blank line), the same for every fine-tuning section, and the
    generator that split them, for the section's draws."""
    rows = [json.loads(line) for line in open(args.data / "self-instruct-8way.jsonl")]
    rng = random.Random(4)
    rng.shuffle(rows)
    for r in rows:
        r["prompt"] = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
    n_held = max(len(rows) // 5, 20)
    return rows[n_held:], rows[:n_held], rng


def heldout_answers(held: list[dict], work: Path) -> dict[str, str]:
    """The eval set of a fine-tuning section: the human reference answers of held-out prompts."""
    rows = [{"instruction": r["prompt"], "response": r["target"]} for r in held]
    return {"heldout": write(rows, work / "heldout.parquet")}


def pick(args, docs: list[dict], work: Path) -> dict:
    if args.base is None:
        print(f"pick: base and target model: a {args.model} GPT-2 pre-trained here on "
              f"{args.base_tokens:,} tokens of dev-corpus documents (no real instruction model "
              "offline; give one with --base): a weak target, not GRAPE's")  # fmt: skip
    train, held, rng = sft_split(args)
    wanted = args.picks.split(",")
    sources = sorted({c["model"] for r in train for c in r["responses"]})
    unknown = {w[len("only-") :] for w in wanted if w.startswith("only-")} - set(sources)
    if unknown:
        raise SystemExit(f"--picks: no source {sorted(unknown)}; sources: {', '.join(sources)}")
    model = args.base or pretrained_base(args, docs, work / "base")
    cands = write([{"id": r["id"], "instruction": r["prompt"], "responses": r["responses"]}
                   for r in train], work / "candidates.parquet")  # fmt: skip
    arms = {}
    for arm, normalize in (("pick", "mean"), ("pick-sum", "sum")):
        if arm not in wanted:
            continue
        datasel.run(Pick(model=str(model), normalize=normalize), cands, work / arm,
                    quiet=args.quiet, overwrite=True)  # fmt: skip
        arms[arm] = str(work / arm)
        print(f"  {arm}: picked sources " + ", ".join(
            f"{m} {c}" for m, c in picked_sources(work / arm).most_common()))  # fmt: skip
    arms["random-pick"] = write(  # always: the reference arm
        [
            {"instruction": r["prompt"], "response": rng.choice(r["responses"])["text"]}
            for r in train
        ],
        work / "random-pick.parquet",
    )
    for s in [s for s in sources if "sources" in wanted or f"only-{s}" in wanted]:
        arms[f"only-{s}"] = write(
            [{"instruction": r["prompt"], "response": c["text"]}
             for r in train for c in r["responses"] if c["model"] == s and c["text"]],
            work / f"only-{s}.parquet",
        )  # fmt: skip
    res = judge(args, work, arms, heldout_answers(held, work), finetune=str(model),
                tokens=args.pick_tokens)  # fmt: skip
    weak = " [base pre-trained here: a weak target]" if args.base is None else ""
    out = table(f"pick (fine-tuning; held-out reference bits per byte){weak}", res,
                "random-pick")  # fmt: skip
    singles = [a for a in arms if a.startswith("only-")]
    best = min(singles, key=lambda a: out["arms"][a]["mean"]) if singles else None
    out["best_single_source"] = best
    out["info"] = {"train_instructions": len(train), "heldout_instructions": len(held),
                   "base": str(model), "base_pretrained_here": args.base is None}  # fmt: skip
    if best:
        print(f"  best single source: {best} ({out['arms'][best]['mean']:.4f}); note that picking "
              "it uses the held-out set, so it is an optimistic ceiling")  # fmt: skip
    return out


def diversify_sft(args, docs: list[dict], work: Path) -> dict:
    """Diversify-and-Conquer's setting (Yu et al. 2024): instruction data. The pool is every
    (prompt, candidate response) pair of the training instructions; `diversify` (defaults, on
    prompt and response) and a random draw each keep `--sft-fraction` of it, each seed its own
    draw and selection; each arm fine-tunes the base on `--pick-tokens`."""
    train, held, _ = sft_split(args)
    pool = [{"id": f"{r['id']}-{k}", "instruction": r["prompt"], "response": c["text"],
             "text": f"{r['prompt']}\n\n{c['text']}"}
            for r in train for k, c in enumerate(r["responses"]) if c["text"].strip()]  # fmt: skip
    pool_path = write(pool, work / "pool" / "pool.parquet")
    size = round(len(pool) * args.sft_fraction)
    arms = {"diversify": str(work / "diversify-{seed}"),
            "random-same-size": str(work / "random-{seed}.parquet")}  # fmt: skip

    def of(arm: str, seed: int) -> str:
        return arms[arm].replace("{seed}", str(seed))

    for seed in range(args.seeds):
        datasel.run(Diversify(size=size, seed=seed), pool_path, of("diversify", seed),
                    quiet=True, overwrite=True)  # fmt: skip
        write(random.Random(seed).sample(pool, size), Path(of("random-same-size", seed)))
    instructions = {
        arm: statistics.fmean(
            pc.count_distinct(pq.read_table(of(arm, seed), columns=["instruction"])[0]).as_py()
            for seed in range(args.seeds)
        )
        for arm in arms
    }
    print(f"diversify-sft: pool {len(pool):,} (prompt, response) pairs of {len(train)} "
          f"instructions; select {size:,}; distinct instructions kept: diversify "
          f"{instructions['diversify']:.1f}, random {instructions['random-same-size']:.1f}")  # fmt: skip
    model = args.base or pretrained_base(args, docs, work.parent / "pick" / "base")
    res = judge(args, work, arms, heldout_answers(held, work), finetune=str(model),
                tokens=args.pick_tokens)  # fmt: skip
    out = table("diversify on instruction data (fine-tuning; held-out reference bits per byte)",
                res, "random-same-size")  # fmt: skip
    out["info"] = {"pool_pairs": len(pool), "selected": size, "base": str(model),
                   "distinct_instructions": instructions}  # fmt: skip
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
                    "target and fine-tuning base (default: a --model GPT-2 pre-trained here)")  # fmt: skip
    ap.add_argument("--picks", default="pick,pick-sum,sources",
                    help="pick: the arms to train besides random-pick (pick, pick-sum, sources: "
                    "each single source's responses, only-SOURCE: one of them)")  # fmt: skip
    ap.add_argument("--sft-fraction", type=float, default=0.125,
                    help="diversify-sft: the share of the (prompt, response) pairs kept")  # fmt: skip
    ap.add_argument("--base-tokens", type=int, default=1_000_000,
                    help="pick without --base: the base's pre-training tokens")  # fmt: skip
    ap.add_argument("--domain", default="python_docs", help="shift: the target domain")
    ap.add_argument("--share", type=float, default=0.03, help="shift: the domain's pool share")
    ap.add_argument("--held", type=int, default=300, help="held-out eval documents (shift); "
                    "a quarter of it per domain in the other sections")  # fmt: skip
    ap.add_argument("--pool", type=int, default=None, help="cap on pool documents (smoke runs)")
    ap.add_argument("--held-per-domain", type=int, default=60,
                    help="dedup, filter: held-out eval documents per domain")  # fmt: skip
    ap.add_argument("--set-tokens", type=int, default=40_000,
                    help="tokens scored per eval set where there is one set per domain")  # fmt: skip
    ap.add_argument("--dup-copies", type=int, default=20,
                    help="dedup: copies per duplicated document (on average)")  # fmt: skip
    ap.add_argument("--keep", type=float, default=0.4,
                    help="filter: fraction of the pool's characters ppl and PreSelect keep")  # fmt: skip
    ap.add_argument("--ref-share", type=float, default=0.15,
                    help="filter: share of each domain the reference LMs train on")  # fmt: skip
    ap.add_argument("--val-per-domain", type=int, default=30,
                    help="filter: validation documents per domain (PreSelect's benchmark)")  # fmt: skip
    ap.add_argument("--ref-tokens", type=int, default=300_000,
                    help="filter: training tokens of each reference LM")  # fmt: skip
    ap.add_argument("--fit-docs", type=int, default=1000,
                    help="filter: pool documents PreSelect's classifier is fitted on")  # fmt: skip
    ap.add_argument("--filters", default="gopher,ppl,ppl-domain,ppl-cluster,preselect,preselect-e50",
                    help="filter: the arms to train, besides the random baseline")  # fmt: skip
    ap.add_argument("--work", type=Path, default=Path("out/proxy_eval"),
                    help="working folder (resumable: finished runs are reused)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="JSON of the results")
    ap.add_argument(
        "--quiet", action="store_true", help="no progress lines (evaluator, model scoring)"
    )
    args = ap.parse_args()
    only = args.only.split(",")
    unknown = set(only) - set(SECTIONS)
    if {p for p in args.picks.split(",") if not p.startswith("only-")} - set(PICK_ARMS):
        ap.error(f"--picks {args.picks}: choose from pick, pick-sum, sources, only-SOURCE")
    if unknown or args.seeds < 2:
        ap.error(f"unknown section(s) {sorted(unknown)}" if unknown else "--seeds must be >= 2")
    docs = [json.loads(line) for line in gzip.open(args.data / "dev-corpus.jsonl.gz", "rt")]
    run = {"shift": shift, "dedup": dedup, "diversify": diversify, "filter": filter_, "pick": pick,
           "diversify-sft": diversify_sft}  # fmt: skip
    results = {"settings": {k: str(v) for k, v in vars(args).items()}}
    for name in only:
        results[name] = run[name](args, docs, args.work / name)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
        print(f"\nresults: {args.out}")


if __name__ == "__main__":
    main()
