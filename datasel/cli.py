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

from datasel.errors import DataselError, fail
from datasel.eval.command import eval_command
from datasel.io import TEXT_COLUMN
from datasel.options import NAMES, RunOptions
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

RUN_PANEL = "Run options"


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


def _field_params(cls, panel: str | None = None) -> list[inspect.Parameter]:
    """One option per field of a dataclass (a stage's parameters, `RunOptions`), with the
    field's help; a field without a default is a required option."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = inspect.Parameter.empty  # a required option
        flag = "--" + f.name.replace("_", "-")
        if default is True:  # a flag on by default needs a way to turn it off
            flag += "/--no-" + flag[2:]
        opt = typer.Option(
            flag,
            help=f.metadata.get("help", ""),
            rich_help_panel=panel,
            show_default=f.metadata.get("show_default", True),
        )
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[_option_type(hints[f.name]), opt],
            )
        )
    return params


def _with_params(fn, params: list[inspect.Parameter]):
    """`fn(**kwargs)` as typer sees it: its named parameters, then `params`."""
    hints = typing.get_type_hints(fn, include_extras=True)
    own = [
        p.replace(annotation=hints[p.name])
        for p in inspect.signature(fn).parameters.values()
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    fn.__signature__ = inspect.Signature([*own, *params])
    fn.__annotations__ = {p.name: p.annotation for p in fn.__signature__.parameters.values()}
    return fn


def _run_options(values: dict) -> RunOptions:
    """The run options among a command's arguments (taken out of `values`)."""
    return RunOptions(**{name: values.pop(name) for name in NAMES})


def _stage_command(cls: type[Stage]):
    def command(
        input: Annotated[
            str,
            typer.Argument(help="input file, folder or glob (JSONL, Parquet, HF save_to_disk)"),
        ],
        output: Annotated[
            Path, typer.Argument(help="output folder (Parquet shards, _removed/, _manifest.json)")
        ],
        **kwargs,
    ):
        from datasel.engine import run
        from datasel.io import resolve_input

        try:
            options = _run_options(kwargs)
            stage = cls(**kwargs)
        except (TypeError, ValueError, DataselError) as e:
            raise fail(str(e)) from None
        try:
            run(stage, resolve_input(input), output, options)
        except DataselError as e:
            raise fail(str(e)) from None

    command.__name__ = cls.name
    return _with_params(command, _field_params(cls) + _field_params(RunOptions, RUN_PANEL))


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


def run_config(
    ctx: typer.Context,
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
    since: Annotated[
        Path | None,
        typer.Option(help="state folder of a cron job: process only files no earlier run has seen"),
    ] = None,
    log_json: Annotated[
        bool, typer.Option("--log-json", help="print one JSON line per step (for cron logs)")
    ] = False,
    **flags,
):
    """Run a pipeline of stages from a YAML config; each step writes its own folder.

    Every run option is also a config key (`workers: 4`); one given here replaces the config's.

    Example:

      datasel run configs/quickstart.yaml --output out/qs --set 1.threshold=0.7
    """
    from datasel.pipeline import load_config

    given = {k: v for k, v in flags.items() if ctx.get_parameter_source(k).name == "COMMANDLINE"}
    try:
        pipeline, config = load_config(config, set_ or [])
        src = input or config.get("input")
        dst = output or config.get("output")
        if not src or not dst:
            raise DataselError(
                f"{config}: needs 'input' and 'output' (in the config or as --input/--output)"
            )
        options = dataclasses.replace(pipeline.options, **given)
        quiet = options.quiet
        if log_json:
            options = dataclasses.replace(options, quiet=True)
        if since is not None:
            _report_cron(
                pipeline.run_incremental(src, dst, since, options), since, dst, quiet, log_json
            )
            return
        manifests = pipeline.run(src, dst, options)
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


app.command("run")(_with_params(run_config, _field_params(RunOptions, RUN_PANEL)))


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
    text_column: Annotated[str, typer.Option(help="name of the text column")] = TEXT_COLUMN,
):
    """Fit a PreSelect scorer: documents whose losses rank the models as their benchmark scores do
    become positives, the least predictive negatives, and a fastText classifier learns them.

    Example:

      datasel preselect fit scored/ scorers/ps --loss-columns bpb_s,bpb_m,bpb_l --benchmark-scores 30.1,38.4,45.0
    """
    from datasel.workflows.preselect_fit import preselect_fit

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
