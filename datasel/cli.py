"""The `datasel` command line, generated from the stage registry (one command per stage)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from datasel.engine import RunOptions
from datasel.errors import DataselError, fail
from datasel.eval.command import eval_command
from datasel.stage import STAGES, Stage

app = typer.Typer(
    help="Turn a raw text corpus into a smaller, better LLM training set.\n\n"
    "Example: datasel run configs/quickstart.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
GROUPS = {
    "score": "Add score columns (Gopher heuristics, perplexity, fastText, PreSelect).",
    "shift": "Select toward a target distribution (DSIR, GOT-D).",
    "preselect": "Fit PreSelect scorers.",
}
_groups: dict[str, typer.Typer] = {}

BAD_ROWS_HELP = (
    "JSONL lines that are malformed, not UTF-8 or change a field's type: error (stop, naming "
    "the line) or skip (leave them out, in OUTPUT/_skipped/ with a reason)"
)
RUN_PARAMS = [
    ("text_column", str, "text", "name of the text column"),
    ("id_column", str, "id", "column with document ids (derived from file and row when absent)"),
    ("workers", int, RunOptions().workers, "worker processes (default: all cores)"),
    ("overwrite", bool, False, "replace the output of another run in OUTPUT"),
    ("quiet", bool, False, "no progress bar or summary (for cron)"),
    ("engine", str, "local", "local (process pool) or ray (RAY_ADDRESS, else a local cluster)"),
    ("on_bad_rows", str, "error", BAD_ROWS_HELP),
    (
        "unit_seconds",
        float,
        30.0,
        "model stages: seconds of work per output shard, about the most a kill loses",
    ),
]


def _no_type_on_flags() -> None:
    """typer 0.2x labels every option with its type, flags too (`--quiet <bool>`), and a
    repeatable one as `<list[str]>`: a flag takes no value, so show none; a repeatable option
    takes one value each time, so show that value's type."""
    from typer.core import TyperOption

    show = getattr(TyperOption, "display_type_rich", None)
    if show is not None and not getattr(show, "_datasel", False):

        def display_type_rich(self, ctx):
            shown = None if self.is_flag else show(self, ctx)
            if self.multiple and isinstance(shown, str):
                shown = re.sub(r"list\[(\w+)\]", r"\1", shown)
            return shown

        display_type_rich._datasel = True
        TyperOption.display_type_rich = display_type_rich


_no_type_on_flags()


def _option_type(tp):
    args = typing.get_args(tp)
    if type(None) in args:  # Optional[X]
        (inner,) = [a for a in args if a is not type(None)]
        return Optional[inner]  # noqa: UP045 - a runtime type for typer
    return tp


def _stage_command(cls: type[Stage]):
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    params = [
        inspect.Parameter(
            "input",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[
                str,
                typer.Argument(help="input file, folder or glob (JSONL, Parquet, HF save_to_disk)"),
            ],
        ),
        inspect.Parameter(
            "output",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[
                Path,
                typer.Argument(help="output folder (Parquet shards, _removed/, _manifest.json)"),
            ],
        ),
    ]
    for f in fields:
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = inspect.Parameter.empty  # a required option
        flag = "--" + f.name.replace("_", "-")
        opt = typer.Option(flag, help=f.metadata.get("help", ""))
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[_option_type(hints[f.name]), opt],
            )
        )
    for name, tp, default, help_text in RUN_PARAMS:
        opt = typer.Option(
            "--" + name.replace("_", "-"),
            help=help_text,
            rich_help_panel="Run options",
            show_default=name != "workers",  # this machine's core count: said in the help
        )
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[tp, opt]
            )
        )

    def command(**kwargs):
        from datasel.engine import run
        from datasel.io import resolve_input

        run_kw = {name: kwargs.pop(name) for name, *_ in RUN_PARAMS}
        src, dst = resolve_input(kwargs.pop("input")), kwargs.pop("output")
        try:
            stage = cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise fail(str(e)) from None
        try:
            run(stage, src, dst, RunOptions(**run_kw))
        except DataselError as e:
            raise fail(str(e)) from None

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = cls.name
    return command


def _help(cls: type[Stage]) -> str:
    doc = _reflowed(cls.__doc__)
    return f"{doc}\n\nExample:\n\n  {cls.example}" if cls.example else doc


def _reflowed(doc: str | None) -> str:
    return "\n\n".join(map(_reflow, inspect.cleandoc(doc or "").split("\n\n")))


