"""`datasel eval`: train the same proxy model on each selection (arm), compare held-out loss.

Layout of the output folder:
    tokenizer/              the one tokenizer of every arm (trained once; reused on resume)
    runs/ARM.seedS.json     one finished (arm, seed): its learning curve, written atomically
    models/ARM.seedS/       with `save_models`: the trained model and tokenizer (an HF folder,
                            e.g. for `score ppl --model`)
    eval.json               every run plus the mean and spread per arm and eval set
    report.html             learning curves and a bar chart with error bars

A run file is reused only when its settings fingerprint (model, recipe, token budget, tokenizer,
the arm's and eval sets' input files) matches, so a killed eval resumes with the unfinished
(arm, seed) pairs and a changed setting reruns what it changes.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from datasel.device import pick_device
from datasel.errors import DataselError
from datasel.eval import data, metrics, model, report, tokenizer, train
from datasel.io import TEXT_COLUMN, digest, find_files, fingerprint, write_json

BASELINES = ("random",)


def _require_extra() -> None:
    try:
        import tokenizers  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise DataselError(
            f"datasel eval needs torch, transformers and tokenizers ({e.name} is missing): "
            "pip install 'datasel[lm]'"
        ) from None


def evaluate(
    out: str | Path,
    train_sets: dict[str, str],
    eval_sets: dict[str, str],
    *,
    model_name: str = "tiny",
    tokens: int = 1_000_000,
    seeds: int = 2,
    baseline: dict[str, str] | None = None,
    tokenizer_path: str | None = None,
    finetune: str | None = None,
    text_column: str = TEXT_COLUMN,
    prompt_column: str = "instruction",
    response_column: str = "response",
    eval_tokens: int = 50_000,
    checkpoints: int = 4,
    lr: float | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    save_models: bool = False,
    quiet: bool = False,
) -> dict:
    """Train the same small causal LM on each arm and score held-out loss on each eval set.

    Parameters
    ----------
    out
        Folder for eval.json, report.html, the tokenizer and per-run results (resumable).
    train_sets
        Arm name -> dataset (file, folder or glob, any format datasel reads). A path with
        ``{seed}`` in it names one selection per seed (``sel/div-{seed}``: seed 0 trains on
        ``sel/div-0``, ...), so the spread includes the selection's own randomness, as
        the random baseline's does.
    eval_sets
        Eval set name -> dataset of held-out documents (or instruction/reference pairs).
    model_name
        Preset (``tiny`` ~1M parameters, ``small`` ~9M, ``base`` ~124M), a JSON config file or
        a local HF model folder (its config; trained from scratch).
    tokens
        Training tokens per arm (an arm with fewer is repeated; its epochs are recorded).
    seeds
        Runs per arm (seeds 0..N-1): every figure is a mean with its spread.
    baseline
        ``{"random": POOL}``: adds an arm of random POOL documents matched in tokens to the
        arms (their median size), drawn anew for each seed.
    tokenizer_path
        A local HF tokenizer folder; default: byte-level BPE trained on a sample of all arms.
    finetune
        A local HF model folder: fine-tune it on each arm's prompt/response pairs, loss on the
        response only; eval sets are instruction/reference pairs.
    eval_tokens
        Tokens scored per eval set (documents sampled once, the same for every run).
    checkpoints
        Evaluations per run, evenly spaced (learning curves); the last is the final model.
    save_models
        Also save each trained model with the tokenizer to ``models/ARM.seedS/`` (a local HF
        folder: a reference LM for ``score ppl --model``). A finished run without its folder
        is trained again.

    Returns
    -------
    dict
        The content of eval.json.

    Examples
    --------
    >>> datasel.evaluate("out/eval", {"dsir": "sel/dsir", "all": "pool/"},
    ...                  {"target": "heldout.jsonl"}, baseline={"random": "pool/"})  # doctest: +SKIP
    """
    _require_extra()
    out = Path(out)
    baseline = dict(baseline or {})
    _check_names(train_sets, eval_sets, baseline)
    for name, value in (("tokens", tokens), ("seeds", seeds), ("checkpoints", checkpoints)):
        if value < 1:
            raise DataselError(f"--{name} must be at least 1, got {value}")
    spec = model.resolve_model(finetune or model_name, finetune=finetune is not None)
    spec = replace(spec, lr=lr or spec.lr, batch_size=batch_size or spec.batch_size)
    if eval_tokens < spec.context:
        raise DataselError(f"--eval-tokens {eval_tokens} is below one context ({spec.context})")
    blocks = tokens // spec.context // spec.batch_size * spec.batch_size
    if blocks == 0:
        raise DataselError(
            f"--tokens {tokens:,} is less than one step ({spec.batch_size} x {spec.context} tokens)"
        )
    device = pick_device(device, "datasel eval")
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

    pairs = finetune is not None
    read = {
        "text_column": response_column if pairs else text_column,
        "prompt_column": prompt_column if pairs else None,
    }
    paths = {name: _per_seed(path, seeds) for name, path in train_sets.items()}
    # an arm's selections, each path read once (one for every seed without {seed})
    selections = {
        name: {p: data.read_docs(name, p, **read) for p in dict.fromkeys(ps)}
        for name, ps in paths.items()
    }
    pools = {name: data.read_docs(name, path, **read) for name, path in baseline.items()}
    held = {name: data.read_docs(name, path, **read) for name, path in eval_sets.items()}

    out.mkdir(parents=True, exist_ok=True)
    texts = {name: [t for d in sel.values() for t in d.texts] for name, sel in selections.items()}
    texts |= {name: d.texts for name, d in pools.items()}
    tok = _tokenizer(out, spec, texts, tokenizer_path, finetune)
    if pairs:
        from datasel.eval.sft import format_prompts

        arm_docs = [d for sel in selections.values() for d in sel.values()]
        for docs in [*arm_docs, *pools.values(), *held.values()]:
            docs.prompts = format_prompts(tok, docs.prompts)
    sets = [metrics.prepare(d, tok, max_tokens=eval_tokens, context=spec.context) for d in held.values()]  # fmt: skip
    sizes = {}  # an arm's size: the mean over its selections
    if pools:
        sizes = {
            name: int(statistics.fmean(d.count_tokens(tok) for d in sel.values()))
            for name, sel in selections.items()
        }
    target = int(statistics.median(sizes.values())) if pools else None

    recipe = train.Recipe(
        lr=spec.lr, batch_size=spec.batch_size, checkpoints=checkpoints, device=device
    )
    common = {
        "model": asdict(spec),
        "tokens": blocks * spec.context,
        "recipe": asdict(recipe) | {"device": device.split(":")[0]},
        "tokenizer": digest(tok.backend_tokenizer.to_str()),
        "eval": {s.name: [s.info(), _files(s.path)] for s in sets},
        "format": read,
    }
    todo, done = [], {}
    every = [*paths, *pools]
    for seed in range(seeds):
        for name in every:
            what = {
                "arm": name,
                "seed": seed,
                "input": _files(paths[name][seed] if name in paths else baseline[name]),
            }
            if name in pools:
                what["match_tokens"] = target
            key = digest(common | what)
            path = out / "runs" / f"{name}.seed{seed}.json"
            prev = _load(path)
            saved = not save_models or (_model_dir(out, name, seed) / "config.json").is_file()
            if prev is not None and prev.get("key") == key and saved:
                done[(name, seed)] = prev
            else:
                todo.append((name, seed, key, path))

    steps = blocks // spec.batch_size
    say(
        f"eval: {len(every)} arm(s) x {seeds} seed(s), {len(todo)} run(s) to train "
        f"({len(done)} done); model {spec.name}, {blocks * spec.context:,} tokens per run "
        f"({steps} steps of {spec.batch_size} x {spec.context}), device {device}"
    )
    if todo:
        from transformers.utils import logging

        logging.disable_progress_bar()  # a loading/saving bar per run would break our own
        per_step = _time_step(spec, tok, recipe)
        eval_cost = sum(s.tokens for s in sets) * len(train.checkpoint_steps(steps, checkpoints))
        per_run = steps * per_step + eval_cost / (spec.batch_size * spec.context) * per_step / 3
        say(f"estimated time: {_clock(per_run * len(todo))} ({per_step:.2f} s per step)")

    started = time.perf_counter()
    with report.Bar(sum(1 for _ in todo) * steps, quiet) as bar:
        for k, (name, seed, key, path) in enumerate(todo):
            bar.describe(f"{name} seed {seed}")
            docs = selections[name][paths[name][seed]] if name in paths else pools[name]
            subset = None
            if name in pools:
                subset = data.take_tokens(docs, tok, target, np.random.default_rng([seed, 1]))
            x, mask, epochs = data.training_blocks(
                docs, tok, blocks=blocks, context=spec.context, seed=seed, subset=subset
            )
            net = model.build_model(spec, tok, seed)
            t0 = time.perf_counter()
            curve = train.train(
                net,
                x,
                mask,
                recipe,
                evaluate=lambda net=net: metrics.score(
                    net, tok, sets, context=spec.context, device=device
                ),
                on_step=bar.advance,
            )
            result = {
                "key": key,
                "arm": name,
                "seed": seed,
                "device": device,
                "parameters": model.count_parameters(net),
                "docs": len(docs) if subset is None else len(subset),
                "epochs": round(epochs, 4),
                "seconds": round(time.perf_counter() - t0, 2),
                "curve": curve,
            }
            if save_models:
                _save_model(net, tok, _model_dir(out, name, seed))
            write_json(result, path)
            done[(name, seed)] = result
            left = (time.perf_counter() - started) / (k + 1) * (len(todo) - k - 1)
            final = ", ".join(f"{s}={v['bpb']:.4f}" for s, v in curve[-1]["eval"].items())
            say(
                f"[{k + 1}/{len(todo)}] {name} seed {seed}: {result['seconds']:.0f} s, "
                f"{epochs:.2f} epoch(s), bits per byte {final}; left ~{_clock(left)}"
            )

    first = {n: selections[n][ps[0]] for n, ps in paths.items()} | pools  # seed 0's selection
    result = report.summarize(
        runs=[done[(n, s)] for s in range(seeds) for n in every],
        arms={
            n: {"path": train_sets.get(n) or baseline[n], "docs": len(first[n]),
                "skipped_empty": first[n].empty, "tokens": sizes.get(n)}
            for n in every
        },
        sets={s.name: s.info() for s in sets},
        settings=common | {"seeds": seeds, "baseline": baseline, "match_tokens": target},
    )  # fmt: skip
    write_json(result, out / "eval.json")
    page = report.write_html(result, out / "report.html")
    if not quiet:
        report.print_table(result)
        say(f"eval.json: {out / 'eval.json'}" + (f"; report: {page}" if page else ""))
    return result


def _check_names(train_sets: dict, eval_sets: dict, baseline: dict) -> None:
    if not train_sets:
        raise DataselError("give at least one arm to train: --train NAME=PATH")
    if not eval_sets:
        raise DataselError("give at least one held-out set: --eval NAME=PATH")
    for kind in baseline:
        if kind not in BASELINES:
            raise DataselError(f"--baseline {kind}: unknown kind (use {', '.join(BASELINES)}=POOL)")
        if kind in train_sets:
            raise DataselError(f"--train {kind}=...: the name is taken by --baseline {kind}")
    for name in [*train_sets, *eval_sets]:
        if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise DataselError(f"name {name!r}: use letters, digits, '-', '_' or '.'")


def _per_seed(path: str, seeds: int) -> list[str]:
    """The arm's path for each seed: `{seed}` replaced by the seed, or the same path."""
    return [path.replace("{seed}", str(seed)) for seed in range(seeds)]