def _reflow(paragraph: str) -> str:
    """One line per paragraph, for the terminal to wrap (a docstring's line breaks would stay
    where they are and cut the help's lines in two); lists and indented blocks are kept."""
    lines = paragraph.splitlines()
    if any(line.startswith(("- ", "* ", " ")) for line in lines):
        return paragraph
    return " ".join(lines)


def register_stages() -> None:
    for name, cls in sorted(STAGES.items()):
        group, _, sub = name.partition("-")
        if sub and group in GROUPS:
            if group not in _groups:
                _groups[group] = typer.Typer(help=GROUPS[group], no_args_is_help=True)
                app.add_typer(_groups[group], name=group)
            _groups[group].command(sub, help=_help(cls))(_stage_command(cls))
        else:
            app.command(name, help=_help(cls))(_stage_command(cls))


@app.command("run")
def run_config(
    config: Annotated[Path, typer.Argument(help="YAML pipeline (see configs/)")],
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="override the config's input")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="override the config's output")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a key: key=value or STEP.key=value"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="worker processes (default: the config's, else all cores)"),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace outputs of other runs")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bars or summaries")] = False,
    engine: Annotated[str, typer.Option(help="local or ray")] = "local",
    on_bad_rows: Annotated[
        str | None, typer.Option(help=BAD_ROWS_HELP + " (default: config, else error)")
    ] = None,
    since: Annotated[
        Path | None,
        typer.Option(help="state folder of a cron job: process only files no earlier run has seen"),
    ] = None,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="print one JSON line per step (for cron logs)")
    ] = False,
):
    """Run a pipeline of stages from a YAML config; each step writes its own folder.

    Example:

      datasel run configs/quickstart.yaml --output out/qs --set 1.threshold=0.7
    """
    from datasel.pipeline import load_config

    try:
        pipeline, config = load_config(config, set_ or [])
        src = input or config.get("input")
        dst = output or config.get("output")
        if not src or not dst:
            raise DataselError(
                f"{config}: needs 'input' and 'output' (in the config or as --input/--output)"
            )
        extra = {"overwrite": overwrite, "quiet": quiet or log_json, "engine": engine}
        if workers:
            extra["workers"] = workers
        if on_bad_rows is not None:
            extra["on_bad_rows"] = on_bad_rows
        if since is not None:
            _report_cron(
                pipeline.run_incremental(src, dst, since, **extra), since, dst, quiet, log_json
            )
            return
        manifests = pipeline.run(src, dst, **extra)
    except DataselError as e:
        raise fail(str(e)) from None
    from datasel.report import build_report, headlines, summary_table

    report = build_report(dst)
    if log_json:
        for m in manifests:
            typer.echo(
                json.dumps({k: m[k] for k in ("stage", "rows_in", "kept", "removed", "seconds")})
            )
    elif not quiet:
        from rich.console import Console

        Console().print(summary_table(dst))
        for line in headlines(dst):
            typer.echo(line)
        last = pipeline.step_dirs(Path(dst))[-1]
        typer.echo(
            f"selected: {last} ({manifests[-1]['kept']:,} of {manifests[0]['rows_in']:,} rows)"
        )
        typer.echo(f"report: {report}")


def _report_cron(record: dict | None, since: Path, dst, quiet: bool, log_json: bool) -> None:
    if log_json:
        typer.echo(json.dumps(record or {"run": None, "files": []}))
    elif quiet:
        return
    elif record is None:
        typer.echo(f"{since}: no new input files; nothing to do")
    else:
        typer.echo(
            f"run {record['run']}: {len(record['files'])} new file(s), {record['kept']:,} of "
            f"{record['rows_in']:,} rows added to {Path(dst) / 'selected'}"
        )


preselect_app = typer.Typer(help=GROUPS["preselect"], no_args_is_help=True)
app.add_typer(preselect_app, name="preselect")
_groups["preselect"] = preselect_app


@preselect_app.command("fit")
def preselect_fit_cmd(
    input: Annotated[
        str, typer.Argument(help="documents with one loss column per model (from `score ppl`)")
    ],
    scorer_out: Annotated[Path, typer.Argument(help="folder for model.bin and card.json")],
    benchmark_scores: Annotated[
        str, typer.Option(help="each model's benchmark score, same order, e.g. 31.2,40.5,47.9")
    ],
    loss_columns: Annotated[
        str, typer.Option(help="loss columns, comma-separated, e.g. bpb_a,bpb_b,bpb_c")
    ] = "",
    model: Annotated[
        list[str] | None,
        typer.Option(
            help="instead of --loss-columns: a model to score the input with (repeat per model)"
        ),
    ] = None,
    fraction: Annotated[
        float, typer.Option(help="share of documents taken as positives (and as negatives)")
    ] = 0.1,
    epoch: Annotated[int, typer.Option(help="fastText epochs")] = 3,
    lr: Annotated[float, typer.Option(help="fastText learning rate")] = 0.1,
    word_ngrams: Annotated[int, typer.Option(help="fastText word n-grams")] = 2,
    dim: Annotated[int, typer.Option(help="fastText vector size (a multiple of 10)")] = 100,
    seed: Annotated[int, typer.Option(help="seed for ties, the held-out split and training")] = 0,
    text_column: Annotated[str, typer.Option(help="name of the text column")] = "text",
):
    """Fit a PreSelect scorer: documents whose losses rank the models as their benchmark scores do
    become positives, the least predictive negatives, and a fastText classifier learns them.

    Example:

      datasel preselect fit scored/ scorers/ps --loss-columns bpb_s,bpb_m,bpb_l --benchmark-scores 30.1,38.4,45.0
    """
    from datasel.stages.score import preselect_fit

    try:
        scores = [float(x) for x in benchmark_scores.split(",")]
    except ValueError:
        raise fail(
            f"--benchmark-scores {benchmark_scores!r}: expected numbers separated by commas"
        ) from None
    try:
        card = preselect_fit(
            input,
            scorer_out,
            loss_columns=[c.strip() for c in loss_columns.split(",") if c.strip()],
            models=model or [],
            benchmark_scores=scores,
            text_column=text_column,
            fraction=fraction,
            epoch=epoch,
            lr=lr,
            word_ngrams=word_ngrams,
            dim=dim,
            seed=seed,
        )
    except DataselError as e:
        raise fail(str(e)) from None
    c = card["counts"]
    typer.echo(
        f"{scorer_out}: {c['pos']:,} positives, {c['neg']:,} negatives from {c['docs']:,} documents; "
        f"held-out accuracy {card['heldout_accuracy']}"
    )


@app.command("report")
def report_cmd(
    path: Annotated[str, typer.Argument(help="a pipeline output folder or one step's folder")],
    examples: Annotated[int, typer.Option(help="example rows per removal reason")] = 3,
):
    """Write report.html (funnel, score histograms, clusters, examples) and print the funnel.

    Example:

      datasel report out/quickstart
    """
    from rich.console import Console

    from datasel.report import build_report, headlines, summary_table

    try:
        Console().print(summary_table(path))
        for line in headlines(path):
            typer.echo(line)
        typer.echo(f"report: {build_report(path, examples=examples)}")
    except DataselError as e:
        raise fail(str(e)) from None


@app.command("inspect")
def inspect_cmd(
    path: Annotated[str, typer.Argument(help="a dataset folder or file (ours or any input)")],
    rows: Annotated[int, typer.Option(help="example rows to show")] = 3,
    columns: Annotated[
        str | None,
        typer.Option(help="columns to show: all, or a comma list [default: the first 6]"),
    ] = None,
):
    """Show rows, columns, a few example rows and the manifest summary of any dataset.

    Example:

      datasel inspect out/quickstart/03-filter/_removed --columns id,reason,gopher_words
    """
    from datasel.inspect import show

    try:
        show(path, rows, columns)
    except DataselError as e:
        raise fail(str(e)) from None


app.command("eval", help=_reflowed(eval_command.__doc__))(eval_command)


def _usage_error(e) -> str:
    """click's usage errors (unknown or missing option, bad value) in one line, not its box."""
    message = " ".join(e.format_message().split()).rstrip(".")
    message = message[:1].lower() + message[1:]
    ctx = getattr(e, "ctx", None)
    if ctx is None:
        return message
    command = ctx.command_path.partition(" ")[2]
    where = f"{command}: " if command else ""
    return f"{where}{message} (see {ctx.command_path} --help)"


def _click_exceptions() -> tuple[type, type]:
    """(ClickException, Abort) of the click that typer runs on."""
    try:  # typer >= 0.2x carries its own click
        from typer._click.exceptions import ClickException
        from typer.exceptions import Abort
    except ImportError:
        from click.exceptions import Abort, ClickException
    return ClickException, Abort


def main() -> None:
    ClickException, Abort = _click_exceptions()
    register_stages()
    try:
        # not standalone: click's errors come here instead of being drawn in a box
        code = app(standalone_mode=False)
    except DataselError as e:  # raised outside a command (e.g. while parsing)
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except ClickException as e:
        if type(e).__name__ != "NoArgsIsHelpError":  # typer has shown the help for that one
            typer.echo(f"error: {_usage_error(e)}", err=True)
        sys.exit(e.exit_code)
    except Abort:
        typer.echo("error: aborted", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