def _model_dir(out: Path, arm: str, seed: int) -> Path:
    return out / "models" / f"{arm}.seed{seed}"


def _save_model(net, tok, folder: Path) -> None:
    """Model and tokenizer as one HF folder, written to a sibling and renamed into place, so
    a killed save leaves no half folder that a resumed eval would take for finished."""
    import shutil

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    net.to("cpu").save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)


def _files(path: str) -> list[dict]:
    return fingerprint(find_files(path)[0])


def _load(path: Path) -> dict | None:
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tokenizer(out: Path, spec, texts: dict, given: str | None, finetune: str | None):
    if finetune is not None:
        from transformers import AutoTokenizer

        try:
            return tokenizer._checked(AutoTokenizer.from_pretrained(finetune), finetune)
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataselError(
                f"--finetune {finetune}: cannot load its tokenizer: {first}"
            ) from None
    return tokenizer.load_or_train(
        out / "tokenizer", texts, vocab_size=spec.vocab_size, given=given
    )


def _time_step(spec, tok, recipe) -> float:
    """Seconds per training step: one step of random tokens, timed after a one-block warm-up
    step (allocation, kernel choice), so the probe costs little more than one step."""
    net = model.build_model(spec, tok, seed=0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, len(tok), size=(spec.batch_size, spec.context), dtype=np.int64)
    train.train(net, x[:1], None, replace(recipe, batch_size=1, checkpoints=1), evaluate=dict)
    start = time.perf_counter()
    train.train(net, x, None, replace(recipe, checkpoints=1), evaluate=dict)
    return time.perf_counter() - start


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"
